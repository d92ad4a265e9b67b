#!/usr/bin/env bash
# Checks the amd64 package under a real systemd: boots a minimal Debian 12
# (debootstrap, kept in target/dist-tools/bookworm; made once, a few
# minutes) in a systemd-nspawn container with a private network, where a
# one-shot unit installs the package and checks that the service is
# started (Type=notify, DynamicUser), relays 1,000 records into
# /var/lib/speedrelay, stops cleanly (exit 0), and that remove and purge
# clean up. Needs root; installs debootstrap and systemd-container
# (Debian) when missing. Bounded: the container is killed after 3 minutes.
# Usage: dist/check-service.sh target/dist/speedrelay_<version>_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: dist/check-service.sh DEB}")
root=${CARGO_TARGET_DIR:-target}/dist-tools/bookworm

for tool in debootstrap:debootstrap systemd-nspawn:systemd-container; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "== installing ${tool#*:} (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
  fi
done
if [ ! -x "$root/bin/systemctl" ]; then
  echo "== debootstrap: a minimal Debian 12 with systemd into $root"
  rm -rf "$root"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl bookworm "$root" \
    http://deb.debian.org/debian > "$root.log" 2>&1 || { tail "$root.log"; exit 1; }
fi

cp "$deb" "$root/root/speedrelay.deb"
cat > "$root/root/check.sh" <<'EOF'
#!/bin/sh
# Runs inside the container at boot; writes /root/check.out.
exec > /root/check.out 2>&1
set -x
fail() { echo "CHECK FAILED: $*"; systemctl poweroff; exit 1; }
rm -rf /var/lib/private/speedrelay   # archives of an earlier check
dpkg -i /root/speedrelay.deb || fail "dpkg -i"
systemctl is-enabled speedrelay || fail "not enabled"
systemctl show -p Type,ActiveState,SubState,DynamicUser speedrelay
[ "$(systemctl show -p ActiveState --value speedrelay)" = active ] || fail "not active"
[ "$(systemctl show -p Type --value speedrelay)" = notify ] || fail "not Type=notify"
curl -sf 127.0.0.1:8080/api/v1/health || fail "API"
speedrelay send --port 26000 --schema /etc/speedrelay/agents/example.avsc --count 1000 --rate 5000
sleep 1
curl -sf 127.0.0.1:8080/api/v1/channels/example | grep -q '"packets": *1000[,}]' || fail "packets"
systemctl stop speedrelay
[ "$(systemctl show -p ExecMainStatus --value speedrelay)" = 0 ] || fail "exit status"
speedrelay verify /var/lib/speedrelay/example/*.avro || fail "verify"
journalctl -u speedrelay --no-pager -o cat | tail -8
dpkg -r speedrelay && [ ! -e /usr/bin/speedrelay ] && [ -e /etc/speedrelay/relay.yaml ] || fail "remove"
dpkg -P speedrelay && [ ! -e /etc/speedrelay ] || fail "purge"
echo "CHECK PASSED"
systemctl poweroff
EOF
chmod 755 "$root/root/check.sh"
cat > "$root/etc/systemd/system/speedrelay-check.service" <<'EOF'
[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/root/check.sh
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/speedrelay-check.service "$root/etc/systemd/system/multi-user.target.wants/"
rm -f "$root/root/check.out"

echo "== booting the container (systemd-nspawn, private network)"
timeout 180 systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$root" -b \
  > "$root.boot.log" 2>&1 || true
cat "$root/root/check.out"
grep -q "CHECK PASSED" "$root/root/check.out"
