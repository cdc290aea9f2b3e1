#!/usr/bin/env bash
# Installs the client tools Rewind's scripts drive when they are missing: sysbench,
# HAProxy (bench/passthrough's byte-relay reference), the mariadb command-line client, and
# gcc and make for the C parts of the build; with --browser also Node.js, Chromium and the
# admin console test's npm package (playwright-core, pinned by
# tests/console/package-lock.json), Go with go-sql-driver/mysql (Debian's packages:
# the Go driver tests run its own suite through the proxy), and schemathesis (PyPI,
# pinned below) in a virtualenv at tests/.venv for the API description test (t85).
# Debian/Ubuntu.
#
#   scripts/ensure-tools.sh             # demo, benchmarks
#   scripts/ensure-tools.sh --browser   # the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
browser=0
[ "${1:-}" = --browser ] && browser=1
# What t85_openapi runs; bump deliberately (its CLI and checks change between releases).
SCHEMATHESIS_VERSION=4.32.5
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    echo "ensure-tools: installing $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
missing=()
command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The build compiles C: ring's, and jemalloc (the coordinator's allocator) with make.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ $browser = 1 ]; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v chromium >/dev/null 2>&1 || [ -n "${REWIND_CHROMIUM:-}" ] || missing+=(chromium)
    command -v go >/dev/null 2>&1 || missing+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/go-sql-driver/mysql ] ||
        missing+=(golang-github-go-sql-driver-mysql-dev)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-tools: please install: ${missing[*]}" >&2
        exit 1
    fi
    apt_install "${missing[@]}"
fi
[ $browser = 1 ] || exit 0
# The browser test's driver library, exactly as locked (no browser download: it drives
# the system Chromium).
lock=tests/console/package-lock.json
stamp=tests/console/node_modules/.lock-installed
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    echo "ensure-tools: npm ci in tests/console" >&2
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
    cp "$lock" "$stamp"
fi
# schemathesis in its own virtualenv: Debian's python3 refuses `pip install` outside one
# (PEP 668), and a venv keeps its dependencies away from the system's. Debian ships
# `python3 -m venv` without ensurepip until python3-venv is installed.
venv=tests/.venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
    echo "ensure-tools: schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        command -v apt-get >/dev/null 2>&1 || { echo "ensure-tools: please install python3-venv" >&2; exit 1; }
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
