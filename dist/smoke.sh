#!/usr/bin/env bash
# Smoke test of a built binary, emulated with qemu-user for ARM targets:
# inside a fresh private network namespace (lo only), `serve` with no
# channel, register one over HTTP (`channels add`), `send --count 1000`
# to it, check its counters (packets 1000, invalid 0), SIGTERM (exit 0),
# then `verify` its archive (1000 records, healthy). Every command runs the
# binary under test. Bounded: a minute at most.
#
# The binary is target/dist/speedrelay-TARGET (dist/build.sh); for a
# glibc build, qemu's -L points at Debian's cross libraries
# (libc6-<arch>-cross, installed with the cross compilers).
# With --unit, also runs the library's unit tests for TARGET under qemu
# (`cargo test --lib --target TARGET`, Debian's cross gcc as linker).
#
# Usage: dist/smoke.sh TARGET [--unit]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: dist/smoke.sh TARGET [--unit]}
unit=${2:-}

case $target in
  x86_64-*) runner=() ;;
  aarch64-*-gnu) runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
  aarch64-*-musl) runner=(qemu-aarch64) ;;
  armv7-*-gnueabihf) runner=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
  armv7-*-musleabihf) runner=(qemu-arm) ;;
  *) echo "dist/smoke.sh: no runner known for $target" >&2; exit 2 ;;
esac
if [ ${#runner[@]} -gt 0 ] && ! command -v "${runner[0]}" >/dev/null; then
  echo "== installing qemu-user (Debian)"
  apt-get install -y -qq qemu-user >/dev/null
fi
# A glibc binary needs the target's C library (Debian's libc6-<arch>-cross).
if [ ${#runner[@]} -gt 2 ] && [ ! -d "${runner[2]}/lib" ]; then
  case $target in aarch64-*) pkg=libc6-arm64-cross ;; *) pkg=libc6-armhf-cross ;; esac
  echo "== installing $pkg (Debian)"
  apt-get install -y -qq "$pkg" >/dev/null
fi

if [ "${SPEEDRELAY_IN_NETNS:-}" != 1 ]; then
  if [ "$unit" = --unit ]; then
    case $target in
      aarch64-*-gnu) cc=aarch64-linux-gnu-gcc ;;
      armv7-*-gnueabihf) cc=arm-linux-gnueabihf-gcc ;;
      *) cc= ;;
    esac
    if [ -n "$cc" ] && ! command -v "$cc" >/dev/null; then
      echo "== installing ${cc%-gcc} cross compiler (Debian)"
      apt-get install -y -qq "gcc-${cc%-gcc}" >/dev/null
    fi
    triple=$(echo "$target" | tr 'a-z-' 'A-Z_')
    flat=$(echo "$target" | tr '-' '_')
    start=$(date +%s)
    echo "== unit tests of the library for $target, under ${runner[*]:-no emulator}"
    env "CARGO_TARGET_${triple}_RUNNER=${runner[*]}" \
      ${cc:+"CARGO_TARGET_${triple}_LINKER=$cc" "CC_${flat}=$cc" "AR_${flat}=${cc%-gcc}-ar"} \
      nice -n 15 cargo test --locked --lib --target "$target"
    echo "== unit tests for $target: $(( $(date +%s) - start )) s"
  fi
  start=$(date +%s)
  unshare --user --map-root-user --net env SPEEDRELAY_IN_NETNS=1 "$0" "$target"
  echo "== smoke test of $target: passed in $(( $(date +%s) - start )) s"
  exit
fi

bin=${CARGO_TARGET_DIR:-target}/dist/speedrelay-$target
[ -x "$bin" ] || { echo "dist/smoke.sh: no $bin (run dist/build.sh $target)" >&2; exit 2; }
relay() { "${runner[@]}" "$bin" "$@"; }

ip link set lo up
ip link set lo multicast on
ip route add 239.0.0.0/8 dev lo
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/config"
printf 'channels: []\nsocket: {bind: 127.0.0.1}\noutputs: {full_rate: null, decimated: null}\n' > "$work/config/relay.yaml"
export SPEEDRELAY_URL=http://127.0.0.1:18080
# qemu-user crashes on the start-up page release (madvise on the code).
[ ${#runner[@]} -eq 0 ] || export SPEEDRELAY_NO_PAGE_RELEASE=1

serve_runner=("${runner[@]}")
# qemu logs where it put the guest's address space, for the RSS below.
# A 64-bit guest gets a reserved address space only when asked (-R).
case ${runner[0]:-} in
  qemu-aarch64) serve_runner=("${runner[0]}" -R 0x100000000 -d page -D "$work/qemu.log" "${runner[@]:1}") ;;
  qemu-*) serve_runner=("${runner[0]}" -d page -D "$work/qemu.log" "${runner[@]:1}") ;;
esac
echo "== serve ($bin${runner:+ under ${runner[*]}})"
"${serve_runner[@]}" "$bin" serve --config "$work/config" --data-dir "$work/data" --api 127.0.0.1:18080 \
  --threads 1 > /dev/null 2> "$work/serve.log" &
pid=$!
for _ in $(seq 1 600); do
  grep -q "speedrelay running" "$work/serve.log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
grep -q "speedrelay running" "$work/serve.log" || { cat "$work/serve.log"; exit 1; }

echo "== channels add smoke"
relay channels add smoke --port 26999 --schema config/agents/example.avsc
# RSS with this one idle channel: the process's own pages. Under qemu, the
# pages inside the guest's address space (qemu's own heap and translated
# code excluded).
sleep 2
if [ ${#runner[@]} -eq 0 ]; then
  rss=$(awk '/^Rss:/ {k += $2} END {print k}' /proc/$pid/smaps)
else
  read -r base size < <(sed -n 's/^pgb_reserved_va: base @ \(0x[0-9a-f]*\) for \([0-9]*\) bytes$/\1 \2/p' "$work/qemu.log" | tail -1)
  rss=$(python3 - "$pid" "$base" "$size" <<'PY'
import sys
pid, base, size = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3])
kib, inside = 0, False
for line in open(f"/proc/{pid}/smaps"):
    head = line.split()[0]
    if "-" in head and not head.endswith(":"):
        start, end = (int(x, 16) for x in head.split("-"))
        inside = base <= start and end <= base + size
    elif head == "Rss:" and inside:
        kib += int(line.split()[1])
print(kib)
PY
)
fi
echo "== RSS with 1 idle channel, --threads 1: $rss KiB"

echo "== send --count 1000"
timeout 30 "${runner[@]}" "$bin" send --port 26999 --schema config/agents/example.avsc \
  --rate 2000 --count 1000
counters() { curl -sf "$SPEEDRELAY_URL/api/v1/channels/smoke"; }
for _ in $(seq 1 50); do
  counters | grep -q '"packets":1000[,}]' && break
  sleep 0.1
done
reply=$(counters)
packets=$(grep -o '"packets":[0-9]*' <<<"$reply" | cut -d: -f2)
invalid=$(grep -o '"invalid":[0-9]*' <<<"$reply" | cut -d: -f2)
echo "== counters: packets $packets, invalid $invalid"
[ "$packets" = 1000 ] && [ "$invalid" = 0 ] || { echo "$reply"; cat "$work/serve.log"; exit 1; }

echo "== SIGTERM"
kill -TERM $pid
status=0; wait $pid || status=$?
[ $status = 0 ] || { echo "serve exited $status"; cat "$work/serve.log"; exit 1; }

echo "== verify"
relay verify "$work"/data/smoke/*.avro | tee "$work/verify.txt"
grep -q 'healthy: .* 1000 records' "$work/verify.txt"
