#!/usr/bin/env bash
# Checks a package made by dist/build.sh for this machine's architecture:
# lists it, checks its unit with `systemd-analyze verify` and the package
# with lintian (when installed), then unpacks it into a temporary root and
# runs the installed binary with the installed configuration, inside a
# fresh private network namespace: the packaged `example` channel and one
# registered over HTTP each take 1,000 records, counted by the API.
# Usage: dist/check-deb.sh target/dist/speedrelay_<version>_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: dist/check-deb.sh DEB}")

if [ "${SPEEDRELAY_IN_NETNS:-}" != 1 ]; then
  echo "== dpkg-deb -c"
  dpkg-deb -c "$deb"
  echo "== conffiles"
  dpkg-deb -f "$deb" Depends >/dev/null
  dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles
  root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
  dpkg-deb -x "$deb" "$root"
  unit=$(find "$root" -name speedrelay.service | head -1)
  echo "== systemd-analyze verify (the binary path resolved inside the unpacked root)"
  # verify checks that ExecStart exists: point it at the unpacked binary.
  sed "s|/usr/bin/speedrelay|$root/usr/bin/speedrelay|" "$unit" > "$root/speedrelay.service"
  systemd-analyze verify "$root/speedrelay.service" && echo "no complaint"
  if command -v lintian >/dev/null; then
    echo "== lintian"
    lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' || true
  fi
  unshare --user --map-root-user --net env SPEEDRELAY_IN_NETNS=1 ROOT="$root" "$0" "$deb"
  exit
fi

ip link set lo up
ip link set lo multicast on
ip route add 239.0.0.0/8 dev lo
data=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT
bin=$ROOT/usr/bin/speedrelay
export SPEEDRELAY_URL=http://127.0.0.1:8080
echo "== $bin serve --config $ROOT/etc/speedrelay --data-dir $data"
"$bin" serve --config "$ROOT/etc/speedrelay" --data-dir "$data" --threads 1 > /dev/null 2> "$data.log" &
pid=$!
for _ in $(seq 1 200); do grep -qs "speedrelay running" "$data.log" && break; sleep 0.05; done
grep -q "speedrelay running" "$data.log" || { cat "$data.log"; exit 1; }
"$bin" channels add registered --port 26500 --schema "$ROOT/etc/speedrelay/agents/temperature.avsc"
"$bin" send --port 26000 --schema "$ROOT/etc/speedrelay/agents/example.avsc" --rate 5000 --count 1000
"$bin" send --port 26500 --schema "$ROOT/etc/speedrelay/agents/temperature.avsc" --rate 5000 --count 1000
sleep 0.5
"$bin" channels list
for ch in example registered; do
  reply=$(curl -sf "$SPEEDRELAY_URL/api/v1/channels/$ch")
  grep -q '"packets": *1000[,}]' <<<"$reply" && grep -q '"invalid": *0[,}]' <<<"$reply" \
    || { echo "channel $ch did not count 1000 valid records: $reply"; exit 1; }
done
kill -TERM $pid; wait $pid
"$bin" verify "$data"/example/*.avro "$data"/registered/*.avro
rm -f "$data.log"
echo "== installed layout: passed"
