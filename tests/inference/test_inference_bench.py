"""The benchmark programs of this package: metric helpers, the GPU script's CPU smoke path, and
(slow) the quick run of ``kvstore bench blend``."""

from __future__ import annotations

import json

import pytest
import torch

from kvstore.bench import blend, blend_gpu


def test_rouge_l_is_the_lcs_f1():
    assert blend._rouge_l([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert blend._rouge_l([1, 2, 3, 4], [9, 9]) == 0.0
    assert blend._rouge_l([1, 2, 3, 4], [1, 3]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(50)
    assert blend._kl(logits, logits) == pytest.approx(0.0, abs=1e-6)
    assert blend._kl(logits, torch.randn(50)) > 0


def test_gpu_bench_smoke_path_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "blend_gpu.json"
    assert blend_gpu.main(["--smoke", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["full prefill", "prefix hit", "blend r=0.15", "naive reuse"]
    prefix, blended = result["rows"][1], result["rows"][2]
    assert prefix["reused_tokens"] > 0 and blended["reused_tokens"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "blend_gpu"


@pytest.mark.slow
@pytest.mark.model
def test_bench_blend_quick(tmp_path, capsys):
    out = tmp_path / "blend.json"
    assert blend.main(["--quick", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["methods"]["full"]["tf_top1"] == 1.0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "blend" and "targets_met" in last
