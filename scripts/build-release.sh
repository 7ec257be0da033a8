#!/usr/bin/env bash
# Builds the release binary users install: statically linked, so that the
# once-per-segment start of archive_command and restore_command does no
# dynamic loading (see README, Performance). Prints the binary's path.
#
# crt-static cannot go into .cargo/config.toml: cargo would apply it to
# proc-macro crates too, which must be dynamic libraries. With an explicit
# --target the flags reach only the target's crates.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$target" 2>/dev/null \
    || RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target"
echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/walden"
