#!/usr/bin/env bash
# The project's single test command: unit tests plus integration tests
# against real PostgreSQL 15 and a real S3-compatible server.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
bash scripts/setup-test-env.sh
# PostgreSQL 13, 14, 16, 17 and 18 for the version matrix (15 is Debian's).
bash scripts/pg-versions.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"
export WALDEN_TEST_VENV="${WALDEN_TEST_VENV:-$PWD/target/test-venv}"

# --release: the binary under test is the one users get (LTO, abort on panic).
# Two threads: every integration test starts its own servers on a 2-core box.
cargo test --release -- --test-threads=2
