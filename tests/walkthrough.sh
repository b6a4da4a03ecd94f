#!/usr/bin/env bash
# Runs the README's walkthrough as written, so the README and the gateway cannot drift: the
# sh blocks between the "walkthrough" markers of README.md, in order, in one bash, against
# the no-argument gateway (the README's `cargo run --release`, here the debug binary). The
# only change is the port: the gateway listens on free ports, not on 8080 and 9464.
#
#   bash tests/walkthrough.sh [path/to/directline-gateway]   (from tests/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/directline-gateway}
WORK=$(mktemp -d /tmp/dlgw-walkthrough.XXXXXX)
GATEWAY_PID=""
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill -TERM "$GATEWAY_PID" 2>/dev/null; kill -TERM "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The blocks, as the reader sees them.
python3 - README.md > "$WORK/walkthrough.sh" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
start = text.index("<!-- walkthrough:")
end = text.index("<!-- walkthrough end -->")
blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.S | re.M)
if len(blocks) < 2:
    sys.exit("README.md: the walkthrough section lost its sh blocks")
print("\n".join(blocks))
PY
grep -q 'ws@8' "$WORK/walkthrough.sh" || { echo "FAIL: the walkthrough no longer ends with the WebSocket stream" >&2; exit 1; }

PORT=$(free_port); ADMIN=$(free_port)
while [ "$ADMIN" = "$PORT" ]; do ADMIN=$(free_port); done
sed -i -e "s/127\.0\.0\.1:8080/127.0.0.1:$PORT/g" -e "s/127\.0\.0\.1:9464/127.0.0.1:$ADMIN/g" "$WORK/walkthrough.sh"

# The no-argument run, as `cargo run --release` starts it (no secret, no token key, no file).
: > "$WORK/gateway.log"
env -u DIRECTLINE_SECRET -u DIRECTLINE_GATEWAY_TOKEN_KEY \
  "$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" > "$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
  grep -q 'metrics: ' "$WORK/gateway.log" && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$WORK/gateway.log"; echo "FAIL: the gateway exited" >&2; exit 1; }
  sleep 0.1
done

# Its own scratch directory ("cd $(mktemp -d)" in the first block), bounded in time.
if ! (cd "$WORK" && timeout 120 bash -euo pipefail "$WORK/walkthrough.sh") > "$WORK/out.txt" 2>&1; then
  cat "$WORK/out.txt"; cat "$WORK/gateway.log"
  echo "FAIL: the README walkthrough did not run to its end" >&2; exit 1
fi
# What the README says the reader sees.
for expected in '"hello"' '"echo: hello"' 'over the stream' 'echo: over the stream'; do
  grep -qxF "$expected" "$WORK/out.txt" || { cat "$WORK/out.txt"; echo "FAIL: no line $expected in the walkthrough's output" >&2; exit 1; }
done
if grep -q 'WARN' "$WORK/gateway.log"; then
  cat "$WORK/gateway.log"; echo "FAIL: the first run logged a warning" >&2; exit 1
fi
echo "README walkthrough: every step ran as written and printed what the README shows"
echo "walkthrough: 1 passed, 0 failed"
