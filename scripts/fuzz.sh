#!/usr/bin/env bash
# Fuzzes every decoder for N seconds each (default 60): scripts/fuzz.sh [seconds] [target...]
#
# Installs cargo-fuzz when missing, and runs `cargo fuzz` on the stable compiler with
# RUSTC_BOOTSTRAP=1 (cargo fuzz passes nightly-only -Z flags). The targets live in
# gateway/fuzz/ (their own workspace, so the main build never pulls libFuzzer). Each run starts
# from the checked-in seeds of gateway/fuzz/corpus/<target>/ and writes what it finds to a
# scratch folder (target/fuzz-corpus/<target>/), so the checked-in corpus only changes by hand;
# a crash is saved under gateway/fuzz/artifacts/<target>/ and fails the script. To keep a
# finding as a regression seed, copy the input into gateway/fuzz/corpus/<target>/ once fixed:
# `cargo test -p nh-gateway --test fuzz_corpus` replays every seed on the stable compiler.
#
# The decoders are safe Rust (`forbid(unsafe_code)`), so the sanitizer is off: it would find
# nothing a panic does not, at several times the build and run time. Overflow checks and debug
# assertions stay on (cargo fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(canonical zigbee2mqtt json_map mr60fda1 modbus register_map)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
root="$(pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
cd gateway/fuzz
cargo fuzz build -s none --target-dir "$target_dir"

failed=()
for t in "${targets[@]}"; do
  scratch="$target_dir-corpus/$t"
  mkdir -p "$scratch" "artifacts/$t"
  echo "== $t: ${seconds}s"
  # The first folder receives new inputs; the seeds are only read.
  cargo fuzz run -s none --target-dir "$target_dir" "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | tee "$target_dir-$t.log" |
    grep -E "^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|thread '.*' panicked|Test unit written)" ||
    true
  if grep -qE "Test unit written|panicked|==[0-9]+== ERROR|deadly signal" "$target_dir-$t.log"; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs under gateway/fuzz/artifacts/, logs in $target_dir-<target>.log)"
  exit 1
fi
echo "no crash in ${targets[*]} (${seconds}s each)"
