#!/usr/bin/env bash
# Start-up time and RSS of the release binary with 1,000 persisted channels,
# on --threads 1 and on the default runtime. Runs itself inside a fresh
# private network namespace (SPEC §7); bounded: 1,000 registrations, then
# two timed restarts. Usage: benches/startup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SPEEDRELAY_IN_NETNS:-}" != 1 ]; then
  cargo build --release --quiet
  if [ "$(id -u)" = 0 ]; then
    ns="speedrelay-startup-$$"; ip netns add "$ns"; trap 'ip netns del "$ns"' EXIT
    ip netns exec "$ns" env SPEEDRELAY_IN_NETNS=1 "$0"
  else
    unshare --user --map-root-user --net env SPEEDRELAY_IN_NETNS=1 "$0"
  fi
  exit
fi
ip link set lo up
bin=target/release/speedrelay
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/config"
printf 'channels: []\nsocket: {bind: 127.0.0.1}\n' > "$work/config/relay.yaml"
schema=$(tr -d '\n' < config/agents/example.avsc)

wait_running() { # log file -> prints ms until "speedrelay running"
  local start=$1 log=$2
  for _ in $(seq 1 2000); do
    if grep -q "speedrelay running" "$log"; then echo $(( ($(date +%s%N) - start) / 1000000 )); return; fi
    sleep 0.005
  done
  echo "timeout"; return 1
}

RUST_LOG=warn,speedrelay=info "$bin" serve --config "$work/config" --data-dir "$work/data" --api 127.0.0.1:18080 2> "$work/seed.log" &
pid=$!
wait_running "$(date +%s%N)" "$work/seed.log" >/dev/null
for i in $(seq 0 999); do
  curl -sf -o /dev/null -X POST 127.0.0.1:18080/api/v1/channels -H 'Content-Type: application/json' \
    -d "{\"name\":\"ch$i\",\"port\":$((40000 + i)),\"schema\":$schema}"
done
kill -TERM $pid; wait $pid

for threads in 1 default; do
  args=(); [ "$threads" = 1 ] && args=(--threads 1)
  start=$(date +%s%N)
  RUST_LOG=warn,speedrelay=info "$bin" serve --config "$work/config" --data-dir "$work/data" --api 127.0.0.1:18080 "${args[@]}" 2> "$work/run.log" &
  pid=$!
  ms=$(wait_running "$start" "$work/run.log")
  active=$(curl -sf 127.0.0.1:18080/api/v1/channels?status=active | grep -o '"status":"active"' | wc -l)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  echo "threads=$threads: 1,000 persisted channels, $active active ${ms} ms after exec; RSS ${rss} KiB"
  kill -TERM $pid; wait $pid
done
