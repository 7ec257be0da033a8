#!/usr/bin/env bash
# Prepares the Python venv the integration tests need:
#   nanio  - the S3-compatible server the tests run (it verifies SigV4),
#   PyNaCl - lets unit tests cross-check libsodium encryption.
# Idempotent: does nothing when both already work.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WALDEN_TEST_VENV:-$repo/target/test-venv}"

if [ -x "$venv/bin/nanio" ] && "$venv/bin/python" -c 'import nacl' 2>/dev/null; then
    exit 0
fi

echo "setting up test venv in $venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check nanio==0.1.7 pynacl
"$venv/bin/nanio" --help >/dev/null
"$venv/bin/python" -c 'import nacl'
