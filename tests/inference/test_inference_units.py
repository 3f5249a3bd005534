"""Layout, planning, the in-memory store, config validation and import direction (no model)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from kvstore.keys import content_keys, prefix_keys
from kvstore_client.inference import (
    ChunkStore,
    EngineConfig,
    InMemoryChunkStore,
    Segment,
)
from kvstore_client.inference.blend import n_selected
from kvstore_client.inference.errors import ConfigError
from kvstore_client.inference.plan import plan_loads
from kvstore_client.inference.segments import build_layout

ROOT = Path(__file__).resolve().parents[2]


def test_layout_keys_every_cacheable_segment_and_chains_the_prompt(make_scheme):
    scheme = make_scheme(chunk_tokens=64)
    segs = [list(range(1, 71)), list(range(100, 190)), list(range(5, 17))]
    layout = build_layout(scheme, segs, [True, True, False])
    tokens = [t for s in segs for t in s]
    assert layout.token_ids == tuple(tokens) and layout.n_tokens == 172
    assert [c.key for c in layout.prefix_chunks] == prefix_keys(scheme, tokens)
    assert [c.start for c in layout.prefix_chunks] == [0, 64]
    assert [(c.start, c.num_tokens) for c in layout.content_chunks] == [
        (0, 64), (64, 6), (70, 64), (134, 26)]
    assert [c.key for c in layout.content_chunks[2:]] == content_keys(scheme, segs[1])
    assert layout.segment_spans == ((0, 70, True), (70, 160, True), (160, 172, False))


def test_segment_needs_exactly_one_source():
    with pytest.raises(ConfigError):
        Segment()
    with pytest.raises(ConfigError):
        Segment(text="a", token_ids=(1,))


def _put(store, keys):
    store.put_many(keys, [torch.zeros(1)] * len(keys))


def test_plan_trims_content_to_rows_the_prefix_does_not_cover(make_scheme):
    scheme = make_scheme(chunk_tokens=64)
    layout = build_layout(scheme, [list(range(1, 101)), list(range(3, 9))], [True, False])
    store = InMemoryChunkStore()
    _put(store, [layout.prefix_chunks[0].key, *(c.key for c in layout.content_chunks)])
    plan = plan_loads(store, layout, with_content=True)
    assert plan.prefix_rows == 64
    assert [(s.rows, s.delta) for s in plan.content] == [((64, 100), 64)]
    assert plan.prefix_found == [True] and plan.content_found == [True, True]


def test_plan_never_takes_the_last_row_from_the_cache(make_scheme):
    scheme = make_scheme(chunk_tokens=64)
    layout = build_layout(scheme, [list(range(1, 129))], [True])  # no question at all
    store = InMemoryChunkStore()
    _put(store, [c.key for c in layout.prefix_chunks])
    plan = plan_loads(store, layout, with_content=False)
    assert plan.prefix_rows == 127


def test_plan_treats_a_failed_lookup_as_all_misses(make_scheme):
    class Broken(InMemoryChunkStore):
        def lookup(self, keys, **kw):
            raise OSError("injected")

    layout = build_layout(make_scheme(), [list(range(1, 200))], [True])
    plan = plan_loads(Broken(), layout, with_content=True)
    assert not plan.prefix and not plan.content and "OSError" in plan.lookup_error


def test_memory_store_is_a_chunk_store():
    store = InMemoryChunkStore()
    assert isinstance(store, ChunkStore)
    keys = [bytes([i]) * 16 for i in range(3)]
    assert store.put_many(keys[:2], [torch.ones(2), torch.zeros(2)]) == [True, True]
    got = store.get_many(keys)
    assert torch.equal(got[0], torch.ones(2)) and got[2] is None
    result = store.lookup([keys[0], keys[2], keys[1]])
    assert result.found == [True, False, True] and result.prefix_hits == 1


@pytest.mark.parametrize("bad", [
    {"recompute_ratio": 1.5}, {"check_layer": -1}, {"selection": "topk"},
    {"kv_dtype": "int8"}, {"fetch_timeout_s": 0}, {"lookahead_layers": 0},
    {"write_back": "sometimes"},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        EngineConfig(**bad)


def test_n_selected_rounds_up_without_float_noise():
    assert n_selected(0.15, 100) == 15
    assert n_selected(0.15, 101) == 16
    assert n_selected(0.0, 50) == 0 and n_selected(1.0, 50) == 50


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("where", ["client/kvstore_client/inference", "kvstore/bench/blend.py",
                                   "kvstore/bench/blend_gpu.py"])
def test_inference_never_imports_the_server(where):
    target = ROOT / where
    files = [target] if target.is_file() else sorted(target.glob("*.py"))
    assert files
    forbidden = ("kvstore.server", "kvstore.tiers")
    for path in files:
        bad = {m for m in _imports(path) for f in forbidden if m == f or m.startswith(f + ".")}
        assert not bad, f"{path} imports {sorted(bad)}"
