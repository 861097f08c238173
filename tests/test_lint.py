"""src/ and tests/ lint cleanly: `ruff check` with the project's rules ([tool.ruff] in pyproject.toml: pyflakes,
pycodestyle with lines up to 120 columns, bugbear). ruff is a test dependency (pip install 'puface[test]',
pinned there); the check takes well under a second."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                       reason="ruff is not installed (a test dependency: pip install 'puface[test]')"),
    pytest.mark.skipif(not (REPO / "src" / "puface").is_dir(),
                       reason="needs the source tree (src/puface), not an installed package"),
]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    """`ruff check` of this interpreter's ruff with the project's config, run from the root, one line per finding."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(REPO / "pyproject.toml"),
                           "--output-format", "concise", "--no-cache", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_src_and_tests_lint_cleanly():
    res = _ruff("src", "tests")
    findings = [line for line in res.stdout.splitlines() if line.startswith(("src/", "tests/"))]
    assert res.returncode == 0 and not findings, (
        f"ruff found {len(findings)} problem(s) (`ruff check --fix src tests` fixes some):\n"
        + "\n".join(findings or [res.stdout, res.stderr]))


def test_the_check_reports_a_finding_with_its_place(tmp_path):
    """The same check fails on a file with an unused import and a long line, and names the place and rule."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nX = '" + "x" * 120 + "'\n")
    res = _ruff(str(bad))
    assert res.returncode == 1
    lines = [line for line in res.stdout.splitlines() if "bad.py:" in line]
    assert any(line.endswith("bad.py:1:8: F401 [*] `os` imported but unused") for line in lines), res.stdout
    assert any("bad.py:3:121: E501 Line too long (126 > 120)" in line for line in lines), res.stdout
