#!/usr/bin/env bash
# The main job: makes sure MariaDB runs, builds Rewind, starts the coordinator
# and the proxy, shows a working session through the proxy, then keeps both
# running until Ctrl-C (or exits right away with REWIND_DEMO_ONCE=1).
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_ADDR=${REWIND_PROXY_ADDR:-127.0.0.1:3307}
GRPC_ADDR=${REWIND_GRPC_ADDR:-127.0.0.1:8091}
HTTP_ADDR=${REWIND_HTTP_ADDR:-127.0.0.1:7091}
DATA_DIR=${REWIND_DATA_DIR:-./data/coordinator}

scripts/ensure-mariadb.sh
scripts/ensure-tools.sh
echo "== building (release)"
cargo build --release --locked -p rewind-proxy -p rewind-coordinator

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

echo "== starting rewind-proxy (MySQL protocol on $PROXY_ADDR -> 127.0.0.1:3306)"
target/release/rewind-proxy --listen "$PROXY_ADDR" --backend mysql://root@127.0.0.1:3306 \
    --coordinator "http://$GRPC_ADDR" >data/rewind-proxy.log 2>&1 &
pids+=($!)
wait_port "$PROXY_ADDR" rewind-proxy

sql() { mariadb --protocol=TCP -h"${PROXY_ADDR%:*}" -P"${PROXY_ADDR##*:}" -uroot --table "$@"; }

echo "== a session through the proxy"
sql test <<'SQL'
CREATE TABLE IF NOT EXISTS rewind_demo_account (id INT PRIMARY KEY, owner VARCHAR(40), balance DECIMAL(12,2));
REPLACE INTO rewind_demo_account VALUES (1, 'alice', 100.00), (2, 'bob', 50.00);
BEGIN;
UPDATE rewind_demo_account SET balance = balance - 10 WHERE id = 1;
UPDATE rewind_demo_account SET balance = balance + 10 WHERE id = 2;
COMMIT;
SELECT id, owner, balance, @@autocommit AS autocommit FROM rewind_demo_account ORDER BY id;
SQL

echo "== a global transaction on the coordinator"
xid_json=$(curl -fsS -X POST "http://$HTTP_ADDR/api/v1/transactions" \
    -H 'content-type: application/json' -d '{"name":"demo","timeout_ms":60000}')
echo "begin:  $xid_json"
xid=$(printf '%s' "$xid_json" | sed -n 's/.*"xid":"\([^"]*\)".*/\1/p')
echo "commit: $(curl -fsS -X POST "http://$HTTP_ADDR/api/v1/transactions/$xid/commit")"
echo "status: $(curl -fsS "http://$HTTP_ADDR/api/v1/transactions/$xid")"

if [ "${REWIND_DEMO_ONCE:-0}" = 1 ]; then
    echo "== done"
    exit 0
fi
echo "== Rewind is running: connect with  mariadb -h${PROXY_ADDR%:*} -P${PROXY_ADDR##*:} -uroot test"
echo "   coordinator API on http://$HTTP_ADDR  (Ctrl-C stops both)"
wait
