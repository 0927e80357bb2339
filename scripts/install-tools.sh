#!/usr/bin/env bash
# Tools the tests run for real, beside the Python project: Prometheus (server + promtool) and
# systemd-analyze from Debian, and the deployment checkers from PyPI (into the project venv).
# Idempotent: only a few checks when everything is present.
#   scripts/install-tools.sh [VENV]        (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}

# Pinned so every machine validates against the same engines and schemas.
PY_TOOLS=(
  "helm-python-sdk==0.2.2"                       # Helm's own Go SDK (v4.2.3) as a library: render, lint, values schema
  "kubernetes-validate==1.37.0"                  # Kubernetes OpenAPI schemas (1.2x–1.37), strict mode
  "cloudcoil-models-prometheus-operator==0.80.1.0"  # ServiceMonitor / PrometheusRule models from the operator's CRDs
)

APT=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || APT+=(prometheus)
command -v systemd-analyze >/dev/null || APT+=(systemd)
if [ ${#APT[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  # The package list may be missing or old on a fresh machine.
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT[@]}" >/dev/null
  # The package starts a system Prometheus on :9090; tests start their own on free ports.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# Reinstall only when a pinned version is missing.
if ! "$VENV/bin/python" - "${PY_TOOLS[@]}" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
sys.exit(any(md.version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
then
  "$VENV/bin/pip" install --quiet "${PY_TOOLS[@]}"
fi

promtool --version 2>&1 | head -1
