"""`kvstore warmup DIR`: preload the cache with the KV of a directory of documents (RAG corpora).

Each *.txt / *.md file under DIR (recursively, sorted) is read as UTF-8 and split at blank lines
into passages of at most ``--max-doc-tokens`` tokens (0 = whole files), as a retriever's chunker
would. Each passage is prefilled on its own by the model (CacheEngine.cache_segments, positions
from 0) and its KV stored under *content* keys: position-independent, so a worker whose prompt
contains the same passage text as a ``Segment.doc`` reuses it at any position (CacheBlend), and
a prompt that starts with it also reuses it exactly. A passage whose content keys are all in the
store already is skipped, so a second run over the same corpus stores nothing.

The key scheme (model id, KV dtype, chunk size, tenant) must be the workers': the defaults are
those of `kvstore demo` (SmolLM2-135M-Instruct, float16, 256-token chunks).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvstore.cli.client_security import add_security_arguments, security_from_args
from kvstore.cli.model import add_model_dir_argument

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct from --model-dir (`kvstore model fetch`)
PATTERNS = ("*.txt", "*.md")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="directory of *.txt / *.md documents")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH_OR_DEFAULT",
                   help="a GGUF file or a local Hugging Face model directory; 'default' = "
                        "SmolLM2-135M-Instruct from --model-dir (`kvstore model fetch`)")
    add_model_dir_argument(p)
    p.add_argument("--model-id", default=None, help="model id in the key scheme, as the "
                   "workers use it (default: SmolLM2's id, or the model's file/dir name)")
    p.add_argument("--nodes", help="comma-separated host:port (default 127.0.0.1:50051)")
    p.add_argument("--redis-url", help="store into the cluster of this registry")
    p.add_argument("--replication", type=int, choices=(1, 2), default=2,
                   help="with --redis-url or several --nodes")
    p.add_argument("--kv-dtype", default="float16")
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--tenant", default="")
    p.add_argument("--max-doc-tokens", type=int, default=1024,
                   help="split files into passages of at most this many tokens (0 = whole)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_security_arguments(p)  # the same --token/--tls-* as `kvstore admin`


@dataclass
class WarmupReport:
    files: int = 0
    passages: int = 0
    stored: int = 0           # passages prefilled and stored now
    skipped: int = 0          # passages already cached
    tokens: int = 0           # tokens prefilled
    chunks: int = 0           # chunks stored
    failed_chunks: int = 0    # chunks the store refused
    bytes: int = 0            # KV bytes stored
    seconds: float = 0.0


def find_documents(directory: str | Path) -> list[Path]:
    root = Path(directory)
    if not root.is_dir():
        from kvstore.errors import InvalidArgument

        raise InvalidArgument(f"{root} is not a directory")
    return sorted({p for pat in PATTERNS for p in root.rglob(pat) if p.is_file()})


def passages(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """``text`` cut at blank lines into pieces of at most ``max_tokens`` (a paragraph longer
    than that stays whole); 0 keeps the text whole. Pieces keep their text byte for byte."""
    if max_tokens <= 0 or count_tokens(text) <= max_tokens:
        return [text] if text.strip() else []
    out, current = [], ""
    for para in text.split("\n\n"):
        candidate = f"{current}\n\n{para}" if current else para
        if current and count_tokens(candidate) > max_tokens:
            out.append(current)
            candidate = para
        current = candidate
    if current.strip():
        out.append(current)
    return [p for p in out if p.strip()]


def warm_up(engine: Any, store: Any, files: Sequence[Path], max_doc_tokens: int,
            progress: bool = True) -> WarmupReport:
    """Prefill and store every passage of ``files`` not cached yet (see the module doc)."""
    from tqdm import tqdm

    from kvstore_client.inference import Segment

    t0 = time.perf_counter()
    rep = WarmupReport(files=len(files))
    token_bytes = (engine.n_layers * 2 * engine.kv_heads * engine.head_dim
                   * engine.kv_dtype.itemsize)

    def count(text: str) -> int:
        return len(engine.layout([Segment.doc(text)]).token_ids)

    texts = [p for f in files for p in passages(f.read_text("utf-8"), count, max_doc_tokens)]
    rep.passages = len(texts)
    bar = tqdm(texts, unit="doc", disable=not progress, desc="warm-up")
    for text in bar:
        seg = Segment.doc(text)
        chunks = engine.layout([seg]).content_chunks
        if all(store.lookup([c.key for c in chunks]).found):
            rep.skipped += 1
            continue
        stored = engine.cache_segments([seg])
        n_tokens = sum(c.num_tokens for c in chunks)
        rep.stored += 1
        rep.tokens += n_tokens
        rep.chunks += stored
        rep.failed_chunks += len(chunks) - stored
        rep.bytes += token_bytes * n_tokens * stored // max(1, len(chunks))
        bar.set_postfix(tokens=rep.tokens, chunks=rep.chunks, refresh=False)
    rep.seconds = round(time.perf_counter() - t0, 3)
    return rep


def load_model(spec: str, model_dir: str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, default model id) from 'default', a GGUF file or a model directory."""
    from kvstore_client.models import smollm2

    if spec == DEFAULT_MODEL:
        model, tokenizer = smollm2.load(model_dir=model_dir)
        return model, tokenizer, smollm2.MODEL_ID
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    if path.is_file():
        kw: dict[str, Any] = {"gguf_file": path.name}
        where = str(path.parent)
    elif path.is_dir():
        kw, where = {}, str(path)
    else:
        from kvstore.errors import InvalidArgument

        raise InvalidArgument(f"--model {spec!r}: no such file or directory")
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True,
                                                 dtype=torch.float32, **kw)
    return model.eval(), tokenizer, path.stem if path.is_file() else path.name


