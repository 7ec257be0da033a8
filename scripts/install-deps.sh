#!/usr/bin/env bash
# Installs the Debian packages walden's demo, tests and benchmarks use, if
# any is missing: PostgreSQL 15, the reference compression tools, Python's
# venv (for the S3 test server), GNU time and pgBackRest (for benchmarks),
# openssl (certificates for the PostgreSQL TLS tests), npm (fetches the other
# PostgreSQL majors of the version matrix, scripts/pg-versions.sh).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(postgresql-15 postgresql-client-15 lz4 zstd xz-utils bzip2 python3-venv
          python3-pip ca-certificates curl time pgbackrest build-essential openssl)
# npm: any install will do (this machine's comes from nodejs), so it is only
# asked for when the command is missing.
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing: ${missing[*]}"
apt-get update </dev/null
apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
