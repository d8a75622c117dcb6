#!/usr/bin/env bash
# Builds filter.c into a Ficus filter component (see sdk/guides/c.md):
#
#   1. wit-bindgen c    generates the bindings of wit/ (world `plugin`)
#   2. clang-14         compiles them with filter.c for wasm32-wasi (wasi-libc)
#   3. wasm-tools       wraps the core module into a component (with the
#                       preview1 adapter, used only if the code calls WASI)
#
# Usage: ./build.sh [OUT]     (default build/block-header.wasm)
# Tools: scripts/polyglot-tools c (wit-bindgen; it names the Debian packages for
# clang and wasi-libc) and scripts/polyglot-tools python (wasm-tools), or set
# WIT_BINDGEN, CC, WASM_TOOLS, ADAPTER.
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="${FICUS_TOOLS_DIR:-$(cd ../../.. && pwd)/target/polyglot}"
WIT_BINDGEN="${WIT_BINDGEN:-$TOOLS/cargo/bin/wit-bindgen}"
WASM_TOOLS="${WASM_TOOLS:-$TOOLS/venv/bin/wasm-tools}"
ADAPTER="${ADAPTER:-$TOOLS/node/node_modules/@bytecodealliance/jco/lib/wasi_snapshot_preview1.reactor.wasm}"
CC="${CC:-clang-14}"
OUT="${1:-build/block-header.wasm}"

mkdir -p build/gen "$(dirname "$OUT")"
"$WIT_BINDGEN" c wit --world plugin --out-dir build/gen >/dev/null
"$CC" --target=wasm32-wasi -mexec-model=reactor -Os -Wall -Werror -Ibuild/gen \
    -o build/core.wasm filter.c build/gen/plugin.c build/gen/plugin_component_type.o
adapt=()
[ -f "$ADAPTER" ] && adapt=(--adapt "wasi_snapshot_preview1=$ADAPTER")
"$WASM_TOOLS" component new build/core.wasm "${adapt[@]}" -o "$OUT"
echo "built $OUT ($(wc -c <"$OUT") bytes)"
