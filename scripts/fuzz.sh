#!/usr/bin/env bash
# Builds the server's libFuzzer target with clang (ASan + UBSan) in a separate build directory and runs it for
# a bounded time. Usage: scripts/fuzz.sh [seconds] (default 60). Extra libFuzzer flags: FUZZ_ARGS="-jobs=2".
# Needs Debian's clang-14 and libclang-rt-14-dev. The working corpus lives in build-fuzz/corpus (seeded from
# tests/fuzz/corpus); crashes are written to build-fuzz/artifacts/ and make the script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [seconds]" >&2
  exit 2
fi
CLANG_CXX="${CLANG_CXX:-clang++-14}"
CLANG_CC="${CLANG_CC:-clang-14}"
if ! command -v "$CLANG_CXX" >/dev/null; then
  echo "fuzz: $CLANG_CXX not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 1
fi
build="${FUZZ_BUILD_DIR:-build-fuzz}"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -gline-tables-only"
cmake -S . -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CLANG_CC" -DCMAKE_CXX_COMPILER="$CLANG_CXX" \
  -DCMAKE_C_FLAGS="$san -fsanitize=fuzzer-no-link" -DCMAKE_CXX_FLAGS="$san -fsanitize=fuzzer-no-link" \
  -DCMAKE_EXE_LINKER_FLAGS="$san" \
  -DFCWARM_BUILD_FUZZ=ON -DFCWARM_BUILD_SERVER=ON -DFCWARM_BUILD_TESTS=OFF -DFCWARM_BUILD_PYTHON=OFF \
  -DFCWARM_BUILD_DOCS=OFF -DFCWARM_BUILD_AGENT=OFF -DFCWARM_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"${FUZZ_BUILD_JOBS:-2}" --target fcwarm_fuzz_server
mkdir -p "$build/corpus" "$build/artifacts"
cp -n tests/fuzz/corpus/* "$build/corpus/" 2>/dev/null || true
# shellcheck disable=SC2086
"$build/tests/fuzz/fcwarm_fuzz_server" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=8192 \
  -dict=tests/fuzz/server.dict -artifact_prefix="$build/artifacts/" -print_final_stats=1 \
  ${FUZZ_ARGS:-} "$build/corpus"
