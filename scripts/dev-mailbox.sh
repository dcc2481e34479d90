#!/usr/bin/env bash
# The development server's mail sink (scripts/dev-server.sh passes it as --sendmail-command
# when no mail transport is given): a sendmail-compatible command that writes each message it
# reads on standard input to ./data/mail/<UTC time>-<pid>.eml, 0600, so that the reset link
# of a first sign-in can be read without an SMTP server. Its arguments (-f SENDER -- RECIPIENT)
# are ignored. Never for production: the links are readable by whoever reads the folder.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/data/mail"
umask 077
mkdir -p "$dir"
file="$dir/$(date -u +%Y%m%dT%H%M%S)-$$.eml"
cat > "$file.partial"
mv "$file.partial" "$file"
