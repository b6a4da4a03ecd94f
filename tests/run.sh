#!/usr/bin/env bash
# The whole test suite: Rust unit, property and integration tests, then real clients
# (botframework-directlinejs under Node, WebChat and the demo page in headless Chromium)
# against the real binary. Installs what it needs itself: the pinned npm packages
# (tests/clients/package-lock.json) and, when missing, Debian's chromium and prometheus
# (promtool), so a fresh machine
# needs nothing else. The README walkthrough needs curl, jq and npm (the ws package). Screenshots land in tests/clients/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
missing=()
[[ -x "$CHROMIUM_BIN" ]] || missing+=(chromium)         # WebChat and the demo page
command -v promtool >/dev/null || missing+=(prometheus)  # promtool check metrics
command -v jq >/dev/null || missing+=(jq)                # the README walkthrough
command -v curl >/dev/null || missing+=(curl)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]} (Debian packages) for the tests"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The metrics lint test skips without promtool on a bare `cargo test`; here it must run.
export REQUIRE_PROMTOOL=1

cargo test --locked
cargo build --locked
# The README's walkthrough, its shell blocks run as written against the no-argument gateway.
bash tests/walkthrough.sh "$PWD/target/debug/directline-gateway"
npm --prefix tests/clients ci --no-audit --no-fund --loglevel=error
GATEWAY_BIN="$PWD/target/debug/directline-gateway" CHROMIUM_BIN="$CHROMIUM_BIN" npm --prefix tests/clients test
