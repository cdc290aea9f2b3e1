#!/usr/bin/env bash
# The main job: makes sure MariaDB and the brokers (RabbitMQ, NATS) run, builds
# Rewind, starts the coordinator and the proxy (its outbox relay publishing to
# RabbitMQ), shows a global transaction rolled back and committed, then an order
# written with its event, the event on RabbitMQ, and a redelivered duplicate
# consumed once; keeps both running until Ctrl-C (or exits right away with
# REWIND_DEMO_ONCE=1).
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_ADDR=${REWIND_PROXY_ADDR:-127.0.0.1:3307}
GRPC_ADDR=${REWIND_GRPC_ADDR:-127.0.0.1:8091}
HTTP_ADDR=${REWIND_HTTP_ADDR:-127.0.0.1:7091}
DATA_DIR=${REWIND_DATA_DIR:-./data/coordinator}
AMQP_URL=${REWIND_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

scripts/ensure-mariadb.sh
scripts/ensure-brokers.sh
scripts/ensure-tools.sh
echo "== building (release)"
cargo build --release --locked -p rewind-proxy -p rewind-coordinator
cargo build --release --locked -p rewind-tests --example outbox_demo

mkdir -p "$DATA_DIR" data
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() {
    local addr=$1 name=$2
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$name did not start listening on $addr; see data/$name.log" >&2
    exit 1
}

echo "== starting rewind-coordinator (gRPC $GRPC_ADDR, HTTP $HTTP_ADDR, data $DATA_DIR)"
target/release/rewind-coordinator --grpc-addr "$GRPC_ADDR" --http-addr "$HTTP_ADDR" \
    --data-dir "$DATA_DIR" >data/rewind-coordinator.log 2>&1 &
pids+=($!)
wait_port "$HTTP_ADDR" rewind-coordinator

echo "== starting rewind-proxy (MySQL protocol on $PROXY_ADDR -> 127.0.0.1:3306, outbox -> RabbitMQ)"
target/release/rewind-proxy --listen "$PROXY_ADDR" --backend mysql://root@127.0.0.1:3306 \
    --coordinator "http://$GRPC_ADDR" --outbox-broker "$AMQP_URL" >data/rewind-proxy.log 2>&1 &
pids+=($!)
wait_port "$PROXY_ADDR" rewind-proxy

# --comments: the mariadb client strips comments by default, and the XID travels in one.
sql() { mariadb --comments --protocol=TCP -h"${PROXY_ADDR%:*}" -P"${PROXY_ADDR##*:}" -uroot --table "$@"; }
api() { curl -fsS -X POST "http://$HTTP_ADDR/api/v1/transactions$1" -H 'content-type: application/json' ${2:+-d "$2"}; }
xid_of() { sed -n 's/.*"xid":"\([^"]*\)".*/\1/p'; }

echo "== two services' databases, through the proxy"
sql <<'SQL'
CREATE DATABASE IF NOT EXISTS rewind_demo_bank;
CREATE DATABASE IF NOT EXISTS rewind_demo_shop;
CREATE TABLE IF NOT EXISTS rewind_demo_bank.account (id INT PRIMARY KEY, owner VARCHAR(40), balance DECIMAL(12,2));
CREATE TABLE IF NOT EXISTS rewind_demo_shop.orders (id INT PRIMARY KEY, item VARCHAR(40), paid DECIMAL(12,2));
REPLACE INTO rewind_demo_bank.account VALUES (1, 'alice', 100.00);
DELETE FROM rewind_demo_shop.orders;
DROP TABLE IF EXISTS rewind_demo_shop.invoices;
SELECT 'bank' AS db, id, owner, balance FROM rewind_demo_bank.account;
SQL

show() {
    sql -e "SELECT 'bank' AS db, balance FROM rewind_demo_bank.account WHERE id = 1; SELECT 'shop' AS db, COUNT(*) AS orders FROM rewind_demo_shop.orders"
}

# One global transaction spanning both databases, tagged with its XID.
order() {
    local xid=$1 n=$2
    sql rewind_demo_bank -e "BEGIN; /*+ XID('$xid') */ UPDATE account SET balance = balance - 30 WHERE id = 1; COMMIT;"
    sql rewind_demo_shop -e "/*+ XID('$xid') */ INSERT INTO orders VALUES ($n, 'book', 30.00);"
}

echo "== a global transaction that is rolled back: both local commits are undone"
xid=$(api "" '{"name":"demo order","timeout_ms":60000}' | xid_of)
echo "begin:    $xid"
order "$xid" 1
show
echo "rollback: $(api "/$xid/rollback")"
show

echo "== the same order, committed"
xid=$(api "" '{"name":"demo order","timeout_ms":60000}' | xid_of)
order "$xid" 2
echo "commit:   $(api "/$xid/commit")"
show
echo "status:   $(curl -fsS "http://$HTTP_ADDR/api/v1/transactions/$xid")"

echo "== an order and its event (local message table), and a consumer that sees it twice"
REWIND_TEST_AMQP_URL="$AMQP_URL" target/release/examples/outbox_demo "$PROXY_ADDR" rewind_demo_shop
sql -e "SELECT message_id, topic, status, attempts FROM rewind.outbox ORDER BY id DESC LIMIT 1"

if [ "${REWIND_DEMO_ONCE:-0}" = 1 ]; then
    echo "== done"
    exit 0
fi
echo "== Rewind is running: connect with  mariadb --comments -h${PROXY_ADDR%:*} -P${PROXY_ADDR##*:} -uroot test"
echo "   coordinator API on http://$HTTP_ADDR"
echo "   admin console on   http://$HTTP_ADDR/  (operator \"admin\", secret in $DATA_DIR/operator-token)"
echo "   Ctrl-C stops both"
wait
