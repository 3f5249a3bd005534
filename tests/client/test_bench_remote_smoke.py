"""`kvstore bench remote` runs end to end on the CPU (tiny sizes, no TTFT part): the table and
the final JSON line with the raw ceiling and kvstore's ratio to it."""

from __future__ import annotations

import argparse
import json

from kvstore.bench import remote


def test_bench_remote_runs_on_cpu_and_reports_ratios(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    remote.add_arguments(parser)
    out = tmp_path / "remote.json"
    args = parser.parse_args(["--chunk-mib", "1", "--chunks", "4", "--repeats", "1",
                              "--workers", "1", "--connections", "2", "--no-blend",
                              "--json-out", str(out)])
    assert remote.run(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["benchmark"] == "remote"
    assert last["ratios"]["pinned_x1_vs_raw_2conn"] > 0
    rows = {(r["system"], r["connections"]) for r in json.loads(out.read_text())["rows"]}
    assert rows == {("raw-socket", 1), ("raw-socket", 2), ("kvstore get pinned", 2)}
