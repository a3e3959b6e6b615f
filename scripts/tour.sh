#!/usr/bin/env bash
# A five-minute tour of the herald CLI on the embedded default (a SQLite file, ./herald.db unless
# HERALD_DATABASE_URL says otherwise). Builds the CLI, then appends, links, reads and inspects events.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald-cli --quiet
herald() { ./target/release/herald "$@"; }
show() { echo; echo "\$ herald $*"; herald "$@"; }

export HERALD_DATABASE_URL=${HERALD_DATABASE_URL:-sqlite://herald.db}
echo "database: $HERALD_DATABASE_URL"
order="order-$(date +%s%N)"

show append "$order" --expected no-stream --type OrderPlaced --data '{"total":4200,"currency":"EUR"}' \
  --metadata '{"correlation_id":"0190c8a4-5c56-7d3e-8f00-000000000001"}'
printf '%s\n' '{"type":"ItemAdded","data":{"sku":"A-1","qty":2}}' '{"type":"OrderPaid","data":{"amount":4200}}' \
  | { echo; echo "\$ herald append $order --expected 0 --stdin   # two events, one atomic append"; herald append "$order" --expected 0 --stdin; }
echo; echo "\$ herald append $order --expected 0 --type Late    # a stale writer is refused (exit 3)"
herald append "$order" --expected 0 --type Late || echo "exit $?"
paid=$(herald read "$order" --type OrderPaid | sed -E 's/^\{"id":"([^"]+)".*/\1/')
show link paid-orders "$paid"
show read "$order"
show read paid-orders
show read --category order --backward --limit 2
show version "$order"
show streams --limit 5
show event "$paid"
echo; echo "Follow new events live with: herald tail --all   (Ctrl-C to stop)"
