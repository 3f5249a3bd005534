"""A chunk that cannot be fetched in time is recomputed: a failed fetch never fails a request."""

from __future__ import annotations

import threading

import pytest
import torch

from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore, Segment


class FaultyStore:
    """Wraps a store; injects one kind of fault into get_many/lookup and logs each injection."""

    def __init__(self, inner, fault: str, keys: set[bytes] | None = None) -> None:
        self.inner, self.fault, self.keys = inner, fault, keys
        self.injected: list[str] = []
        self.release = threading.Event()

    def put_many(self, keys, tensors, **kw):
        return self.inner.put_many(keys, tensors, **kw)

    def lookup(self, keys, **kw):
        if self.fault == "lookup-raises":
            self.injected.append("lookup")
            raise ConnectionError("injected: store unreachable")
        return self.inner.lookup(keys, **kw)

    def get_many(self, keys):
        hit = [k for k in keys if self.keys is None or k in self.keys]
        if not hit:
            return self.inner.get_many(keys)
        self.injected.append(f"{self.fault}:{len(hit)}")
        if self.fault == "raises":
            raise TimeoutError("injected: deadline exceeded")
        if self.fault == "hangs":
            self.release.wait(30)
            return self.inner.get_many(keys)
        got = self.inner.get_many(keys)
        if self.fault == "none":
            return [None if k in hit else t for k, t in zip(keys, got, strict=True)]
        if self.fault == "bad-dtype":
            return [t.to(torch.float64) if k in hit else t for k, t in zip(keys, got,
                                                                           strict=True)]
        raise AssertionError(self.fault)


def _engine(model, store, make_scheme, **cfg):
    return CacheEngine(model, None, store, make_scheme(), EngineConfig(kv_dtype="float32",
                                                                       **cfg))


@pytest.fixture
def setup(tiny_llama, token_segments, make_scheme):
    model = tiny_llama()
    prompt = token_segments([70, 90, 50, 12])
    store = InMemoryChunkStore()
    with _engine(model, store, make_scheme) as engine:
        engine.cache_segments(prompt)
        full = engine.prefill(prompt, "full", write_back=False)
    return model, prompt, store, full


@pytest.mark.parametrize("fault", ["raises", "none", "bad-dtype", "hangs", "lookup-raises"])
def test_failed_fetch_recomputes_every_row(setup, make_scheme, fault):
    model, prompt, store, full = setup
    faulty = FaultyStore(store, fault)
    try:
        with _engine(model, faulty, make_scheme, fetch_timeout_s=0.3) as engine:
            out = engine.prefill(prompt, "auto", write_back=False)
    finally:
        faulty.release.set()
    assert faulty.injected
    assert out.hits.content_tokens == 0 and out.hits.exact_tokens == 0
    assert out.hits.recomputed_tokens == out.hits.prompt_tokens
    assert torch.allclose(out.logits, full.logits, atol=1e-4)
    fetch = out.hits.fetch
    counts = {"raises": fetch.failed, "none": fetch.missing, "bad-dtype": fetch.bad,
              "hangs": fetch.timed_out}
    if fault == "lookup-raises":
        assert "ConnectionError" in out.hits.lookup_error
    else:
        assert counts[fault] == fetch.requested > 0


def test_hung_fetch_costs_at_most_the_deadline(setup, make_scheme):
    model, prompt, store, _ = setup
    faulty = FaultyStore(store, "hangs")
    try:
        with _engine(model, faulty, make_scheme, fetch_timeout_s=0.2) as engine:
            result = engine.generate(prompt, max_new_tokens=2)
    finally:
        faulty.release.set()
    assert result.ttft_s < 5.0
    assert result.hits.fetch.timed_out > 0


def test_one_missing_chunk_is_recomputed_like_an_uncached_one(setup, make_scheme):
    """Missing chunk X at fetch time == X never cached: same rows recomputed, same result."""
    model, prompt, store, _ = setup
    with _engine(model, store, make_scheme) as engine:
        key = engine.layout(prompt).content_chunks[1].key
    faulty = FaultyStore(store, "none", keys={key})
    with _engine(model, faulty, make_scheme) as engine:
        out = engine.prefill(prompt, "blend", write_back=False)
    assert out.hits.fetch.missing == 1
    without = InMemoryChunkStore()
    for k in store._chunks:
        if k != key:
            info = store.info(k)
            without.put_many([k], [info.tensor])
    with _engine(model, without, make_scheme) as engine:
        ref = engine.prefill(prompt, "blend", write_back=False)
    assert out.hits.recomputed_tokens == ref.hits.recomputed_tokens
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)


def test_failed_prefix_chunk_falls_back_to_exact_recompute(setup, make_scheme):
    model, prompt, store, full = setup
    with _engine(model, store, make_scheme, write_back="prefix") as engine:
        engine.prefill(prompt, "full")
        assert engine.flush(10)
        first = engine.layout(prompt).prefix_chunks[0].key
    faulty = FaultyStore(store, "raises", keys={first})
    with _engine(model, faulty, make_scheme) as engine:
        out = engine.prefill(prompt, "prefix", write_back=False)
    assert out.hits.exact_tokens == 0  # chunk 0 failed: the whole chain is recomputed
    assert torch.allclose(out.logits, full.logits, atol=1e-4)


@pytest.mark.model
def test_real_model_request_survives_a_store_that_always_fails(
    smollm2, make_scheme, docs, texts
):
    from kvstore_client.models.smollm2 import MODEL_ID

    model, tok = smollm2
    prompt = [Segment.doc(docs[0]), Segment.doc(docs[1]), Segment.query(texts[1])]
    store = InMemoryChunkStore()
    scheme = make_scheme(MODEL_ID, "float16", 64)
    with CacheEngine(model, tok, store, scheme) as engine:
        engine.cache_segments(prompt)
        full = engine.prefill(prompt, "full", write_back=False)
    with CacheEngine(model, tok, FaultyStore(store, "raises"), scheme) as engine:
        result = engine.generate(prompt, max_new_tokens=3)
    assert result.hits.fetch.failed > 0 and result.hits.content_tokens == 0
    assert torch.allclose(result.prefill.logits, full.logits, atol=1e-4)
