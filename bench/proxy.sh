#!/usr/bin/env bash
# Load test: Ficus against a bare hyper proxy built from the same parts.
#
#   bash bench/proxy.sh
#
# Builds `ficus` and the helper examples (release), installs `wrk` with
# apt-get when it is missing, then measures, on loopback only:
#
#   direct     wrk -> bench_upstream                      (reference)
#   bare       wrk -> bare_proxy -> bench_upstream        (the baseline)
#   bare-lean  bare_proxy --endpoint-client: the baseline with Ficus's own
#              upstream client (not in the default TARGETS)
#   ficus-0    wrk -> ficus, route with 0 plugins -> bench_upstream
#   ficus-1    wrk -> ficus, route with 1 plugin (`headers` sets one
#              request header) -> bench_upstream
#   ficus-1-sync  ficus-1 with the plugin's hooks called synchronously
#              (`calls = "sync"`: no fiber per call)
#   ficus-1-reloading   ficus-1 while the config is rewritten and reloaded
#              (POST /admin/reload) every 100 ms, rebuilding the step
#   ficus-amb-cb  route with the ambassador + circuit-breaker plugins
#   ficus-shard   route with the shard-router plugin (Maglev, client key)
#   ficus-strangler  route with the strangler plugin (50 % sticky split)
#
# TARGETS="bare ficus-0" limits the run to some targets.
#
# Each proxy is started fresh for each measurement, pinned to CPU 0
# (`taskset -c 0`); wrk and the upstream share CPU 1. Targets are interleaved
# over ROUNDS rounds, each round starting one target later; the table gives
# the median req/s, p50 and p99 latency, the proxy's CPU time per request,
# req/s relative to the bare proxy, and the paired ratio (median over rounds of req/s over the bare proxy's that round).
# Benchmarks report: this script never fails on a slow result.
#
# Knobs (environment): ROUNDS=5 DURATION=6 (seconds per run) WARMUP=2
# CONNECTIONS=32 THREADS=1 SKIP_BUILD=1 (use existing binaries).
# With the defaults each target takes about 50 s (all eight: ~7 minutes).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
WASM_DIR=$ROOT/target/wasm # where host/build.rs installs the plugins

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building (release): ficus, bench_upstream, bare_proxy" >&2
    cargo build --release -p ficus --bin ficus --examples
fi
for f in "$BIN/ficus" "$BIN/examples/bench_upstream" "$BIN/examples/bare_proxy" "$WASM_DIR/headers.wasm" \
    "$WASM_DIR/ambassador.wasm" "$WASM_DIR/circuit-breaker.wasm" "$WASM_DIR/shard-router.wasm" "$WASM_DIR/strangler.wasm"; do
    [[ -e "$f" ]] || { echo "error: $f is missing (build failed?)" >&2; exit 1; }
done

if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk" >&2
    apt-get update >&2
    apt-get install -y wrk >&2
fi

# Pin proxies to CPU 0 and the load (wrk + upstream) to CPU 1 when possible.
PROXY_PIN=()
LOAD_PIN=()
if command -v taskset >/dev/null 2>&1 && [[ $(nproc) -ge 2 ]]; then
    PROXY_PIN=(taskset -c 0)
    LOAD_PIN=(taskset -c 1)
else
    echo "warning: fewer than 2 CPUs or no taskset: running unpinned" >&2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ficus-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME PATTERN CMD...: run CMD in the background (stdout and stderr to
# files in $TMP), wait up to 20 s for a stdout line matching PATTERN
# (`... http://ADDR ...`), then set STARTED_PID and STARTED_ADDR.
start() {
    local name=$1 pattern=$2
    shift 2
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    local i
    for ((i = 0; i < 200; i++)); do
        if STARTED_ADDR=$(grep -m1 -oE "$pattern" "$TMP/$name.out" 2>/dev/null | grep -m1 -oE '[0-9.]+:[0-9]+'); then
            return 0
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            echo "error: $name exited early:" >&2
            cat "$TMP/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: $name did not start within 20 s:" >&2
    cat "$TMP/$name.err" >&2
    exit 1
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# CPU time (user + system) of a process, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
CLK_TCK=$(getconf CLK_TCK)

start upstream 'listening on http://[0-9.:]+' "${LOAD_PIN[@]}" "$BIN/examples/bench_upstream" 127.0.0.1:0
UPSTREAM=$STARTED_ADDR
echo "== upstream on $UPSTREAM" >&2

write_config() { # write_config FILE PLUGINS(0|1)
    local file=$1 plugins=$2 dir
    dir=$(dirname "$file")/$(basename "$file" .toml)
    mkdir -p "$dir"
    cat >"$file" <<EOF
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
cache_dir = "$dir/cache"

[backend]
data_dir = "$dir/data"

[upstreams.app]
endpoints = ["$UPSTREAM"]

[upstreams.app2]
endpoints = ["$UPSTREAM"]

EOF
    case $plugins in
        1 | 1-sync)
            cat >>"$file" <<EOF
[plugins.headers]
source = "$WASM_DIR/headers.wasm"
calls = "$([[ $plugins == 1-sync ]] && echo sync || echo async)"

[[routes]]
name = "bench"
upstream = "app"
pipeline = [{ plugin = "headers", config = { request = { set = { "x-bench" = "${3:-1}" } } } }]
EOF
            ;;
        amb-cb)
            cat >>"$file" <<EOF
[plugins.ambassador]
source = "$WASM_DIR/ambassador.wasm"
grants = ["log", "metrics", "state", "clock"]

[plugins.breaker]
source = "$WASM_DIR/circuit-breaker.wasm"
grants = ["log", "metrics", "state", "clock"]

[[routes]]
name = "bench"
upstream = "app"
max_attempts = 2
pipeline = [
  { plugin = "ambassador", config = { retry = { attempts = 2 } } },
  { plugin = "breaker", config = { minimum_calls = 20, sliding_window_size = 100 } },
]
EOF
            ;;
        shard)
            cat >>"$file" <<EOF
