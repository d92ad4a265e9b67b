#!/usr/bin/env bash
# The API under load: two channels flooded for SECS seconds while a prober
# measures GET /health and a client registers and removes channels
# (p50/p99/max printed), and a channel paced at 2,000 records/s. Release
# build, private network namespace. Usage: benches/load.sh [SECS] (default 10)
set -euo pipefail
exec "$(dirname "$0")/run.sh" load api "${1:-10}"
