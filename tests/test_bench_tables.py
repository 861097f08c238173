"""bench/benchtables.py: what every benchmark writes (timm-style tables rewritten in place), and the
benchmarks' command lines (each parses --help without running anything)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from benchtables import Table, write_tables  # noqa: E402


def test_write_tables_markdown_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_models.py"), "--lfw", "/data/sets/lfw-chips150"])
    monkeypatch.setenv("PUFACE_DATA", "/data/sets")
    rows = [{"model": "a", "ms": 1.234, "extra": 7}, {"model": "b", "ms": None, "extra": 8}]
    t1 = Table("speed", rows, [("model", "model", "{}"), ("ms", "ms / image", "{:.1f}")], notes="two models",
               extra_csv_keys=["extra"])
    t2 = Table("other", [{"k": 1}], [("k", "k", "{}")], csv="other")
    paths = write_tables("demo", "A demo benchmark", [t1, t2], tmp_path, baseline="matmul 100 GFLOP/s")
    assert [p.name for p in paths] == ["demo.md", "demo.csv", "demo-other.csv"]
    md = (tmp_path / "demo.md").read_text()
    # the command as typed, the script relative to the repository, the data root as $PUFACE_DATA
    assert "Regenerate: `python bench/bench_models.py --lfw $PUFACE_DATA/lfw-chips150`" in md
    assert "Baseline in the same process: matmul 100 GFLOP/s" in md
    assert "| a | 1.2 |" in md and "| b | - |" in md and "two models" in md
    with open(tmp_path / "demo.csv") as f:
        got = list(csv.DictReader(f))
    assert got == [{"table": "speed", "model": "a", "ms": "1.234", "extra": "7"},
                   {"table": "speed", "model": "b", "ms": "", "extra": "8"}]
    # rewritten in place: a second run replaces, never appends
    write_tables("demo", "A demo benchmark", [t2], tmp_path)
    assert "| a |" not in (tmp_path / "demo.md").read_text()


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_benchmark_help(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "bench/results" in r.stdout  # each says where its tables go
