"""The import direction of the layers (pyproject.toml, [tool.importlinter]): a module imports only from the
layers below its own, function-level imports included. A new top-level package must join a layer."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from puface.utils.tomlconfig import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "puface"


def _importlinter():
    """import-linter (a test dependency), or a skip of the test that runs it."""
    return pytest.importorskip(
        "importlinter.cli", reason="import-linter is a test dependency (pip install 'puface[test]')"
    )


def _lint_imports(config: Path) -> int:
    """import-linter's exit code on `config`. Its CLI configures logging with `disable_existing_loggers` (every
    logger made so far, puface's included, is disabled: a later test's caplog saw nothing); their state is restored."""
    import logging

    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    disabled = [lg.disabled for lg in loggers]
    try:
        return _importlinter().lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    finally:
        for lg, was in zip(loggers, disabled):
            lg.disabled = was


def _contract_layers() -> list[set[str]]:
    """pyproject's layers, top to bottom, each a set of package names (without `puface.`)."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = cfg["tool"]["importlinter"]["contracts"]
    return [{name.strip().removeprefix("puface.") for name in layer.split("|")} for layer in contract["layers"]]


def doc_layers(text: str) -> list[set[str]]:
    """The layer table of docs/ARCHITECTURE.md (`| 11 | `cli`, `api` | ... |`), top to bottom, each a set of the
    backticked package names of its second column."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", text, flags=re.M)
    return [set(re.findall(r"`(\w+)`", names)) for _, names in sorted(rows, key=lambda r: -int(r[0]))]


def test_the_architecture_doc_states_the_layers_the_contract_checks():
    """docs/ARCHITECTURE.md's layer table (the map a newcomer reads) names the same packages in the same order as
    the contract import-linter enforces; nothing checked that the two agree."""
    assert doc_layers((REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")) == _contract_layers()


def test_a_drifted_layer_table_is_caught():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    swapped = text.replace("| 8 | `attacks` |", "| 8 | `detection` |")
    swapped = swapped.replace("| 7 | `detection` |", "| 7 | `attacks` |")
    assert swapped != text and doc_layers(swapped) != _contract_layers()


def test_no_module_imports_from_a_layer_above_its_own():
    assert _lint_imports(REPO / "pyproject.toml") == 0


def test_every_part_of_the_package_is_in_a_layer():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert parts | modules == set().union(*_contract_layers())


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
    assert _lint_imports(cfg) == 1
    sys.modules.pop("layered", None)
