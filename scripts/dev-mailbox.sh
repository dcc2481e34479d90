#!/usr/bin/env bash
# The development server's mail sink (scripts/dev-server.sh passes it as --sendmail-command
# when no mail transport is given): a sendmail-compatible command that writes each message it
# reads on standard input to ./data/mail/<UTC time>-<pid>.eml, 0600, with its text decoded
# beside it (.txt), and says where on standard error (the server's console), so that the
# reset link of a first sign-in can be read without an SMTP server. Its arguments (-f SENDER
# -- RECIPIENT) are ignored. Never for production: the links are readable by whoever reads
# the folder.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/data/mail"
umask 077
mkdir -p "$dir"
file="$dir/$(date -u +%Y%m%dT%H%M%S)-$$"
cat > "$file.partial"
mv "$file.partial" "$file.eml"
# The body is base64 (UTF-8 text): decoded for reading, when Python is there.
if python3 -c '
import email, email.policy, sys
message = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
open(sys.argv[2], "w").write("Subject: " + str(message["Subject"]) + "\n\n" + message.get_content())
' "$file.eml" "$file.txt" 2>/dev/null; then
    echo "dev-mailbox: mail written to $file.txt" >&2
else
    echo "dev-mailbox: mail written to $file.eml" >&2
fi
