#!/usr/bin/env bash
# Registration churn: CYCLES register/remove cycles of one channel (same
# name and port; every 10th carries a record, so its archive file is opened
# and closed) against the release binary, inside a private network
# namespace. Prints the time per cycle and fd count, RSS and threads before
# and after. Usage: benches/churn.sh [CYCLES] (default 10000)
set -euo pipefail
exec "$(dirname "$0")/run.sh" load churn "${1:-10000}"
