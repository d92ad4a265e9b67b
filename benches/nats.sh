#!/usr/bin/env bash
# The NATS output bench (benches/nats.rs, feature `cluster`) inside a fresh
# private network namespace. Usage: benches/nats.sh [--runs N]. nats-server
# comes from SPEEDRELAY_NATS_SERVER or the PATH (tests/run.sh installs one
# in .venv). Built before entering the namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --offline --features cluster --bench nats --no-run
inner='ip link set lo up; exec cargo bench --offline --features cluster --bench nats -- "$@"'
unshare --user --map-root-user --net bash -c "$inner" nats "$@"
