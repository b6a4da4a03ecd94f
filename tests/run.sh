#!/usr/bin/env bash
# The whole test suite: Rust unit, property and integration tests, then real clients
# (botframework-directlinejs under Node) against the real binary. Installs the pinned npm
# packages itself (tests/clients/package-lock.json), so a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
cargo build --locked
npm --prefix tests/clients ci --no-audit --no-fund --loglevel=error
GATEWAY_BIN="$PWD/target/debug/directline-gateway" npm --prefix tests/clients test