[plugins.shard]
source = "$WASM_DIR/shard-router.wasm"
grants = ["state"]

[[routes]]
name = "bench"
upstream = "app"
pipeline = [{ plugin = "shard", config = { key = [{ header = "x-user" }, { client_ip = true }], shards = [{ id = "a", cluster = "app" }, { id = "b", cluster = "app" }, { id = "c", cluster = "app" }] } }]
EOF
            ;;
        strangler)
            cat >>"$file" <<EOF
[plugins.strangler]
source = "$WASM_DIR/strangler.wasm"
grants = ["metrics"]

[[routes]]
name = "bench"
upstream = "app"
pipeline = [{ plugin = "strangler", config = { legacy = "app", new = "app2", rules = [{ path_prefix = "/", percent = 50 }] } }]
EOF
            ;;
        *)
            cat >>"$file" <<EOF
[[routes]]
name = "bench"
upstream = "app"
EOF
            ;;
    esac
}
write_config "$TMP/ficus-0.toml" 0
write_config "$TMP/ficus-1.toml" 1
write_config "$TMP/ficus-1-sync.toml" 1-sync
write_config "$TMP/ficus-1-reloading.toml" 1
write_config "$TMP/ficus-amb-cb.toml" amb-cb
write_config "$TMP/ficus-shard.toml" shard
write_config "$TMP/ficus-strangler.toml" strangler

# reloader ADMIN_ADDR CONFIG: rewrite CONFIG (alternating the header value, so
# the step is rebuilt) and POST /admin/reload every 100 ms until killed.
reloader() {
    local admin=$1 file=$2 n=0 failed=0
    while true; do
        n=$((n + 1))
        write_config "$file" 1 "$n"
        if ! curl -sf -X POST "http://$admin/admin/reload" >/dev/null; then
            failed=$((failed + 1))
        fi
        echo "$n reloads, $failed failed" >"$TMP/reloads"
        sleep 0.1
    done
}

# start_target NAME: start the proxy for NAME (none for `direct`); sets
# TARGET_ADDR and TARGET_PID (the process whose CPU time is counted).
start_target() {
    case $1 in
        direct)
            TARGET_ADDR=$UPSTREAM
            TARGET_PID=${PIDS[0]}
            ;;
        bare | bare-lean)
            local lean=()
            [[ $1 == bare-lean ]] && lean=(--endpoint-client)
            start "$1" 'listening on http://[0-9.:]+' "${PROXY_PIN[@]}" "$BIN/examples/bare_proxy" "${lean[@]}" "$UPSTREAM" 127.0.0.1:0
            TARGET_ADDR=$STARTED_ADDR
            TARGET_PID=$STARTED_PID
            ;;
        ficus-*)
            start "$1" 'ficus listening on http://[0-9.:]+' "${PROXY_PIN[@]}" "$BIN/ficus" run --config "$TMP/$1.toml"
            TARGET_ADDR=$STARTED_ADDR
            TARGET_PID=$STARTED_PID
            if [[ $1 == ficus-1-reloading ]]; then
                local admin
                admin=$(grep -m1 -oE 'admin http://[0-9.:]+' "$TMP/$1.out" | grep -oE '[0-9.]+:[0-9]+')
                reloader "$admin" "$TMP/$1.toml" &
                RELOADER_PID=$!
                PIDS+=("$RELOADER_PID")
            fi
            ;;
    esac
}

# Latency as printed by wrk (e.g. 512.00us, 1.20ms, 2.00s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) u = n; else if (v ~ /ms$/) u = n * 1000; else if (v ~ /s$/) u = n * 1000000; else u = n
        printf "%.0f", u
    }'
}

