#!/usr/bin/env bash
# The API under load (issue 6): two channels flooded from two sender threads
# for SECS seconds while a prober measures GET /health and a client
# registers and removes channels (p50/p99/max printed), and a channel paced
# at 2,000 records/s must lose nothing. Release binary, private network
# namespace. Usage: benches/load.sh [SECS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin speedrelay
target=${CARGO_TARGET_DIR:-target}
export SPEEDRELAY_TEST_BIN
SPEEDRELAY_TEST_BIN=$(realpath "$target/release/speedrelay")
export SPEEDRELAY_FLOOD_SECS=${1:-10}
exec ./tests/run.sh --test load the_api_answers -- --nocapture
