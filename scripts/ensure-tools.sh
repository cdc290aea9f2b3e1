#!/usr/bin/env bash
# Installs the client tools the test suite drives through the proxy (sysbench,
# the mariadb command-line client) when they are missing. Debian/Ubuntu only.
set -euo pipefail
missing=()
command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: please install: ${missing[*]}" >&2
    exit 1
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
echo "ensure-tools: installing ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
