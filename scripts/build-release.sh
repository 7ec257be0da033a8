#!/usr/bin/env bash
# Builds the release binary users install: statically linked, so that the
# once-per-segment start of archive_command and restore_command does no
# dynamic loading (see README, Performance). Prints the binary's path.
#
# crt-static cannot go into .cargo/config.toml: cargo would apply it to
# proc-macro crates too, which must be dynamic libraries. With an explicit
# --target the flags reach only the target's crates.
set -euo pipefail
# A relative CARGO_TARGET_DIR means relative to where the caller stands,
# not to the repository we change into below.
if [[ -n "${CARGO_TARGET_DIR:-}" && "$CARGO_TARGET_DIR" != /* ]]; then
    export CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$target" 2>/dev/null \
    || RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target"
# Ask cargo where it built: CARGO_TARGET_DIR, build.target-dir in a cargo
# config, or ./target.
dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${dir:-$PWD/target}/$target/release/walden"
if [[ ! -x "$bin" ]]; then
    echo "build-release.sh: built, but no binary at $bin" >&2
    exit 1
fi
echo "$bin"
