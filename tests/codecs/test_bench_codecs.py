"""`kvstore bench codecs --quick` runs end to end on real SmolLM2 KV and reports sane numbers."""

import argparse
import json

import pytest

from kvstore.bench import codecs as bench

pytestmark = pytest.mark.model


def test_bench_codecs_quick(smollm2, capsys, tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out_file = tmp_path / "codecs.json"
    args = parser.parse_args(["--quick", "--backend", "torch", "--json-out", str(out_file)])
    assert bench.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = json.loads(lines[-1])
    assert results == json.loads(out_file.read_text())
    assert any(line.startswith("kivi-int4") for line in lines[:-1])  # the table
    rows = {f"{r['codec']}/{r['dtype']}": r for r in results["rows"] if not r["params"]}
    unrotated = {r["codec"]: r for r in results["rows"] if r["params"]}
    assert len(rows) == 9 and sorted(unrotated) == ["kivi-int2", "kivi-int4"]
    assert all(r["params"] == {"key_rotation": "none"} for r in unrotated.values())
    for codec, row in unrotated.items():  # same bytes, another key transform: another result
        assert row["payload_bytes"] == rows[f"{codec}/float16"]["payload_bytes"]
        assert row["mean_kl"] != rows[f"{codec}/float16"]["mean_kl"]
    # Lossless rows reproduce their dtype's cache exactly; fp32 identity is the reference itself.
    ref = rows["identity/float32"]
    assert ref["first_token_kl"] == 0 and ref["top1_agreement"] == 1.0
    for dtype in ("float16", "bfloat16", "float32"):
        lossless, identity = rows[f"shuffle-lz4/{dtype}"], rows[f"identity/{dtype}"]
        assert lossless["mean_kl"] == identity["mean_kl"]
    assert results["ratios"]["kivi-int4/float16"] >= 3.2 - 1e-9
    assert results["ratios"]["kivi-int2/float16"] > results["ratios"]["kivi-int4/float16"]
    # Quantization costs something, more at 2 bits than at 4; fp16 storage costs almost nothing.
    assert rows["kivi-int2/float16"]["mean_kl"] > rows["kivi-int4/float16"]["mean_kl"] > 0
    assert rows["identity/float16"]["mean_kl"] < 1e-4
    assert all(r["encode_MBps"] > 0 and r["decode_MBps"] > 0 for r in rows.values())
