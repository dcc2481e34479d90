#!/usr/bin/env bash
# One command to try account-server: installs what is missing, builds, and serves on the
# embedded defaults (SQLite under ./data, development PKI generated on first run). It prints
# a ready-to-paste curl that creates a regulator over mTLS. Extra arguments go to `serve`.
# Without a mail transport (--smtp-url, --sendmail-command or their environment variables),
# reset mails are written to ./data/mail/ (scripts/dev-mailbox.sh), so that a first sign-in
# can be completed on this machine alone.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product account-server
mail=()
if [[ " $* " != *" --smtp-url"* && " $* " != *" --sendmail-command"* \
      && -z "${ACCOUNT_SERVER_SMTP_URL:-}" && -z "${ACCOUNT_SERVER_SENDMAIL_COMMAND:-}" ]]; then
    if [[ "$PWD" == *" "* ]]; then
        echo "dev-server: the repository's path has a space; reset mails stay in the outbox (give --smtp-url)" >&2
    else
        mail=(--sendmail-command "$PWD/scripts/dev-mailbox.sh")
        echo "dev-server: reset mails are written to $PWD/data/mail/ (.eml as sent, .txt with the link)" >&2
    fi
fi
exec .build/release/account-server serve "${mail[@]}" "$@"
