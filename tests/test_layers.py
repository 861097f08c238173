"""The import direction of the layers (pyproject.toml, [tool.importlinter]): a module imports only from the
layers below its own, function-level imports included. A new top-level package must join a layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from puface.utils.tomlconfig import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "puface"

importlinter = pytest.importorskip(
    "importlinter.cli", reason="import-linter is a test dependency (pip install 'puface[test]')"
)


def _layers() -> list[str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = cfg["tool"]["importlinter"]["contracts"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_no_module_imports_from_a_layer_above_its_own():
    assert importlinter.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_every_part_of_the_package_is_in_a_layer():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert {f"puface.{n}" for n in parts | modules} == set(_layers())


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The same contract on a two-layer package whose lower layer imports the upper one fails."""
    pkg = tmp_path / "layered"
    for name, text in {"__init__.py": "", "low/__init__.py": "def f():\n    from ..high import g\n",
                       "high/__init__.py": "from ..low import f\n\ndef g():\n    return f\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    cfg = tmp_path / "setup.cfg"
    cfg.write_text("[importlinter]\nroot_package = layered\n\n[importlinter:contract:1]\nname = layers\n"
                   "type = layers\nlayers =\n    layered.high\n    layered.low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert importlinter.lint_imports(config_filename=str(cfg), no_cache=True, no_logo=True) == 1
    sys.modules.pop("layered", None)