read -r -a TARGETS <<<"${TARGETS:-direct bare ficus-0 ficus-1 ficus-1-sync ficus-1-reloading ficus-amb-cb ficus-shard ficus-strangler}"
RESULTS=$TMP/results.tsv # target round rps p50_us p99_us cpu_us_per_req errors
: >"$RESULTS"

echo "== $ROUNDS rounds x ${#TARGETS[@]} targets: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after ${WARMUP}s warm-up)" >&2
for ((round = 1; round <= ROUNDS; round++)); do
    # Each round starts one target later than the one before, so no target
    # always runs first.
    for ((slot = 0; slot < ${#TARGETS[@]}; slot++)); do
        target=${TARGETS[$(((slot + round - 1) % ${#TARGETS[@]}))]}
        start_target "$target"
        url="http://$TARGET_ADDR/bench"
        # One request by hand first: the table is meaningless if it fails.
        if ! status=$(exec 3<>"/dev/tcp/${TARGET_ADDR%:*}/${TARGET_ADDR#*:}" &&
            printf 'GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3 &&
            head -c 12 <&3); then
            status="(no answer)"
        fi
        if [[ $status != "HTTP/1.1 200" ]]; then
            echo "warning: $target answered '$status' instead of 'HTTP/1.1 200'" >&2
        fi
        "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
        before=$(cpu_ticks "$TARGET_PID")
        out=$("${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url")
        after=$(cpu_ticks "$TARGET_PID")
        rss=$(awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$TARGET_PID/status" 2>/dev/null || echo "?")
        echo "$out" >"$TMP/wrk-$target-$round.txt"
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        requests=$(awk '/requests in/ { print $1 }' <<<"$out")
        p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
        p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        errors=$(awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }' <<<"$out")
        cpu=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.1f", (n > 0) ? t / hz / n * 1e6 : 0 }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$rps" "$p50" "$p99" "$cpu" "${errors:-}" >>"$RESULTS"
        printf '   round %d  %-8s %10s req/s  p50 %6s us  p99 %6s us  cpu %5s us/req  rss %s %s\n' \
            "$round" "$target" "$rps" "$p50" "$p99" "$cpu" "$rss" "${errors:-}" >&2
        if [[ $target == ficus-1-reloading ]]; then
            stop "$RELOADER_PID"
            echo "   (during the run: $(cat "$TMP/reloads" 2>/dev/null || echo '?'))" >&2
        fi
        if [[ $target != direct ]]; then
            stop "$TARGET_PID"
        fi
    done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$RESULTS" | median; }

BARE_RPS=$(col bare 3)
# paired_ratio TARGET: median (min-max) over rounds of TARGET's req/s over
# the bare proxy's in the same round.
paired_ratio() {
    local ratios
    ratios=$(awk -F'\t' -v t="$1" '
        $1 == "bare" { bare[$2] = $3 }
        $1 == t { mine[$2] = $3 }
        END { for (r in mine) if (bare[r] > 0) print mine[r] / bare[r] }' "$RESULTS")
    if [[ -z $ratios ]]; then
        echo "n/a"
        return
    fi
    printf '%.3fx (%.3f-%.3f)' "$(median <<<"$ratios")" "$(sort -g <<<"$ratios" | head -1)" "$(sort -g <<<"$ratios" | tail -1)"
}
echo
echo "Ficus load test: loopback, 2-byte body, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, medians of $ROUNDS interleaved rounds"
echo "(proxies pinned to CPU 0, wrk + upstream to CPU 1: ${PROXY_PIN[*]:-unpinned})"
printf '%-18s %12s %10s %10s %14s %14s %24s\n' target "req/s" "p50 (us)" "p99 (us)" "CPU us/req" "vs bare proxy" "paired (min-max)"
for target in "${TARGETS[@]}"; do
    rps=$(col "$target" 3)
    ratio=$(awk -v a="$rps" -v b="$BARE_RPS" 'BEGIN { if (b > 0) printf "%.3fx", a / b; else print "n/a" }')
    paired=$(paired_ratio "$target")
    printf '%-18s %12.0f %10.0f %10.0f %14.1f %14s %24s\n' "$target" "$rps" "$(col "$target" 4)" "$(col "$target" 5)" "$(col "$target" 6)" "$ratio" "$paired"
done
echo "targets: ficus-0 >= 0.95x and ficus-1 >= 0.90x the bare proxy's req/s"
echo "paired: the median of each round's req/s divided by the bare proxy's in the same round, with the"
echo "rounds' lowest and highest ratio: a machine whose speed drifts between rounds moves both alike"
if awk -F'\t' '$7 != "" { found = 1 } END { exit !found }' "$RESULTS"; then
    echo "note: some runs reported errors:"
    awk -F'\t' '$7 != "" { print "  " $1 " round " $2 ": " $7 }' "$RESULTS"
fi
