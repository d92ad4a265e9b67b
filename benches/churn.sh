#!/usr/bin/env bash
# Registration churn (issue 6): CYCLES register/remove cycles of one channel
# (same name and port; every 10th carries a record, so its archive file is
# opened and closed) against the release binary, inside a private network
# namespace. Prints fd count, RSS and threads before and after.
# Usage: benches/churn.sh [CYCLES]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin speedrelay
target=${CARGO_TARGET_DIR:-target}
export SPEEDRELAY_TEST_BIN
SPEEDRELAY_TEST_BIN=$(realpath "$target/release/speedrelay")
export SPEEDRELAY_CHURN_CYCLES=${1:-10000}
exec ./tests/run.sh --test load registration_churn -- --nocapture
