#!/usr/bin/env bash
# The cluster on three hosts (benches/cluster.rs): take-over time after
# kill -9 over KILLS kills, and registry write latency (POST/DELETE through
# one node, WRITES of each) against a three-server NATS cluster with a
# three-replica bucket. Everything runs inside a private network namespace
# (`unshare`, or `ip netns` as root), where the hosts are child namespaces
# on a bridge with private addresses (10.77.N.0/24) that exist only there.
#
# Usage: benches/cluster.sh [--kills N] [--writes N] [--lease-ms MS]
# (defaults 20, 200, 1000). PROFILE=dev uses the debug build (quick to
# build; the figures in benches/README.md say which); default: release.
# Needs nats-server (tests/run.sh installs it into .venv, or set
# SPEEDRELAY_NATS_SERVER).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
export SPEEDRELAY_NATS_SERVER=${SPEEDRELAY_NATS_SERVER:-$(pwd)/.venv/bin/nats-server}
cargo bench --features cluster --profile "$profile" --bench cluster --no-run
inner='ip link set lo up; exec cargo bench --offline --features cluster --profile "$0" --bench cluster -- "$@"'
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  ns="speedrelay-bench-$$"
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip netns exec "$ns" bash -c "$inner" "$profile" "$@"
else
  unshare --user --map-root-user --net bash -c "$inner" "$profile" "$@"
fi
