#!/usr/bin/env bash
# The gateway against nginx doing the closest job and against Direct Line direct (the
# emulator), every scenario three ways in one run (docs/BENCHMARKS.md).
#
#   bash benches/compare.sh           # full: 3 runs of everything, about 35 minutes
#   bash benches/compare.sh quick     # one short run of everything, to check the tooling
#   bash benches/compare.sh profile   # callgrind on the gateway's hot paths
#
# From a clean clone: installs nginx, wrk and hyperfine with apt-get when one is missing
# (valgrind too for `profile`), builds release, raises `ulimit -n` to the hard limit, and
# starts everything on 127.0.0.1 with free ports. Every process it starts is stopped on exit
# (the bench stops its own; this script kills whatever it recorded and left behind).
# Results: stdout, and target/compare/results-<time>.md (profile: target/compare/profile/,
# or target/compare/$PROFILE_OUT/).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-full}
case $mode in
  full) flags=() ;;
  quick) flags=(--quick) ;;
  profile) flags=() ;;
  *) echo "usage: bash benches/compare.sh [full|quick|profile]" >&2; exit 64 ;;
esac

missing=()
for tool in nginx wrk hyperfine; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ $mode == profile ]] && ! command -v valgrind >/dev/null; then missing+=(valgrind); fi
if ((${#missing[@]})); then
  echo "compare.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends nginx wrk hyperfine
  if [[ $mode == profile ]]; then apt-get install -y --no-install-recommends valgrind; fi
fi

# 9,900 idle conversations need about 10,000 client sockets in the bench process.
ulimit -n "$(ulimit -Hn)"

out=target/compare
run=$PWD/$out/run-$$
mkdir -p "$run"
export COMPARE_RUN_DIR=$run COMPARE_PIDFILE=$run/pids
: >"$COMPARE_PIDFILE"

# Only processes this run recorded, and only if they still are what was started.
ours() {
  [[ -n $1 ]] && kill -0 "$1" 2>/dev/null &&
    grep -qaE 'nginx|directline-gateway|strace' "/proc/$1/cmdline" 2>/dev/null
}
cleanup() {
  local pid left=()
  while read -r pid; do
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      left+=("$pid")
    fi
  done <"$COMPARE_PIDFILE"
  if ((${#left[@]})); then
    sleep 2
    for pid in "${left[@]}"; do
      if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git_sha=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || git_sha="$git_sha+uncommitted"
header() {
  echo "# compare.sh $mode, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB ($(free -m | awk '/^Mem:/ {print $2}') MiB), $(uname -sr)"
  echo "- $(rustc -V), $(nginx -v 2>&1), gateway $git_sha"
  echo "- open-file limit $(ulimit -n) (hard $(ulimit -Hn)); load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

if [[ $mode == profile ]]; then
  # PROFILE_GATEWAY_BIN profiles a gateway built elsewhere (an earlier commit, built with the
  # flags below) under this checkout's bench; PROFILE_OUT keeps a run beside another.
  gateway_bin=${PROFILE_GATEWAY_BIN:-}
  if [[ -z $gateway_bin ]]; then
    # Symbols and line tables for callgrind, in a target dir of its own (release stays stripped).
    CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
      cargo build --release --locked --bin directline-gateway --target-dir target/profile
    gateway_bin=$PWD/target/profile/release/directline-gateway
  fi
  cargo bench --locked --bench compare --no-run
  prof=$PWD/$out/${PROFILE_OUT:-profile}
  mkdir -p "$prof"
  rm -f "$prof"/callgrind.out*
  count=${PROFILE_COUNT:-1000}
  { header; echo "- gateway binary: $gateway_bin; COMPARE_POLICY=${COMPARE_POLICY:-0} COMPARE_RECORD=${COMPARE_RECORD:-0}"; } | tee "$prof/README.md"
  COMPARE_GATEWAY_BIN=$gateway_bin \
    COMPARE_GATEWAY_WRAPPER="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$prof/callgrind.out" \
    cargo bench --locked --bench compare -- profile --phase all --count "$count" | tee -a "$prof/README.md"
  for file in "$prof"/callgrind.out.*; do
    [[ $file == *.txt ]] && continue
    callgrind_annotate --inclusive=yes "$file" >"$file.inclusive.txt" 2>/dev/null
    callgrind_annotate "$file" >"$file.self.txt" 2>/dev/null
    echo "$file: $(grep -m1 '^desc: Trigger' "$file" || true); totals: $(grep -m1 '^totals:' "$file")" | tee -a "$prof/README.md"
  done
  exit 0
fi

cargo build --release --locked
cargo bench --locked --bench compare --no-run
cargo bench --locked --bench stream --no-run

results=$PWD/$out/results-$(date +%Y%m%d-%H%M%S)-$mode.md
header | tee "$results"
bench() {
  echo >>"$results"
  echo "\$ cargo bench --bench $*" | tee -a "$results"
  cargo bench --locked --bench "$@" | tee -a "$results"
}
bench compare -- rest "${flags[@]}"
bench compare -- wrk "${flags[@]}"
bench compare -- ws "${flags[@]}"
bench compare -- idle "${flags[@]}"
bench compare -- storm "${flags[@]}"
bench compare -- startup "${flags[@]}"
bench compare -- streamed "${flags[@]}"
if [[ $mode == quick ]]; then
  bench stream -- resume-gap 50 5
else
  for _ in 1 2 3; do bench stream -- resume-gap 100 10; done
fi
echo
echo "results: $results"
