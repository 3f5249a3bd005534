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
    """The real command in a subprocess: SmolLM2 from the model dir, progress bar on stderr."""
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


# ---- token and TLS: the same flags as `kvstore admin`, defaults from KVSTORE_* ---------------
TOKEN = "tok-warmup-0123456789"


@pytest.fixture
def secured(tmp_path, start_node):
    """Two nodes with TLS (a self-signed certificate, its own CA) and auth on: one token,
    tenant acme, role user. Returns (nodes, ca path)."""
    from kvstore.server.auth import token_hash

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "node.key", "-out",
                    "node.pem", "-days", "1", "-subj", "/CN=node", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=30)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"tokens": [{"sha256": token_hash(TOKEN), "tenant": "acme",
                                              "role": "user", "name": "warmup"}]}))
    kw = dict(auth_tokens_file=str(tokens), tls_cert=str(tmp_path / "node.pem"),
              tls_key=str(tmp_path / "node.key"))
    return [start_node(**kw), start_node(**kw)], str(tmp_path / "node.pem")


def _warmup_args(*argv: str):
    from kvstore.cli.main import build_parser

    return build_parser().parse_args(["warmup", "unused-dir", *argv])


@pytest.mark.parametrize("n_nodes", [1, 2])  # KVStoreClient, ClusterClient
def test_warmup_store_uses_token_and_tls_flags(secured, corpus, monkeypatch, n_nodes):
    from kvstore.cli.warmup import open_store, warm_up
    from kvstore.errors import Unauthenticated

    nodes, ca = secured
    for var in ("KVSTORE_TOKEN", "KVSTORE_TLS_CA", "KVSTORE_TLS_CERT", "KVSTORE_TLS_KEY",
                "KVSTORE_TLS_SERVER_NAME"):
        monkeypatch.delenv(var, raising=False)
    addresses = ",".join(n.address for n in nodes[:n_nodes])
    scheme = KeyScheme("tiny", "float16", chunk_tokens=CHUNK, tenant="acme")
    args = _warmup_args("--nodes", addresses, "--tenant", "acme", "--token", TOKEN,
                        "--tls-ca", ca, "--replication", "1")
    with open_store(args, scheme) as store, _engine(store, scheme) as engine:
        rep = warm_up(engine, store, [corpus / "b.md"], max_doc_tokens=0, progress=False)
        assert (rep.stored, rep.failed_chunks) == (1, 0) and rep.chunks >= 1
    assert sum(n.core.stats.puts for n in nodes[:n_nodes]) == rep.chunks
    # no token: the node refuses (plaintext would not even connect)
    with pytest.raises(Unauthenticated):
        store = open_store(_warmup_args("--nodes", addresses, "--tls-ca", ca,
                                        "--replication", "1"), scheme)
        with store:
            store.lookup([b"k" * 16])


def test_warmup_security_defaults_from_env_and_flags_win(secured, monkeypatch):
    from kvstore.cli.warmup import open_store

    nodes, ca = secured
    monkeypatch.setenv("KVSTORE_TOKEN", TOKEN)
    monkeypatch.setenv("KVSTORE_TLS_CA", ca)
    scheme = KeyScheme("tiny", "float16", chunk_tokens=CHUNK, tenant="acme")
    with open_store(_warmup_args("--nodes", nodes[0].address), scheme) as store:
        assert store.put(b"e" * 16, b"\1" * 64) and store.lookup([b"e" * 16]).found == [True]
    from kvstore.errors import Unauthenticated

    with pytest.raises(Unauthenticated):  # a wrong --token overrides the right KVSTORE_TOKEN
        with open_store(_warmup_args("--nodes", nodes[0].address, "--token", "nope"),
                        scheme) as store:
            store.lookup([b"e" * 16])


def test_warmup_and_admin_share_the_security_flags():
    from kvstore.cli.main import build_parser
    from kvstore.errors import ConfigError

    p = build_parser()
    admin = p.parse_args(["admin", "stats", "--token", "t", "--tls-ca", "ca", "--tls-cert", "c",
                          "--tls-key", "k"])
    warm = p.parse_args(["warmup", "d", "--token", "t", "--tls-ca", "ca", "--tls-cert", "c",
                         "--tls-key", "k"])
    fields = ("token", "tls_ca", "tls_cert", "tls_key")
    assert [getattr(admin, f) for f in fields] == [getattr(warm, f) for f in fields] \
        == ["t", "ca", "c", "k"]
    from kvstore.cli.warmup import open_store

    with pytest.raises(ConfigError, match="kvstore warmup: tls_cert and tls_key go together"):
        open_store(p.parse_args(["warmup", "d", "--tls-ca", "ca", "--tls-cert", "c"]), None)
