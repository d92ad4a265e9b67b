#!/usr/bin/env bash
# Compares release binaries of speedrelay (for example a glibc and a musl
# build): stripped size; RSS with 1 idle channel on --threads 1; and the
# relay's CPU time (user + system, from /proc/PID/stat) to relay 300,000
# records sent at 50,000 records/s by `speedrelay send` to one channel that
# archives them and forwards every record to a local UDP sink. The same
# sender (the first binary) loads every relay. Bounded: ROUNDS rounds
# (default 3) of 300,000 records per binary, the binaries alternating.
# Runs itself inside a fresh private network namespace (lo only).
# INSTRUCTIONS=1 instead counts user-space instructions per record with
# valgrind's callgrind (see below); RATE (default 2000) and COUNT (default
# 20000) set its load. COALESCE_US=N sets the channel's socket.coalesce_us.
# Usage: [ROUNDS=N] [INSTRUCTIONS=1 [RATE=R] [COUNT=N]] [COALESCE_US=N] dist/measure.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
if [ "${SPEEDRELAY_IN_NETNS:-}" != 1 ]; then
  exec unshare --user --map-root-user --net env SPEEDRELAY_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
ip link set lo multicast on
ip route add 239.0.0.0/8 dev lo
rounds=${ROUNDS:-3}
count=300000
rate=50000
hz=$(getconf CLK_TCK)
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/config/agents"
cp config/agents/example.avsc "$work/config/agents/"
cat > "$work/config/relay.yaml" <<YAML
channels:
  - name: "bench"
    port: 26100
    schema: "agents/example.avsc"
socket: {bind: 127.0.0.1, coalesce_us: ${COALESCE_US:-0}}
outputs:
  full_rate: {address: "127.0.0.1", port: 27100}
  decimated: null
YAML
# The sink: receives and discards (its own process, not measured).
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("127.0.0.1", 27100))
b = bytearray(65536)
while True:
    s.recv_into(b)
' &
sender=$1

start() { # binary log: sets pid; waits for "speedrelay running"
  rm -rf "$work/data" "$2"
  RUST_LOG=warn,speedrelay=info ${wrap:-} "$1" serve --config "$work/config" --data-dir "$work/data" \
    --api 127.0.0.1:18080 --threads 1 > /dev/null 2> "$2" &
  pid=$!
  for _ in $(seq 1 12000); do grep -q "speedrelay running" "$2" && break; sleep 0.01; done
  grep -q "speedrelay running" "$2" || { cat "$2" >&2; return 1; }
}
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
packets() { curl -sf 127.0.0.1:18080/api/v1/channels/bench | grep -o '"packets":[0-9]*' | cut -d: -f2; }
batches() { curl -sf 127.0.0.1:18080/api/v1/channels/bench | grep -o '"batches":[0-9]*' | cut -d: -f2; }

if [ -n "${INSTRUCTIONS:-}" ]; then
  # User-space instructions per record, counted by callgrind (so the
  # machine's other load changes nothing): a run relaying COUNT records at
  # RATE/s minus an idle run of the same length, over the records taken in.
  # Under callgrind the relay's own code runs ~50x slower (the kernel's
  # does not), so a high RATE gathers larger batches than it would natively.
  n=${COUNT:-20000}
  irate=${RATE:-2000}
  for bin in "$@"; do
    for load in 0 $n; do
      wrap="valgrind --tool=callgrind --callgrind-out-file=$work/cg.$load"
      start "$bin" "$work/cg.log"
      if [ $load -gt 0 ]; then
        "$sender" send --port 26100 --schema "$work/config/agents/example.avsc" \
          --rate $irate --count $load > "$work/send.log" 2>&1
      else
        sleep $(( (n + irate - 1) / irate ))
      fi
      sleep 2
      [ $load = 0 ] || { got=$(packets); nb=$(batches); }
      kill -TERM $pid; wait $pid
    done
    ir() { grep -m1 '^totals:\|^summary:' "$1" | awk '{print $2}'; }
    echo "$bin: $(( ($(ir $work/cg.$n) - $(ir $work/cg.0)) / got )) instructions per record" \
      "(user space, callgrind; $got of $n records taken in at $irate/s in $nb batches; coalesce_us ${COALESCE_US:-0})"
  done
  exit
fi

for bin in "$@"; do
  start "$bin" "$work/idle.log"
  sleep 3
  rss=$(awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} /RssFile/ {f=$2} END {print r " KiB (anonymous " a ", file-backed " f ")"}' /proc/$pid/status)
  kill -TERM $pid; wait $pid
  echo "$bin: $(stat -c %s "$bin") bytes; 1 idle channel, --threads 1: RSS $rss"
done
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    start "$bin" "$work/load.log"
    t0=$(ticks $pid)
    timeout 60 "$sender" send --port 26100 --schema "$work/config/agents/example.avsc" \
      --rate $rate --count $count > "$work/send.log" 2>&1
    # Until the relay has taken in what was queued (at most 5 s).
    for _ in $(seq 1 50); do [ "$(packets)" = $count ] && break; sleep 0.1; done
    n=$(packets); t1=$(ticks $pid)
    kill -TERM $pid; wait $pid
    echo "round $round $bin: $n of $count records, $((t1 - t0)) ticks of $hz/s CPU," \
      "$(( (t1 - t0) * 1000000000 / hz / n )) ns per record"
  done
done