def open_store(args: argparse.Namespace, scheme: Any) -> Any:
    """A sync client: one node, a static list of nodes, or the cluster of a registry; token and
    TLS from --token/--tls-* over the KVSTORE_* environment."""
    security = security_from_args(args, "kvstore warmup")
    if args.redis_url:
        from kvstore.cluster.spec import ClusterSpec

        return ClusterSpec(scheme, redis_url=args.redis_url,
                           replication=args.replication).connect(security=security)
    addresses = [a.strip() for a in (args.nodes or "127.0.0.1:50051").split(",") if a.strip()]
    if len(addresses) == 1:
        from kvstore_client import KVStoreClient

        return KVStoreClient(addresses[0], scheme, security)
    from kvstore_client.cluster import ClusterClient
    from kvstore_client.membership import Member

    return ClusterClient(scheme, [Member(a, a) for a in addresses],
                         replication=args.replication, security=security)


def run(args: argparse.Namespace) -> int:
    from kvstore.keys import KeyScheme
    from kvstore_client.inference import CacheEngine, EngineConfig

    files = find_documents(args.directory)
    t0 = time.perf_counter()
    model, tokenizer, default_id = load_model(args.model, args.model_dir)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s; {len(files)} documents "
          f"in {args.directory}", flush=True)
    scheme = KeyScheme(args.model_id or default_id, args.kv_dtype,
                       chunk_tokens=args.chunk_tokens, tenant=args.tenant)
    with open_store(args, scheme) as store, \
            CacheEngine(model, tokenizer, store, scheme,
                        EngineConfig(kv_dtype=args.kv_dtype)) as engine:
        rep = warm_up(engine, store, files, args.max_doc_tokens, not args.no_progress)
    print(f"warm-up: {rep.files} files, {rep.passages} passages ({rep.stored} stored, "
          f"{rep.skipped} already cached), {rep.tokens} tokens, {rep.chunks} chunks, "
          f"{rep.bytes / 2**20:.1f} MiB, {rep.seconds:.1f} s"
          + (f"; {rep.failed_chunks} chunks refused by the store" if rep.failed_chunks else ""))
    print(json.dumps({"warmup": asdict(rep), "model_id": scheme.model_id,
                      "namespace_id": scheme.namespace_id()}))
    return 1 if rep.failed_chunks else 0
