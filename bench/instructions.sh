#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind): the bare
# hyper proxy against ficus with 0 and 1 plugin, on loopback.
#
# Wall-clock figures on a shared 2-core machine drift 2x between rounds (see
# bench/proxy.sh); an instruction count does not. It sees only user-space
# work (the kernel's TCP work is the same for every target, one read and one
# write per request each side) and not cache misses, so it complements the
# load test: it says what the proxy *does* per request, the load test what
# that costs in req/s.
#
#   target     what runs (under valgrind; the upstream runs natively)
#   bare       host/examples/bare_proxy.rs (the load test's baseline)
#   bare-lean  the same with Ficus's own upstream client (`--endpoint-client`,
#              not in the default TARGETS): Ficus's overhead without the
#              difference between the two clients
#   ficus-0    ficus run, one route to the upstream, no plugins
#   ficus-1    the same route with the `headers` plugin setting one request
#              header (warm instances)
#   ficus-1-sync  ficus-1 with `calls = "sync"` (not in the default TARGETS)
#
# For each target: start it under callgrind with instrumentation off, send
# WARMUP seconds of requests (one connection, keep-alive), switch
# instrumentation on, send DURATION seconds of requests, dump, and divide the
# instructions of all the process's threads by the requests wrk completed.
# ficus runs with `max_plugin_instances = 4`: valgrind cannot reserve the
# pooling allocator's default address space (terabytes of PROT_NONE).
#
# Knobs (environment): TARGETS="bare ficus-0 ficus-1" DURATION=6 WARMUP=2
# CONNECTIONS=1 (wrk's connections; 32 is the load test's: with one, every
# request also pays the runtime's park and wake-up, which many connections share)
# SKIP_BUILD=1 KEEP=DIR (keep the callgrind files there, one per thread, for
# callgrind_annotate). Needs valgrind and wrk (installed with apt-get when missing).
# Takes about 2 minutes. Benchmarks report: this script never fails on a
# slow result.
set -euo pipefail

DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-1}
read -r -a TARGETS <<<"${TARGETS:-bare ficus-0 ficus-1}"

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WASM_DIR=$ROOT/target/wasm

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building (release): ficus, bench_upstream, bare_proxy" >&2
    cargo build --release -p ficus --bin ficus --examples
fi
for f in "$BIN/ficus" "$BIN/examples/bench_upstream" "$BIN/examples/bare_proxy" "$WASM_DIR/headers.wasm"; do
    [[ -e "$f" ]] || { echo "error: $f is missing (build failed?)" >&2; exit 1; }
done
for tool in valgrind wrk; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "== installing $tool" >&2
        apt-get update >&2
        apt-get install -y "$tool" >&2
    fi
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ficus-instr.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME SECONDS CMD...: run CMD in the background, wait up to SECONDS for
# a stdout line `... http://ADDR ...`; sets STARTED_PID and STARTED_ADDR.
start() {
    local name=$1 seconds=$2 i
    shift 2
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    for ((i = 0; i < seconds * 10; i++)); do
        if STARTED_ADDR=$(grep -m1 -oE 'http://[0-9.]+:[0-9]+' "$TMP/$name.out" 2>/dev/null | grep -m1 -oE '[0-9.]+:[0-9]+'); then
            return 0
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            echo "error: $name exited early:" >&2
            tail -20 "$TMP/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: $name did not start within $seconds s:" >&2
    tail -20 "$TMP/$name.err" >&2
    exit 1
}

start upstream 20 "$BIN/examples/bench_upstream" 127.0.0.1:0
UPSTREAM=$STARTED_ADDR

write_config() { # write_config FILE PLUGINS(0|1|1-sync)
    local dir=${1%.toml}
    mkdir -p "$dir"
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
cache_dir = "$dir/cache"
max_plugin_instances = 4

[backend]
data_dir = "$dir/data"

[upstreams.app]
endpoints = ["$UPSTREAM"]

[[routes]]
name = "bench"
upstream = "app"
EOF
    if [[ $2 == 1 || $2 == 1-sync ]]; then
        cat >>"$1" <<EOF
pipeline = [{ plugin = "headers", config = { request = { set = { "x-bench" = "1" } } } }]

[plugins.headers]
source = "$WASM_DIR/headers.wasm"
calls = "$([[ $2 == 1-sync ]] && echo sync || echo async)"
EOF
    fi
}

declare -A PER_REQUEST REQUESTS
for target in "${TARGETS[@]}"; do
    out=$TMP/callgrind.$target
    valgrind=(valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes "--callgrind-out-file=$out")
    case $target in
        bare) cmd=("$BIN/examples/bare_proxy" "$UPSTREAM" 127.0.0.1:0) ;;
        bare-lean) cmd=("$BIN/examples/bare_proxy" --endpoint-client "$UPSTREAM" 127.0.0.1:0) ;;
        ficus-0 | ficus-1 | ficus-1-sync)
            write_config "$TMP/$target.toml" "${target#ficus-}"
            cmd=("$BIN/ficus" run --config "$TMP/$target.toml")
            ;;
        *) echo "error: unknown target $target (bare, bare-lean, ficus-0, ficus-1, ficus-1-sync)" >&2; exit 2 ;;
    esac
    echo "== $target: starting under callgrind" >&2
    start "$target" 180 "${valgrind[@]}" "${cmd[@]}"
    pid=$STARTED_PID
    url="http://$STARTED_ADDR/bench"
    wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    result=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$url")
    requests=$(awk '/requests in/ { print $1 }' <<<"$result")
    callgrind_control -d "$pid" >/dev/null 2>&1
    callgrind_control -i off "$pid" >/dev/null 2>&1
    total=$(cat "$out".1-* 2>/dev/null | awk '/^summary:/ { s += $2 } END { print s + 0 }')
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP"
        cp "$out".1-* "$KEEP/" 2>/dev/null || true
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -qE 'Non-2xx|Socket errors' <<<"$result"; then
        echo "error: $target: not every request was answered 200 (the count would measure error paths):" >&2
        grep -E 'Non-2xx|Socket errors' <<<"$result" >&2
        exit 1
    fi
    if [[ -z $requests || $requests -eq 0 || $total -eq 0 ]]; then
        echo "error: $target: no requests counted (requests=${requests:-none}, instructions=$total)" >&2
        exit 1
    fi
    REQUESTS[$target]=$requests
    PER_REQUEST[$target]=$((total / requests))
    echo "   $target: $requests requests, ${PER_REQUEST[$target]} instructions each" >&2
done

echo
echo "Instructions per proxied request (callgrind, user space, all threads; wrk -t1 -c$CONNECTIONS -d${DURATION}s, keep-alive)"
printf '%-10s %10s %16s %12s\n' target requests "instr/request" "vs bare"
for target in "${TARGETS[@]}"; do
    ratio=n/a
    if [[ -n ${PER_REQUEST[bare]:-} ]]; then
        ratio=$(awk -v a="${PER_REQUEST[$target]}" -v b="${PER_REQUEST[bare]}" 'BEGIN { printf "%.3fx", a / b }')
    fi
    printf '%-10s %10s %16s %12s\n' "$target" "${REQUESTS[$target]}" "${PER_REQUEST[$target]}" "$ratio"
done
