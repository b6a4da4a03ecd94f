#!/usr/bin/env bash
# Bounded fuzzing run: builds every cargo-fuzz target, replays fuzz/regressions/, then fuzzes
# each target for SECONDS from a fresh corpus seeded with fuzz/seeds/<target>/, and prints
# executions and coverage per target. Exits non-zero if anything crashed.
#
#   bash fuzz/run.sh SECONDS [TARGET...]
#
# Environment:
#   FUZZ_SANITIZER  none (default: ~4x the executions) or address (ASan, slower, more RAM)
#   FUZZ_JOBS       targets fuzzed at the same time (default 1; each uses one core)
#   FUZZ_LOCKED     1 (default): require fuzz/Cargo.lock to be up to date; 0: let cargo update it
#
# Only stable Rust is assumed: cargo-fuzz needs nightly flags (-Zsanitizer, sancov passes),
# which RUSTC_BOOTSTRAP=1 unlocks on a stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${1:?usage: bash fuzz/run.sh SECONDS [TARGET...]}
shift
if ! [[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]]; then
  echo "SECONDS must be a positive integer, not '$SECONDS_PER_TARGET'" >&2
  exit 2
fi
SANITIZER=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1

ALL_TARGETS=(endpoint_parse stream_url_rewrite tracker_observe token_open client_activity scrub_stream jwt_front redact upload_activity ws_frames)
if (($#)); then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

now() { date +%s; }

# The panic message (and assertion sides) from a libFuzzer log, indented.
crash_summary() {
  awk '/panicked at/ {print; getline; print; next}
       /^  left:|^ right:|ERROR: libFuzzer|Test unit written/ {print}' "$1" |
    head -8 | cut -c1-300 | sed "s/^/$2/"
}
started=$(now)

echo "== cargo-fuzz"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  t0=$(now)
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
  echo "cargo-fuzz $CARGO_FUZZ_VERSION installed in $(($(now) - t0)) s"
fi
cargo fuzz --version
rustc --version

echo "== lock file"
if [[ ${FUZZ_LOCKED:-1} == 1 ]]; then
  if ! cargo fetch --locked --manifest-path fuzz/Cargo.toml; then
    cat >&2 <<'EOF'
fuzz/Cargo.lock is out of date (the main crate's dependencies changed). Refresh it from the
main lock file, so the fuzz build uses the same versions, and commit it:
  cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null
EOF
    exit 1
  fi
fi

echo "== build (sanitizer: $SANITIZER)"
t0=$(now)
build=(cargo fuzz build --release --debug-assertions --sanitizer "$SANITIZER")
if (($#)); then
  for target in "${TARGETS[@]}"; do "${build[@]}" "$target"; done
else
  "${build[@]}"
fi
build_seconds=$(($(now) - t0))
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release
echo "built in ${build_seconds} s"

failed=()
mkdir -p fuzz/artifacts

echo "== regressions"
for target in "${TARGETS[@]}"; do
  dir=fuzz/regressions/$target
  [[ -d $dir ]] || continue
  mapfile -t inputs < <(find "$dir" -type f | sort)
  ((${#inputs[@]})) || continue
  for input in "${inputs[@]}"; do
    if "$bin_dir/$target" -rss_limit_mb=2048 "$input" >"fuzz/artifacts/regression.log" 2>&1; then
      echo "ok    $target $input"
    else
      echo "CRASH $target $input"
      crash_summary fuzz/artifacts/regression.log "      "
      failed+=("$target (regression $input)")
    fi
  done
done

run_target() {
  local target=$1 corpus=fuzz/corpus/$1 artifacts=fuzz/artifacts/$1/ log=fuzz/artifacts/$1.log
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp fuzz/seeds/"$target"/* "$corpus"/
  local rc=0
  timeout $((SECONDS_PER_TARGET + 300)) "$bin_dir/$target" "$corpus" \
    -max_total_time="$SECONDS_PER_TARGET" \
    -print_final_stats=1 \
    -rss_limit_mb=2048 \
    -timeout=10 \
    -artifact_prefix="$artifacts" \
    >"$log" 2>&1 || rc=$?
  echo "$rc" >"fuzz/artifacts/$target.rc"
}

echo "== fuzz (${SECONDS_PER_TARGET} s per target, $JOBS at a time)"
running=0
for target in "${TARGETS[@]}"; do
  echo "-- $target"
  run_target "$target" &
  running=$((running + 1))
  if ((running >= JOBS)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

printf '\n%-20s %8s %12s %9s %7s %8s %8s  %s\n' target seconds executions exec/s cov ft corpus result
for target in "${TARGETS[@]}"; do
  log=fuzz/artifacts/$target.log
  rc=$(cat "fuzz/artifacts/$target.rc" 2>/dev/null || echo 1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # The last status line: `#N DONE cov: X ft: Y corp: Z/...` (or the last pulse before a crash).
  status=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
  if [[ $rc == 0 ]]; then
    result=ok
  else
    result="CRASH (exit $rc, see $log)"
    failed+=("$target")
  fi
  printf '%-20s %8s %12s %9s %7s %8s %8s  %s\n' "$target" "$SECONDS_PER_TARGET" \
    "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
  if [[ $rc != 0 ]]; then
    crash_summary "$log" "    "
  fi
done
echo "total $(($(now) - started)) s (build ${build_seconds} s)"

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  echo "A crash input is in fuzz/artifacts/<target>/; once understood, copy it to" >&2
  echo "fuzz/regressions/<target>/ so every run replays it." >&2
  exit 1
fi
