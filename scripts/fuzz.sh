#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in a separate build directory and runs each for a
# bounded time, one after the other:
#   server         fcwarm_fuzz_server         HTTP parsing, routing, JSON decoding and the API handlers
#   guest_channel  fcwarm_fuzz_guest_channel  the host side of the guest agent protocol (a hostile agent)
#   agent          fcwarm_fuzz_agent          the guest agent's request decoder and ops (a SystemOps double)
# Usage: scripts/fuzz.sh [seconds-per-target] [target...] (default 30 s, every target; scripts/test.sh runs
# all three). Extra libFuzzer flags: FUZZ_ARGS="-jobs=2". Build dir: FUZZ_BUILD_DIR (default build-fuzz).
# Needs Debian's clang-14 and libclang-rt-14-dev. Each target's working corpus is <build>/corpus-<target>
# (seeded from tests/fuzz/corpus-<target>); crashes go to <build>/artifacts/<target>/ and make the script fail
# after every target ran. Each run starts with a line "#### fuzz target <name>" (scripts/ci_summary.py reads
# the log per target).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then  # 0 would make libFuzzer run forever
  echo "usage: $0 [seconds-per-target] [server|guest_channel|agent ...]" >&2
  exit 2
fi
shift || true
all_targets=(server guest_channel agent)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  case "$t" in
    server | guest_channel | agent) ;;
    *)
      echo "fuzz: unknown target '$t' (one of: ${all_targets[*]})" >&2
      exit 2
      ;;
  esac
done
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
  -DFCWARM_BUILD_DOCS=OFF -DFCWARM_BUILD_AGENT=ON -DFCWARM_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"${FUZZ_BUILD_JOBS:-2}" --target "${targets[@]/#/fcwarm_fuzz_}"

# Per target: the longest input (and the dictionary). Inputs stay far below a socketpair's buffer
# (guest_channel writes each connection's bytes at once).
declare -A max_len=([server]=8192 [guest_channel]=16384 [agent]=16384)
declare -A rss_mb=([server]=4096 [guest_channel]=2048 [agent]=2048)
failed=()
for t in "${targets[@]}"; do
  corpus="$build/corpus-$t"
  artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz/corpus-"$t"/* "$corpus/" 2>/dev/null || true
  echo "#### fuzz target $t ($seconds s)"
  rc=0
  # shellcheck disable=SC2086
  "$build/tests/fuzz/fcwarm_fuzz_$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb="${rss_mb[$t]}" -max_len="${max_len[$t]}" \
    -dict="tests/fuzz/$t.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    ${FUZZ_ARGS:-} "$corpus" || rc=$?
  if ((rc != 0)); then
    echo "fuzz: target $t FAILED (exit $rc); artifacts in $artifacts/"
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
