#!/usr/bin/env bash
# Installs the system packages account-server builds and tests against (Debian/Ubuntu).
# Idempotent: installs only what is missing.
set -euo pipefail

# install_missing [apt-get option...] -- package...
install_missing() {
    local options=() missing=() package
    while [[ $1 != -- ]]; do options+=("$1"); shift; done
    shift
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null
}

install_missing -- libargon2-dev libsqlite3-dev libssl-dev libqrencode-dev pkg-config openssl curl python3-aiosmtpd \
    python3-websocket chromium nginx libnginx-mod-stream
# The OpenID Connect provider the tests start in place of Pro Santé Connect (LemonLDAP::NG,
# served by starman): without recommends, which would pull a web server and start services.
install_missing --no-install-recommends -- liblemonldap-ng-portal-perl lemonldap-ng-uwsgi-app libstring-random-perl \
    libio-string-perl libio-socket-ssl-perl liblwp-protocol-https-perl starman
# PostgreSQL server binaries for the throwaway test server (scripts/postgres.sh). The
# package's own cluster is not wanted: say so before it is installed, so no system service
# is created or started.
if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed"; then
    if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    install_missing -o Dpkg::Options::=--force-confold -- postgresql
fi
command -v swift >/dev/null || { echo "swift (6.1 or later) is required on PATH" >&2; exit 1; }
