#!/usr/bin/env bash
# Installs the real peers the end-to-end tests start themselves, where they are missing:
#   - OpenSSH's sshd and ssh-keygen (the ssh trigger's tests),
#   - moto_server (the EC2 API of the EC2 phase's tests),
#   - schemathesis (the OpenAPI conformance run),
#   - Debian's Chromium and tests/browser's packages (the dashboard's browser test),
#   - the MCP Python SDK in tests/mcp/.venv (the MCP tests' client),
#   - promtool (lints /metrics), taken from Debian's prometheus package without installing
#     the server and its service,
#   - PostgreSQL's server (initdb, pg_ctl): the store's tests start a server of their own,
#   - the system's time zone database and zdump (tzdata, libc-bin): the calendar's tests check
#     every DST change of a few zones against what zdump reads there.
# Idempotent and quick when everything is present: it then installs nothing and needs no network,
# so it can run where only loopback exists. Debian packages need root (or sudo); Python packages
# go to the active Python's site packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions the tests are known to pass with; a newer one may change answers the tests compare.
MOTO_VERSION=5.2.1
SCHEMATHESIS_VERSION=4.32.5

say() { printf '[peers] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "needs root to run: $*" >&2
        exit 1
    fi
}

apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        as_root apt-get update -qq
        apt_updated=true
    fi
    say "installing $* (Debian)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_has() {
    local shown
    shown=$(python3 -m pip show "$1" 2>/dev/null) || return 1
    grep -qx "Version: $2" <<<"$shown"
}

pip_install() {
    say "installing $1 (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$1"
}

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
    apt_install openssh-server openssh-client
fi
# sshd refuses to start without its privilege separation directory.
[ -d /run/sshd ] || as_root mkdir -p /run/sshd

if ! pip_has moto "$MOTO_VERSION" || ! command -v moto_server >/dev/null; then
    pip_install "moto[server]==$MOTO_VERSION"
fi
if ! pip_has schemathesis "$SCHEMATHESIS_VERSION" || ! command -v schemathesis >/dev/null; then
    pip_install "schemathesis==$SCHEMATHESIS_VERSION"
fi
# pyenv and similar installs put new scripts behind shims that need a rehash.
if command -v pyenv >/dev/null; then
    pyenv rehash 2>/dev/null || true
fi

if ! command -v zdump >/dev/null || [ ! -f /usr/share/zoneinfo/Europe/Berlin ]; then
    apt_install tzdata libc-bin
fi

if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi

if ! command -v promtool >/dev/null; then
    if [ "$apt_updated" = false ]; then
        as_root apt-get update -qq
        apt_updated=true
    fi
    say "installing promtool (from Debian's prometheus package)"
    unpacked=$(mktemp -d)
    (cd "$unpacked" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb root)
    as_root install -m 0755 "$unpacked/root/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$unpacked"
fi

if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi

# tests/browser's packages (playwright-core, no browser download), installed again only when
# the lock file changed since the last install.
lock=tests/browser/package-lock.json
stamp=tests/browser/node_modules/.installed-from-lock
if ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    say "installing tests/browser's packages (npm ci)"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >/dev/null
    cp "$lock" "$stamp"
fi

# The MCP Python SDK, in its own environment (its dependencies stay apart from moto's and
# schemathesis'), installed again only when tests/mcp/requirements.txt changed.
requirements=tests/mcp/requirements.txt
venv=tests/mcp/.venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.installed-from"; then
    say "installing the MCP Python SDK into $venv ($(tr '\n' ' ' <"$requirements"))"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/.installed-from"
fi

say "ready: $(/usr/sbin/sshd -V 2>&1 | head -1); moto $MOTO_VERSION; schemathesis" \
    "$SCHEMATHESIS_VERSION; $(/usr/bin/chromium --version 2>/dev/null | head -1); node $(node --version);" \
    "$(tr '\n' ' ' <"$requirements")"
