"""ReservedLayer / reserved_cache: appends in place, falls back to torch.cat, same logits."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from kvstore_client.inference import hf_cache
from kvstore_client.inference.kvcache import ReservedLayer, reserved_cache


def _buffers(layers: int, rows: int, cap: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn((layers, 2, 1, 2, cap, 8), generator=g)
    return kv, [(kv[i, 0], kv[i, 1]) for i in range(layers)]


def test_append_writes_into_the_buffer_without_copying_the_past():
    kv, layers = _buffers(1, 5, 8)
    layer = ReservedLayer(*layers[0], length=5)
    past_ptr = layer.keys.data_ptr()
    new_k, new_v = torch.ones(1, 2, 2, 8), torch.full((1, 2, 2, 8), 2.0)
    keys, values = layer.update(new_k, new_v)
    assert keys.shape[-2] == 7 and keys.data_ptr() == past_ptr  # a view, not a new tensor
    assert torch.equal(kv[0, 0, :, :, 5:7], new_k) and torch.equal(kv[0, 1, :, :, 5:7], new_v)


def test_overflow_falls_back_to_cat_and_keeps_every_row():
    kv, layers = _buffers(1, 5, 6)
    layer = ReservedLayer(*layers[0], length=5)
    before = layer.keys.clone()
    keys, _ = layer.update(torch.ones(1, 2, 3, 8), torch.ones(1, 2, 3, 8))  # 5 + 3 > 6
    assert keys.shape[-2] == 8 and torch.equal(keys[..., :5, :], before)
    assert torch.equal(keys[..., 5:, :], torch.ones(1, 2, 3, 8))
    keys, _ = layer.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))  # still correct
    assert keys.shape[-2] == 9 and torch.equal(keys[..., :5, :], before)


def test_replaced_tensors_are_not_overwritten_through_the_stale_buffer():
    kv, layers = _buffers(1, 4, 8)
    layer = ReservedLayer(*layers[0], length=4)
    layer.batch_repeat_interleave(2)  # replaces keys/values with new [2, ...] tensors
    keys, _ = layer.update(torch.ones(2, 2, 1, 8), torch.ones(2, 2, 1, 8))
    assert keys.shape == (2, 2, 5, 8)
    assert torch.equal(keys[0, :, :4], kv[0, 0, 0, :, :4])  # the old rows, untouched


def test_model_logits_match_a_plain_dynamic_cache(tiny_llama):
    model = tiny_llama()
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator()
                        .manual_seed(1))
    with torch.no_grad():
        past = hf_cache.cache_of(model, model(input_ids=ids[:, :30], use_cache=True))
        plain = DynamicCache(ddp_cache_data=[(la.keys.clone(), la.values.clone())
                                             for la in past.layers], config=model.config)
        cap = 30 + 16
        bufs = []
        for la in past.layers:
            k = torch.zeros(1, la.keys.shape[1], cap, la.keys.shape[-1])
            v = torch.zeros_like(k)
            k[..., :30, :], v[..., :30, :] = la.keys, la.values
            bufs.append((k, v))
        reserved = reserved_cache(model.config, bufs, 30)
        assert all(isinstance(la, ReservedLayer) for la in reserved.layers)
        want = hf_cache.forward(model, plain, input_ids=ids[:, 30:], use_cache=True).logits
        got = hf_cache.forward(model, reserved, input_ids=ids[:, 30:], use_cache=True).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert reserved.get_seq_length() == 40
    assert torch.equal(bufs[0][0][..., 30:40, :], reserved.layers[0].keys[..., 30:, :])
