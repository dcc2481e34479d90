#!/usr/bin/env bash
# Installs the system packages account-server builds and tests against (Debian/Ubuntu).
# Idempotent: installs only what is missing.
set -euo pipefail
packages=(libargon2-dev libsqlite3-dev libssl-dev libqrencode-dev pkg-config openssl curl python3-aiosmtpd python3-websocket chromium nginx)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The OpenID Connect provider the tests start in place of Pro Santé Connect (LemonLDAP::NG,
# served by starman): without recommends, which would pull a web server and start services.
provider=(liblemonldap-ng-portal-perl lemonldap-ng-uwsgi-app libstring-random-perl libio-string-perl libio-socket-ssl-perl
          liblwp-protocol-https-perl starman)
missing=()
for package in "${provider[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing (no recommends): ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "swift (6.1 or later) is required on PATH" >&2; exit 1; }
