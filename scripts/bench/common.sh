# Steps every benchmark wrapper shares; sourced (with `set -euo pipefail`
# on) by scripts/bench/*.sh, which then run from the repository root.
#   bench_build                  install dependencies, build the release
#                                binary: its path in $bin
#   bench_workdir LABEL [DIRS]   a fresh $work (/tmp/walden-LABEL.XXXXXX),
#                                removed on exit unless BENCH_KEEP is set;
#                                PostgreSQL servers left running in the
#                                data directories DIRS under it (globs,
#                                default "pg") are stopped on exit, with
#                                $bench_pg_ctl; then a function
#                                bench_on_exit runs, if defined
#   bench_stage [PEER_VARS...]   $bin copied to $work/walden, each peer
#                                binary a variable names (BENCH_WALG...)
#                                to $work/<VAR>, all owned by postgres
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bench_pg_ctl=/usr/lib/postgresql/15/bin/pg_ctl

bench_build() {
    bash scripts/install-deps.sh
    bin=$(bash scripts/build-release.sh | tail -1)
}

bench_workdir() {
    work=$(mktemp -d "/tmp/walden-$1.XXXXXX")
    chmod 755 "$work"
    keep="${BENCH_KEEP:-}"
    bench_servers="${2:-pg}"
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local globs glob d
    read -ra globs <<<"$bench_servers"
    for glob in "${globs[@]}"; do
        for d in "$work"/$glob; do
            [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$bench_pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
        done
    done
    if declare -F bench_on_exit >/dev/null; then bench_on_exit; fi
    [ -n "$keep" ] || rm -rf "$work"
}

bench_stage() {
    cp "$bin" "$work/walden"
    local peer
    for peer in "$@"; do
        if [ -n "${!peer:-}" ]; then cp "${!peer}" "$work/$peer"; else echo "$peer not set: skipping that tool"; fi
    done
    chown -R postgres: "$work"
}
