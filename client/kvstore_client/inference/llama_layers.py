"""The decoder's layer loop over Hugging Face Llama modules, row subsets included.

CacheBlend needs what HF's forward does not offer: compute Q/K/V for a subset S of the prompt's
rows only, write their K/V into a buffer that already holds the other rows' (loaded) K/V, and
attend queries S over all N keys under an exact causal mask (a query at position p sees keys at
positions <= p). This module is that loop's building blocks, calling the model's own modules
(norms, projections, MLP, rotary embedding) so the arithmetic is HF's: with S = all rows it
reproduces HF's prefill (tests check ~1e-4 in fp32).

``blend_unsupported_reason`` is the one place that decides whether re-rotating stored keys is known
to be right for a model: Llama architecture, default RoPE (no scaling), full rotary dims, NeoX
pairing (HF's rotate_half). Anything else is refused with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

BLEND_MODEL_TYPES = ("llama",)
PAIRING = "neox"  # HF Llama's rotate_half pairs dim i with i + D/2


def kv_geometry(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head_dim) of a decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def blend_unsupported_reason(model: Any) -> str | None:
    """Why blending (key re-rotation) is not known to be right for ``model``; None if it is."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in BLEND_MODEL_TYPES:
        return (f"model_type {model_type!r} is not one of {BLEND_MODEL_TYPES}: its RoPE pairing "
                "and layer structure are not verified for blending")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)
    if isinstance(legacy, dict):
        rope = {**legacy, **rope}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        return (f"rope_type {rope_type!r} (RoPE scaling) is not supported for blending: only "
                "default RoPE is verified")
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    if partial not in (None, 1, 1.0):
        return f"partial_rotary_factor={partial} is not supported for blending (needs 1.0)"
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq") or not hasattr(inner, "layers"):
        return "the model has no model.rotary_emb.inv_freq / model.layers (not a HF Llama layout)"
    if getattr(rotary, "attention_scaling", 1.0) != 1.0:
        return "the rotary embedding scales cos/sin (attention_scaling != 1)"
    _, _, head_dim = kv_geometry(config)
    if 2 * rotary.inv_freq.numel() != head_dim:
        return f"rotary dims {2 * rotary.inv_freq.numel()} != head_dim {head_dim}"
    return None


class LlamaLayers:
    """Per-layer operations on a HF LlamaForCausalLM, for any subset of a prompt's rows.

    Shapes: hidden ``h`` is ``[1, R, hidden]`` for R rows; q ``[1, Hq, R, D]``; k, v and the
    full K/V buffers ``[1, Hkv, N, D]``; ``rows`` are int64 positions (row i of the prompt is at
    position i).
    """

    def __init__(self, model: Any) -> None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self._apply_rope = apply_rotary_pos_emb
        self.model = model
        self.inner = model.model
        self.layers = self.inner.layers
        config = model.config
        self.n_layers, self.kv_heads, self.head_dim = kv_geometry(config)
        self.n_heads = config.num_attention_heads
        self.groups = self.n_heads // self.kv_heads
        first = next(model.parameters())
        self.dtype = first.dtype
        self.device = first.device

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.inner.rotary_emb.inv_freq.to(device=self.device, dtype=torch.float32)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.inner.embed_tokens(token_ids.to(self.device)[None])

    def rope(self, rows: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.rotary_emb(like, position_ids=rows[None])

    def qkv(
        self, layer: int, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        block = self.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(h)
        rows = x.shape[1]
        q = attn.q_proj(x).view(1, rows, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, rows, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(1, rows, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = self._apply_rope(q, k, cos, sin)
        return q, k, v

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        rows: torch.Tensor, max_blocks: int = 8, min_block_rows: int = 64,
    ) -> torch.Tensor:
        """Queries at positions ``rows`` (ascending) over the keys at positions <= their own.

        Queries go in up to ``max_blocks`` blocks, each reading only the keys up to its last
        row: the masked-out work shrinks from half of S x N to about 1/(2 * blocks) of it.
        """
        scaling = self.layers[layer].self_attn.scaling
        block_rows = max(min_block_rows, -(-rows.numel() // max_blocks))
        starts = list(range(0, rows.numel(), block_rows))
        ends = rows[[min(a + block_rows, rows.numel()) - 1 for a in starts]].tolist()  # one sync
        keys, values = keys[:, :, : ends[-1] + 1], values[:, :, : ends[-1] + 1]
        if self.groups > 1:  # GQA: once per layer; blocks take views
            keys = keys.repeat_interleave(self.groups, dim=1)
            values = values.repeat_interleave(self.groups, dim=1)
        positions = torch.arange(ends[-1] + 1, device=rows.device)
        outs = []
        for a, last in zip(starts, ends, strict=True):
            block = rows[a : a + block_rows]
            mask = positions[None, : last + 1] <= block[:, None]
            outs.append(F.scaled_dot_product_attention(
                q[:, :, a : a + block_rows], keys[:, :, : last + 1], values[:, :, : last + 1],
                attn_mask=mask[None, None], scale=scaling))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out.transpose(1, 2).reshape(1, q.shape[2], self.n_heads * self.head_dim)

    def finish(self, layer: int, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP: the rest of the decoder layer for these rows."""
        block = self.layers[layer]
        h = h + block.self_attn.o_proj(attn_out)
        return h + block.mlp(block.post_attention_layernorm(h))

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """Logits ``[vocab]`` (fp32) of one row's final hidden state ``[1, 1, hidden]``."""
        return self.model.lm_head(self.inner.norm(h_last))[0, -1].float()
