"""`kvstore warmup`: documents prefilled once, stored under content keys, skipped when cached."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from kvstore.keys import KeyScheme

CHUNK = 64


class CharTokenizer:
    """One token per character (ids 1..96): enough for layout, keys and a tiny model."""

    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [ord(c) % 96 + 1 for c in text]}


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("Alpha paragraph one. " * 5 + "\n\n" + "Alpha two. " * 8)
    (d / "b.md").write_text("# Bravo\n\n" + "bravo text " * 6)
    (d / "sub" / "c.txt").write_text("Charlie " * 10)
    (d / "ignored.rst").write_text("not a document")
    return d


def _engine(store, scheme):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kvstore_client.inference import CacheEngine

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    return CacheEngine(model, CharTokenizer(), store, scheme)


def test_warm_up_stores_each_passage_once(start_node, connect, corpus):
    from kvstore.cli.warmup import find_documents, passages, warm_up
    from kvstore_client.inference import Segment

    node = start_node()
    scheme = KeyScheme("tiny", "float16", chunk_tokens=CHUNK)
    store = connect(node.address, scheme)
    files = find_documents(corpus)
    assert [f.name for f in files] == ["a.txt", "b.md", "c.txt"]
    texts = [p for f in files for p in passages(f.read_text(), len, 100)]
    assert len(texts) == 4  # a.txt (193 chars) is cut at its blank line; the rest fit
    assert "".join(texts[:2]) == files[0].read_text().replace("\n\n", "")
    with _engine(store, scheme) as engine:
        rep = warm_up(engine, store, files, max_doc_tokens=100, progress=False)
        tokens = sum(len(t) for t in texts)
        chunks = sum(math.ceil(len(t) / CHUNK) for t in texts)
        token_bytes = 2 * 2 * 2 * 16 * 2  # layers x k/v x kv heads x head dim x fp16
        assert (rep.files, rep.passages, rep.stored, rep.skipped) == (3, 4, 4, 0)
        assert (rep.tokens, rep.chunks, rep.failed_chunks) == (tokens, chunks, 0)
        assert rep.bytes == tokens * token_bytes
        stats = store.stats()
        assert (stats.puts, stats.bytes_in) == (chunks, rep.bytes)
        for t in texts:  # content keys a worker's Segment.doc(t) looks up
            keys = [c.key for c in engine.layout([Segment.doc(t)]).content_chunks]
            assert store.lookup(keys).found == [True] * len(keys)
        again = warm_up(engine, store, files, max_doc_tokens=100, progress=False)
        assert (again.stored, again.skipped, again.chunks) == (0, 4, 0)
        assert store.stats().puts == chunks


@pytest.mark.slow
@pytest.mark.model
def test_warmup_command_with_smollm2(start_node, corpus, tmp_path):
    """The real command in a subprocess: SmolLM2 from .models/, progress bar on stderr."""
    node = start_node()
    cmd = [sys.executable, "-m", "kvstore.cli.main", "warmup", str(corpus), "--nodes",
           node.address]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    rep = json.loads(first.stdout.strip().splitlines()[-1])["warmup"]
    assert (rep["files"], rep["stored"], rep["skipped"]) == (3, 3, 0)
    assert rep["chunks"] == 3 and rep["bytes"] == rep["tokens"] * 30 * 2 * 3 * 64 * 2
    assert "warm-up:" in first.stdout and "doc" in first.stderr  # summary and tqdm bar
    assert node.core.stats.bytes_in == rep["bytes"]
    second = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rep2 = json.loads(second.stdout.strip().splitlines()[-1])["warmup"]
    assert (rep2["stored"], rep2["skipped"], rep2["chunks"]) == (0, 3, 0)
