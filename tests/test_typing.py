"""The package type-checks: `mypy` with the project's config ([tool.mypy] in pyproject.toml) finds no error in
src/puface. mypy is a test dependency (pip install 'puface[test]'); its cache is REPO/.mypy_cache (git-ignored),
so a warm run takes seconds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "puface"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                       reason="mypy is not installed (a test dependency: pip install 'puface[test]')"),
    pytest.mark.skipif(not PACKAGE.is_dir(), reason="needs the source tree (src/puface), not an installed package"),
]


def _mypy(*args: str) -> subprocess.CompletedProcess:
    """mypy in this interpreter (it sees the installed torch and numpy), the project's config, run from the root."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(r":\d+: error:", line)]


def test_the_package_type_checks():
    res = _mypy()
    errors = _errors(res.stdout)
    assert res.returncode == 0 and not errors, (
        f"mypy found {len(errors)} error(s) in src/puface:\n" + "\n".join(errors or [res.stdout, res.stderr]))
    # every module was checked (the config's `files` names the package)
    checked = re.search(r"no issues found in (\d+) source files", res.stdout)
    assert checked and int(checked.group(1)) == len(list(PACKAGE.rglob("*.py"))), res.stdout


def test_the_check_reports_an_error_with_its_place(tmp_path):
    """The same run on a module with a wrong type fails and names the file, line and error code; the body of a
    function without annotations is checked too (check_untyped_defs)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def half(n: int) -> int:\n    return n / 2\n\n\ndef untyped():\n    n: int = 'one'\n    return n\n")
    res = _mypy(str(bad))
    assert res.returncode == 1
    # (the folder may be an earlier run's: mypy replays a module's cached errors)
    returned, untyped = _errors(res.stdout)
    assert returned.endswith(
        'bad.py:2: error: Incompatible return value type (got "float", expected "int")  [return-value]'
    )
    assert untyped.endswith('bad.py:6: error: Incompatible types in assignment (expression has type "str", '
                            'variable has type "int")  [assignment]')
