#!/usr/bin/env bash
# Release binaries and Debian packages (SPEC §9), into target/dist/:
#
#   speedrelay-x86_64-unknown-linux-gnu         speedrelay_<version>_amd64.deb
#   speedrelay-aarch64-unknown-linux-gnu        speedrelay_<version>_arm64.deb
#   speedrelay-armv7-unknown-linux-gnueabihf    speedrelay_<version>_armhf.deb
#
# The binaries link against glibc 2.31 at most, so they run on Debian 11
# (Raspberry Pi OS Bullseye) and later: zig (from PyPI) provides the C
# compiler, linker and the glibc 2.31 stubs, through cargo-zigbuild. Why
# glibc and not static musl: docs/install.md, "How the binaries are built".
#
# Installs what it lacks, saying so: the Rust targets (rustup), zig
# (into target/dist-tools/), cargo-zigbuild and cargo-deb (crates.io),
# binutils and help2man (Debian). No cross compiler is needed: zig is one.
# Idempotent: a second run rebuilds nothing that is up to date.
#
# Usage: dist/build.sh [TARGET...]   (default: the three above)
# Builds run under `nice`, one target at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

GLIBC=2.31
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
CARGO_DEB_VERSION=3.8.0
all_targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

target_dir=${CARGO_TARGET_DIR:-$root/target}
dist=$target_dir/dist
tools=$target_dir/dist-tools
mkdir -p "$dist" "$tools/bin"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"

say() { printf '== %s\n' "$*"; }

arch_of() {
  case $1 in
    x86_64-*) echo amd64 ;;
    aarch64-*) echo arm64 ;;
    armv7-*) echo armhf ;;
    *) echo "dist/build.sh: unsupported target $1 (supported: ${all_targets[*]})" >&2; return 1 ;;
  esac
}
for t in "${targets[@]}"; do arch_of "$t" >/dev/null; done

# --- tools -----------------------------------------------------------------
installed_targets=$(rustup target list --installed)
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    say "installing the Rust standard library for $t (rustup)"
    rustup target add "$t"
  fi
done

if ! "$tools/bin/zig" version 2>/dev/null | grep -qx "$ZIGLANG_VERSION"; then
  say "installing zig $ZIGLANG_VERSION (PyPI package ziglang) into $tools/"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
  zig=$("$tools/venv/bin/python" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
  ln -sf "$zig" "$tools/bin/zig"
fi

cargo_tool() { # crate version: installs crate@version unless that version is there
  if ! cargo install --list | grep -qx "$1 v$2:"; then
    say "installing $1 $2 (crates.io)"
    nice -n 15 cargo install --locked --quiet "$1" --version "$2"
  fi
}
if ! command -v objdump >/dev/null; then
  say "installing binutils (Debian), for objdump"
  apt-get install -y -qq binutils >/dev/null
fi
if ! command -v help2man >/dev/null; then
  say "installing help2man (Debian), for the man pages"
  apt-get install -y -qq help2man >/dev/null
fi
cargo_tool cargo-zigbuild "$CARGO_ZIGBUILD_VERSION"
cargo_tool cargo-deb "$CARGO_DEB_VERSION"

# --- packaged configuration --------------------------------------------------
# config/ as shipped, but with the data in /var/lib/speedrelay. Always in
# ./target/dist/etc, where [package.metadata.deb] in Cargo.toml looks.
etc=$root/target/dist/etc
mkdir -p "$etc"
sed 's|^\(  avro_path:\).*|\1 "/var/lib/speedrelay"|' config/global.yaml > "$etc/global.yaml.new"
grep -qx '  avro_path: "/var/lib/speedrelay"' "$etc/global.yaml.new" \
  || { echo "dist/build.sh: storage.avro_path not found in config/global.yaml" >&2; exit 1; }
mv "$etc/global.yaml.new" "$etc/global.yaml"

version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "speedrelay"))')
# Debian wants a changelog; one entry for this version, dated by the last commit.
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
{
  printf 'speedrelay (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * speedrelay %s, commit %s.\n\n' "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf ' -- %s  %s\n' "$maintainer" "$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")"
} > "$etc/changelog"

# --- binaries ----------------------------------------------------------------

for t in "${targets[@]}"; do
  say "building $t (glibc <= $GLIBC), release profile"
  start=$(date +%s)
  nice -n 15 cargo zigbuild --release --locked --bin speedrelay --target "$t.$GLIBC"
  bin=$target_dir/$t/release/speedrelay
  # Refuse a binary that needs a newer glibc than promised.
  newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  if [ "$(printf '%s\n' "GLIBC_$GLIBC" "$newest" | sort -V | tail -1)" != "GLIBC_$GLIBC" ]; then
    echo "dist/build.sh: $bin needs $newest, more than glibc $GLIBC" >&2
    exit 1
  fi
  cp "$bin" "$dist/.speedrelay-$t.new" && mv "$dist/.speedrelay-$t.new" "$dist/speedrelay-$t"
  say "$dist/speedrelay-$t: $(stat -c %s "$bin") bytes, needs $newest, $(( $(date +%s) - start )) s"
done

# --- man pages ---------------------------------------------------------------
# From the binary's own --help (clap), so they cannot drift from it: one page
# for speedrelay and one per command. Made with a binary this machine runs:
# the x86-64 one when built above, else a host release build.
host_bin=$dist/speedrelay-x86_64-unknown-linux-gnu
if [ ! -x "$host_bin" ] || [ "$(uname -m)" != x86_64 ]; then
  nice -n 15 cargo build --release --locked --bin speedrelay
  host_bin=$target_dir/release/speedrelay
fi
man=$root/target/dist/man
rm -rf "$man" && mkdir -p "$man"
page() { # NAME DESCRIPTION COMMAND...: the man page NAME.1.gz of `COMMAND... --help`
  local name=$1 what=$2; shift 2
  local wrapper=$man/.bin/$name
  mkdir -p "$man/.bin"
  printf '#!/bin/sh\nexec %s "$@"\n' "$*" > "$wrapper"
  chmod +x "$wrapper"
  help2man --no-info --no-discard-stderr --section 1 --name "$what" \
    --version-string "$version" --output "$man/$name.1" "$wrapper"
  gzip -9n "$man/$name.1"
}
page speedrelay "UDP/Avro telemetry relay" "$host_bin"
for cmd in serve channels send verify check-config registry; do
  summary=$("$host_bin" help "$cmd" | head -1 | sed 's/\.$//')
  page "speedrelay-$cmd" "$summary" "$host_bin" "$cmd"
done
rm -rf "$man/.bin"
say "man pages: $(cd "$man" && echo *.1.gz)"

# --- packages ------------------------------------------------------------------

for t in "${targets[@]}"; do
  arch=$(arch_of "$t")
  deb=$dist/speedrelay_${version}_$arch.deb
  say "packaging $deb"
  cargo deb --no-build --no-strip --target "$t" --output "$deb"
done

say "done:"
ls -l "$dist"/speedrelay-* "$dist"/*.deb
