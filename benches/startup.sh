#!/usr/bin/env bash
# Footprint and start-up of the release binary: its stripped size; RSS and
# wake-ups over 10 s with 1 idle channel on --threads 1; start-up time, RSS
# and idle wake-ups with 1,000 persisted channels, on --threads 1 and on the
# default runtime. Wake-ups are the scheduler's count of times a thread of
# the process was run (/proc/PID/task/*/schedstat, third field).
# Runs itself inside a fresh private network namespace (SPEC §7); bounded:
# 1,000 registrations, then timed restarts. Usage: benches/startup.sh
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
bin=${CARGO_TARGET_DIR:-target}/release/speedrelay
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

wakeups() { # pid -> runs of all its threads so far
  cat /proc/"$1"/task/*/schedstat | awk '{n += $3} END {print n}'
}
idle() { # pid -> "RSS KiB, wake-ups in 10 s"
  sleep 1
  local w0; w0=$(wakeups "$1"); sleep 10; local w1; w1=$(wakeups "$1")
  echo "RSS $(awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} /RssFile/ {f=$2} END {print r " KiB (anonymous " a ", file-backed " f ")"}' /proc/"$1"/status), $((w1 - w0)) wake-ups in 10 s idle"
}
echo "binary: $(stat -c %s "$bin") bytes ($bin, stripped by the release profile)"

RUST_LOG=warn,speedrelay=info "$bin" serve --config "$work/config" --data-dir "$work/data" --api 127.0.0.1:18080 2> "$work/seed.log" &
pid=$!
wait_running "$(date +%s%N)" "$work/seed.log" >/dev/null
echo "no channel, default runtime: $(idle $pid)"
curl -sf -o /dev/null -X POST 127.0.0.1:18080/api/v1/channels -H 'Content-Type: application/json' \
  -d "{\"name\":\"one\",\"port\":39999,\"schema\":$schema}"
kill -TERM $pid; wait $pid
RUST_LOG=warn,speedrelay=info "$bin" serve --config "$work/config" --data-dir "$work/data" --api 127.0.0.1:18080 --threads 1 2> "$work/one.log" &
pid=$!
wait_running "$(date +%s%N)" "$work/one.log" >/dev/null
echo "1 idle channel, --threads 1: $(idle $pid)"
curl -sf -o /dev/null -X DELETE 127.0.0.1:18080/api/v1/channels/one
kill -TERM $pid; wait $pid

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
  echo "threads=$threads: 1,000 persisted channels, $active active ${ms} ms after exec; $(idle $pid)"
  kill -TERM $pid; wait $pid
done
