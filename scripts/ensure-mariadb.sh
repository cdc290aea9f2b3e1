#!/usr/bin/env bash
# Makes sure a MySQL-compatible server listens on 127.0.0.1:3306 and accepts
# root with an empty password over TCP, with a database `test`.
#
# Uses a server that is already running; otherwise starts an installed MariaDB;
# otherwise installs MariaDB from the OS packages (Debian/Ubuntu) and starts it.
# Idempotent: safe to run before every demo and test run.
set -euo pipefail

HOST=127.0.0.1
PORT=3306

log() { printf 'ensure-mariadb: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

client() {
    if command -v mariadb >/dev/null 2>&1; then echo mariadb
    elif command -v mysql >/dev/null 2>&1; then echo mysql
    fi
}

tcp_ok() {
    local c
    c=$(client)
    [ -n "$c" ] || return 1
    "$c" --protocol=TCP -h"$HOST" -P"$PORT" -uroot --connect-timeout=2 -e 'SELECT 1' >/dev/null 2>&1
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") >/dev/null 2>&1
}

install_packages() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no MariaDB found and no apt-get to install it; install MariaDB or MySQL and start it on $HOST:$PORT"
        exit 1
    fi
    log "installing mariadb-server and mariadb-client from the OS packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
}

start_server() {
    local bin
    bin=$(command -v mariadbd || command -v mysqld || true)
    [ -n "$bin" ] || bin=/usr/sbin/mariadbd
    [ -x "$bin" ] || { install_packages; bin=$(command -v mariadbd || echo /usr/sbin/mariadbd); }
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising the data directory"
        as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    log "starting $bin"
    if command -v start-stop-daemon >/dev/null 2>&1; then
        as_root start-stop-daemon --start --oknodo --background --exec "$bin" -- --user=mysql
    else
        as_root nohup "$bin" --user=mysql >/dev/null 2>&1 &
    fi
    for _ in $(seq 1 60); do
        port_open && return 0
        sleep 0.5
    done
    log "MariaDB did not start listening on $HOST:$PORT within 30 s"
    exit 1
}

# A fresh Debian install lets root in through the unix socket only; allow an
# empty password over TCP too, as the tests and the demo expect.
grant_tcp_root() {
    local c
    c=$(client)
    as_root "$c" -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;" 2>/dev/null \
        || as_root "$c" -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED BY ''; FLUSH PRIVILEGES;"
}

if [ -z "$(client)" ] && ! port_open; then
    install_packages
fi
if ! port_open; then
    start_server
fi
if [ -z "$(client)" ]; then
    install_packages
fi
for _ in $(seq 1 60); do
    tcp_ok && break
    # The port is open but root over TCP is refused: fix the grant once.
    if port_open; then grant_tcp_root || true; tcp_ok && break; fi
    sleep 0.5
done
tcp_ok || { log "cannot log in as root with an empty password on $HOST:$PORT"; exit 1; }
"$(client)" --protocol=TCP -h"$HOST" -P"$PORT" -uroot -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null
log "MariaDB is ready on $HOST:$PORT"
