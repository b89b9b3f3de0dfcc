#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e.rs) against a real cluster. docs/e2e.md has the details,
# every setting, and a kind recipe with real Tekton.
#
# Usage:
#   E2E_KUBECONFIG=~/.kube/config hack/e2e.sh [TEST_FILTER ...]   run the suite
#   E2E_KUBECONFIG=~/.kube/config hack/e2e.sh cleanup             remove what interrupted runs left
#
# Two ways to have the add-on:
#   default             it is installed in the cluster (kubectl apply -k deploy/)
#   E2E_LOCAL_ADDON=1   this script runs it from this tree, outside the cluster:
#                         affinity-assistant run --webhook-url https://$E2E_WEBHOOK_HOST:$E2E_WEBHOOK_PORT/mutate/pods
#                       which registers a webhook configuration with that URL and its own CA (removed
#                       again when it stops). The API server must reach HOST:PORT on this machine.
#
# Settings (environment):
#   E2E_KUBECONFIG        kubeconfig of the cluster (required)
#   E2E_CONTEXT           its context (default: the current one)
#   E2E_TEKTON            auto (default) | real | fake: who creates TaskRuns and pods
#   E2E_ARGO              auto (default) | real | fake: who creates Argo's PVCs and pods (real:
#                         argo_retried_... runs the `argo` CLI, which must be on PATH)
#   E2E_TIMEOUT           bound of each wait, seconds or 3m (default 90)
#   E2E_MOVE_TIMEOUT      bound of the cordon test's waits (default 180)
#   E2E_TEST_THREADS      tests run at once (default 1)
#   E2E_KEEP_ON_FAILURE   1: a failed test keeps its namespaces for inspection
#   E2E_ADDON_NAMESPACE   the add-on's namespace (default affinity-assistant)
#   E2E_WEBHOOK_HOST      local mode: the address the API server calls (default: the gateway of
#                         docker network "kind" when there is one, else host.docker.internal)
#   E2E_WEBHOOK_PORT      local mode: webhook port (default 8443)
#   E2E_METRICS_PORT      local mode: /readyz and /metrics port (default 8080)
#   E2E_MOVE_GRACE_SECONDS local mode: the add-on's --move-grace-seconds (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
  # The comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "hack/e2e.sh: $*" >&2
  exit 1
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac

if [ -z "${E2E_KUBECONFIG:-}" ]; then
  usage >&2
  die "E2E_KUBECONFIG is not set: point it at the kubeconfig of the cluster to test"
fi
[ -f "$E2E_KUBECONFIG" ] || die "E2E_KUBECONFIG=$E2E_KUBECONFIG: no such file"
E2E_KUBECONFIG="$(cd "$(dirname "$E2E_KUBECONFIG")" && pwd)/$(basename "$E2E_KUBECONFIG")"
export E2E_KUBECONFIG

if [ "${1:-}" = cleanup ]; then
  # The test refuses to run without E2E_CLEANUP=1: a plain `--ignored` run must never delete
  # the namespaces of a suite running at the same time.
  E2E_CLEANUP=1 exec cargo test --test e2e -- --ignored --exact cleanup_leftovers --nocapture
fi

threads="${E2E_TEST_THREADS:-1}"

run_suite() {
  # prepare_cluster ran already (local mode) or runs here; cleanup_leftovers is for `cleanup`.
  cargo test --test e2e -- --ignored --skip cleanup_leftovers --test-threads="$threads" "$@"
}

if [ "${E2E_LOCAL_ADDON:-0}" != 1 ]; then
  run_suite "$@"
  exit
fi

# --- Local mode: the add-on runs here, the cluster calls its webhook. ---------------------------
command -v curl >/dev/null 2>&1 || die "local mode needs curl (to wait for the add-on's /readyz)"

default_host() {
  # kind's nodes reach this machine at the gateway of their docker network.
  if command -v docker >/dev/null 2>&1; then
    local gw
    gw="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null |
      tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | head -n1 || true)"
    if [ -n "$gw" ]; then
      echo "$gw"
      return
    fi
  fi
  echo host.docker.internal
}

host="${E2E_WEBHOOK_HOST:-$(default_host)}"
port="${E2E_WEBHOOK_PORT:-8443}"
metrics_port="${E2E_METRICS_PORT:-8080}"
namespace="${E2E_ADDON_NAMESPACE:-affinity-assistant}"
export E2E_LOCAL_ADDON=1

# The Tekton CRDs (and the add-on's namespace) first: the add-on watches PipelineRuns from the
# moment it starts.
cargo test --test e2e -- --ignored --exact prepare_cluster --nocapture
cargo build --bin affinity-assistant

log="$(mktemp "${TMPDIR:-/tmp}/affinity-assistant-e2e.XXXXXX")"
echo "== starting the add-on: webhook https://$host:$port/mutate/pods, log $log"
# The binary itself, not `cargo run`, so that $! is the add-on and gets the SIGTERM.
KUBECONFIG="$E2E_KUBECONFIG" "${CARGO_TARGET_DIR:-target}/debug/affinity-assistant" run \
  --webhook-url "https://$host:$port/mutate/pods" \
  --namespace "$namespace" \
  --webhook-port "$port" \
  --metrics-port "$metrics_port" \
  --move-grace-seconds "${E2E_MOVE_GRACE_SECONDS:-10}" \
  >"$log" 2>&1 &
addon=$!

stop_addon() {
  # SIGTERM: a clean exit removes the webhook configuration the add-on registered.
  if kill -0 "$addon" 2>/dev/null; then
    kill -TERM "$addon" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$addon" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$addon" 2>/dev/null; then
      echo "hack/e2e.sh: the add-on did not stop within 30 s; killing it (its webhook configuration may remain)" >&2
      kill -KILL "$addon" 2>/dev/null || true
    fi
  fi
  wait "$addon" 2>/dev/null || true
  echo "== add-on stopped; its log: $log"
}
trap stop_addon EXIT

ready=false
for _ in $(seq 1 120); do
  kill -0 "$addon" 2>/dev/null || {
    tail -n 40 "$log" >&2
    die "the add-on exited before it was ready (log above)"
  }
  if curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then
    ready=true
    break
  fi
  sleep 0.5
done
$ready || {
  tail -n 40 "$log" >&2
  die "the add-on was not ready within 60 s (log above)"
}
echo "== add-on ready"

run_suite "$@"
