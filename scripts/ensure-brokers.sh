#!/usr/bin/env bash
# Makes sure the message brokers the outbox tests publish to are up:
#  - RabbitMQ on 127.0.0.1:5672 accepting guest/guest (AMQP 0-9-1);
#  - NATS on 127.0.0.1:4222 with JetStream enabled.
#
# Uses servers that are already running; otherwise starts installed ones; otherwise
# installs them from the OS packages (Debian/Ubuntu: rabbitmq-server, nats-server) and
# starts them. Idempotent: safe to run before every test run.
set -euo pipefail

HOST=127.0.0.1
AMQP_PORT=5672
NATS_PORT=4222
WAIT_SECONDS=60

log() { printf 'ensure-brokers: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") >/dev/null 2>&1
}

# Waits up to WAIT_SECONDS for a port to accept connections.
wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 $((WAIT_SECONDS * 2))); do
        port_open "$port" && return 0
        sleep 0.5
    done
    die "$what did not start listening on $HOST:$port within ${WAIT_SECONDS} s"
}

apt_updated=
install_package() {
    command -v apt-get >/dev/null 2>&1 \
        || die "no $1 found and no apt-get to install it; install $1 and start it on $HOST"
    if [ -z "$apt_updated" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "installing $1 from the OS packages"
    # policy-rc.d-less containers: the package may try to start the service and fail;
    # starting it is done below either way.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
        || die "apt-get install $1 failed"
}

# --- RabbitMQ ---------------------------------------------------------------------

# The AMQP handshake answers a protocol header with connection.start (frame type 1,
# class 10, method 10); a port that answers so is a broker, not something else.
amqp_speaks() {
    local reply
    reply=$(
        exec 3<>"/dev/tcp/$HOST/$AMQP_PORT" || exit 1
        printf 'AMQP\x00\x00\x09\x01' >&3
        timeout 3 head -c 11 <&3 | od -An -tx1 | tr -d ' \n'
    ) 2>/dev/null || return 1
    [ "${reply:0:2}" = "01" ] && [ "${reply:14:8}" = "000a000a" ]
}

start_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
        install_package rabbitmq-server
    fi
    # The package may have started it already.
    port_open "$AMQP_PORT" && return 0
    log "starting rabbitmq-server"
    if command -v service >/dev/null 2>&1 && [ -e /etc/init.d/rabbitmq-server ]; then
        as_root service rabbitmq-server start >/dev/null 2>&1 || true
    fi
    if ! port_open "$AMQP_PORT"; then
        # `service` returns before the Erlang node listens; only start by hand when it
        # did not run at all.
        if ! pgrep -u rabbitmq beam >/dev/null 2>&1 && ! pgrep -f 'rabbit boot' >/dev/null 2>&1; then
            as_root env RABBITMQ_NODE_IP_ADDRESS="$HOST" rabbitmq-server -detached >/dev/null 2>&1 \
                || die "rabbitmq-server -detached failed"
        fi
    fi
    wait_port "$AMQP_PORT" RabbitMQ
}

# guest may only log in from localhost, which 127.0.0.1 is; a broker whose guest user
# was removed needs it back for the tests.
ensure_guest() {
    command -v rabbitmqctl >/dev/null 2>&1 || return 0
    if as_root rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1; then
        return 0
    fi
    log "adding the guest/guest user"
    as_root rabbitmqctl -q add_user guest guest >/dev/null 2>&1 \
        || as_root rabbitmqctl -q change_password guest guest >/dev/null
    as_root rabbitmqctl -q set_user_tags guest administrator >/dev/null
    as_root rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
}

if ! port_open "$AMQP_PORT"; then
    start_rabbitmq
fi
# Listening comes before the broker answers (the Erlang node boots its apps).
for _ in $(seq 1 $((WAIT_SECONDS * 2))); do
    amqp_speaks && break
    sleep 0.5
done
amqp_speaks || die "$HOST:$AMQP_PORT is open but does not speak AMQP 0-9-1"
ensure_guest || die "cannot make guest/guest log in to RabbitMQ"
log "RabbitMQ is ready on $HOST:$AMQP_PORT"

# --- NATS -------------------------------------------------------------------------

# The INFO line a NATS server sends on connect.
nats_info() {
    (
        exec 3<>"/dev/tcp/$HOST/$NATS_PORT" || exit 1
        timeout 3 head -n 1 <&3
    ) 2>/dev/null
}

start_nats() {
    local bin state logfile
    bin=$(command -v nats-server || true)
    if [ -z "$bin" ]; then
        install_package nats-server
        bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    fi
    # The Debian package ships no service that enables JetStream: run our own.
    if [ -w /var/lib ] || [ -d /var/lib/nats-server ]; then
        state=/var/lib/nats-server
        logfile=/var/log/nats-server.log
    else
        state="${XDG_STATE_HOME:-$HOME/.local/state}/nats-server"
        logfile="$state/nats-server.log"
    fi
    mkdir -p "$state" "$(dirname "$logfile")"
    log "starting $bin with JetStream (state in $state, log in $logfile)"
    nohup "$bin" -js -a "$HOST" -p "$NATS_PORT" -sd "$state" -l "$logfile" >/dev/null 2>&1 &
    disown || true
    wait_port "$NATS_PORT" NATS
}

if ! port_open "$NATS_PORT"; then
    start_nats
fi
for _ in $(seq 1 20); do
    nats_info | grep -q '^INFO ' && break
    sleep 0.5
done
info=$(nats_info || true)
case "$info" in
    INFO\ *) ;;
    *) die "$HOST:$NATS_PORT is open but sends no NATS INFO line" ;;
esac
case "$info" in
    *'"jetstream":true'*) ;;
    *) die "the NATS server on $HOST:$NATS_PORT runs without JetStream; restart it with -js (e.g. nats-server -js -a $HOST -p $NATS_PORT -sd /var/lib/nats-server)" ;;
esac
log "NATS with JetStream is ready on $HOST:$NATS_PORT"
