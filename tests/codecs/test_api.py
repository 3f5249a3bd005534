"""The public API's contract: payload types and ownership, registry, import direction."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvstore import codecs

REPO = Path(__file__).resolve().parents[2]


def test_registry_names():
    assert list(codecs.CODECS) == ["identity", "shuffle-lz4", "fp8-e4m3", "kivi-int4",
                                   "kivi-int2"]
    assert [c.lossy for c in codecs.CODECS.values()] == [False, False, True, True, True]
    assert codecs.get_codec("") is codecs.CODECS["identity"]


def test_encoded_chunk_is_frozen_and_matches_chunk_meta_fields():
    enc = codecs.encode(torch.ones(1, 2, 1, 4, 8, dtype=torch.bfloat16), "kivi-int2")
    assert (enc.codec, enc.codec_params, enc.dtype, enc.shape) == (
        "kivi-int2", {"group_size": "32", "key_rotation": "hadamard"}, "bfloat16",
        (1, 2, 1, 4, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        enc.codec = "identity"


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview,
                                  lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)],
                         ids=["bytes", "bytearray", "memoryview", "tensor"])
@pytest.mark.parametrize("codec", list(codecs.CODECS))
def test_decode_accepts_bytes_like_and_tensors(wrap, codec):
    x = torch.randn(1, 2, 2, 8, 16).to(torch.float16)
    enc = codecs.encode(x, codec)
    expected = codecs.decode(enc.payload, enc.codec, enc.codec_params, enc.dtype, enc.shape)
    out = codecs.decode(wrap(enc.to_bytes()), enc.codec, enc.codec_params, enc.dtype, enc.shape)
    assert torch.equal(out, expected)


def test_identity_decode_of_read_only_bytes_returns_a_writable_copy():
    data = codecs.encode(torch.arange(8, dtype=torch.float32), "identity").to_bytes()
    out = codecs.decode(data, "identity", {}, "float32", (8,))
    out += 1  # must not write into the immutable bytes object
    assert data == codecs.encode(torch.arange(8, dtype=torch.float32), "identity").to_bytes()


def test_identity_decode_of_writable_buffer_is_zero_copy():
    buf = bytearray(codecs.encode(torch.arange(8, dtype=torch.float32), "identity").to_bytes())
    out = codecs.decode(buf, "identity", {}, "float32", (8,))
    out[0] = 42.0
    assert torch.frombuffer(buf, dtype=torch.float32)[0] == 42.0


@pytest.mark.parametrize("codec", ["identity", "fp8-e4m3", "kivi-int4"])
def test_payload_at_an_odd_address_decodes(codec):
    """A payload sliced out of a larger message may start at any byte."""
    x = torch.randn(1, 2, 2, 8, 16).to(torch.float16)
    enc = codecs.encode(x, codec)
    message = b"\x07" + enc.to_bytes()
    view = memoryview(message)[1:]
    out = codecs.decode(view, enc.codec, enc.codec_params, enc.dtype, enc.shape)
    assert torch.equal(out, codecs.decode(enc.payload, enc.codec, enc.codec_params, enc.dtype,
                                          enc.shape))


def test_importing_codecs_pulls_in_no_server_client_or_triton():
    code = ("import sys, kvstore.codecs; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('triton', 'kvstore_client') "
            "or m.startswith(('kvstore.server', 'kvstore.tiers', 'kvstore.cli'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", ["kernels/kvstore_kernels/quant_kivi.py",
                                  "kernels/kvstore_kernels/fp8.py",
                                  "kernels/kvstore_kernels/_softcvt.py",
                                  "kernels/kvstore_kernels/bench_quant_gpu.py",
                                  *sorted(str(p.relative_to(REPO))
                                          for p in (REPO / "kvstore/codecs").glob("*.py"))])
def test_import_direction(path):
    """Kernels import neither kvstore nor the client; codecs import no server, tier or client."""
    forbidden = (("kvstore", "kvstore_client") if path.startswith("kernels/") else
                 ("kvstore.server", "kvstore.tiers", "kvstore_client", "grpc", "kvstore.v1"))
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            assert not any(name == f or name.startswith(f + ".") for f in forbidden), (path, name)
