#!/usr/bin/env bash
# Runs a benchmark inside a fresh private network namespace (SPEC §7), so
# its traffic never leaves loopback. Usage: benches/run.sh [BENCH] [ARGS…]
# (default: relay). Crates are built before entering the namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:-relay}
shift || true
cargo bench --bench "$bench" --no-run
inner='ip link set lo up; ip link set lo multicast on; ip route add 239.0.0.0/8 dev lo; exec cargo bench --offline --bench "$0" -- "$@"'
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  ns="speedrelay-bench-$$"
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip netns exec "$ns" bash -c "$inner" "$bench" "$@"
else
  unshare --user --map-root-user --net bash -c "$inner" "$bench" "$@"
fi
