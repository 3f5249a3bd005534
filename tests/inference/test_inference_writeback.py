"""New chunks go back to the store in the background, in the layout the store contract names."""

from __future__ import annotations

import threading

import torch

from kvstore_client.inference import CacheEngine, EngineConfig, InMemoryChunkStore
from kvstore_client.inference.writeback import ChunkWrite, pack_chunks
from kvstore_kernels.rope import apply_rope_ref, rope_inv_freq


class BlockingStore(InMemoryChunkStore):
    """put_many waits until released (or raises, when ``fail``)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.release = threading.Event()
        self.fail = fail

    def put_many(self, keys, tensors, **kw):
        self.release.wait(30)
        if self.fail:
            raise ConnectionError("injected: put failed")
        return super().put_many(keys, tensors, **kw)


def _engine(model, store, make_scheme, **cfg):
    cfg.setdefault("kv_dtype", "float16")
    return CacheEngine(model, None, store, make_scheme(kv_dtype=cfg["kv_dtype"]),
                       EngineConfig(**cfg))


def test_written_chunks_follow_the_layout_and_are_reused(tiny_llama, token_segments,
                                                          make_scheme):
    model = tiny_llama()
    prompt = token_segments([70, 90, 20])  # 180 tokens: 2 chained chunks, 4 content chunks
    store = InMemoryChunkStore()
    with _engine(model, store, make_scheme) as engine:
        layout = engine.layout(prompt)
        first = engine.generate(prompt, max_new_tokens=3)
        assert engine.flush(10)
        second = engine.prefill(prompt, "auto", write_back=False)
    assert first.mode == "prefix" and first.hits.exact_tokens == 0
    assert len(store) == 2 + 4
    for i, span in enumerate(layout.prefix_chunks):
        info = store.info(span.key)
        assert info.start_pos == 64 * i and info.num_tokens == 64
        assert info.parent_key == (None if i == 0 else layout.prefix_chunks[i - 1].key)
        assert info.tensor.shape == (3, 2, 2, 64, 16) and info.tensor.dtype == torch.float16
    for span in layout.content_chunks:
        info = store.info(span.key)
        assert info.start_pos == 0 and info.tensor.shape == (3, 2, 2, span.num_tokens, 16)
    assert second.hits.exact_tokens == 128
    assert second.hits.content_tokens == 160 - 128  # doc 2's tail, beyond the prefix
    assert second.hits.recomputed_tokens < 180


def test_write_back_never_blocks_the_request(tiny_llama, token_segments, make_scheme):
    model = tiny_llama()
    store = BlockingStore()
    with _engine(model, store, make_scheme) as engine:
        result = engine.generate(token_segments([70, 20]), max_new_tokens=2)
        assert result.ttft_s < 5 and not engine.flush(0.1)  # put still waiting
        store.release.set()
        assert engine.flush(10)
    assert len(store) == 1 + 2 and engine.writer.stats.chunks_written == 3


def test_failed_write_back_is_counted_not_raised(tiny_llama, token_segments, make_scheme):
    model = tiny_llama()
    store = BlockingStore(fail=True)
    store.release.set()
    with _engine(model, store, make_scheme) as engine:
        engine.generate(token_segments([70, 20]), max_new_tokens=2)
        assert engine.flush(10)
    assert engine.writer.stats.chunks_failed == 3 and "ConnectionError" in (
        engine.writer.stats.errors[0])


def test_content_chunks_are_stored_rotated_at_position_zero():
    """A chunk computed at rows [a, b) is stored as if it began at position 0."""
    inv_freq = rope_inv_freq(16, 10000.0)
    raw = torch.randn(1, 2, 40, 16)
    keys = apply_rope_ref(raw, torch.arange(40), inv_freq)
    values = torch.randn(1, 2, 40, 16)
    write = ChunkWrite(b"k" * 16, start=25, num_tokens=15, parent=None, canonical_start=0)
    (chunk,) = pack_chunks([write], [keys], [values], torch.float32, inv_freq, "neox", "torch")
    expected = apply_rope_ref(raw[:, :, 25:], torch.arange(15), inv_freq)
    assert torch.allclose(chunk[0, 0], expected[0], atol=1e-5)
    assert torch.equal(chunk[0, 1], values[0, :, 25:])


def test_cache_segments_at_any_offset_stores_the_same_chunks(tiny_llama, token_segments,
                                                              make_scheme):
    model = tiny_llama()
    prompt = token_segments([100, 5])
    stores = [InMemoryChunkStore(), InMemoryChunkStore()]
    for store, start_pos in zip(stores, (0, 700), strict=True):
        with _engine(model, store, make_scheme, kv_dtype="float32") as engine:
            assert engine.cache_segments(prompt, start_pos=start_pos) == 2
    for key in stores[0]._chunks:
        a, b = stores[0].info(key).tensor, stores[1].info(key).tensor
        assert torch.allclose(a, b, atol=1e-4)
