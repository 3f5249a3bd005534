#!/usr/bin/env bash
# The test command: set-up, then the default suite (CPU only; slow and gpu tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k keys`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
rm -rf .pytest-tmp
exec python -m pytest --basetemp=.pytest-tmp -p no:cacheprovider "$@"
