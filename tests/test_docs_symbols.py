"""The code docs/ARCHITECTURE.md names exists: every backticked dotted name (`io.jobs.run_folder_job`,
`Purifier.shipped_as`, `errors.missing_base_dependency`) resolves to a module, class, function or attribute of the
package. tests/test_docs_commands.py checks the commands and the file paths the docs cite, not these names, and
a rename or removal left the map pointing at nothing."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest

import puface

REPO = Path(__file__).resolve().parents[1]
_FILE_SUFFIXES = (".py", ".toml", ".md", ".safetensors", ".json", ".jsonl", ".csv", ".pt", ".onnx", ".lock", ".html")
_NOT_OURS = ("torch.", "nn.", "ds.", "sys.", "os.")  # torch.load, nn.Module, a user's ds.map_batches, sys.meta_path


@lru_cache(maxsize=1)
def _modules() -> dict[str, ModuleType]:
    """Every module of the package by its dotted name without `puface.` (the CLI's `__main__`s left out: importing
    one runs the command line)."""
    names = [m.name for m in pkgutil.walk_packages(puface.__path__, "puface.") if not m.name.endswith("__main__")]
    return {name.removeprefix("puface."): importlib.import_module(name) for name in names}


def cited_symbols(text: str) -> list[tuple[int, str]]:
    """(line, name) for each backticked dotted name, call parentheses dropped (`Defense.__call__`,
    `plan_mirror(rank=, world_size=)` is not dotted and left out); file names and torch's names are not ours."""
    out = []
    for m in re.finditer(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\([^`]*\))?`", text):
        name = m[1]
        if not name.endswith(_FILE_SUFFIXES) and not name.startswith(_NOT_OURS):
            out.append((text.count("\n", 0, m.start()) + 1, name))
    return out


def _attribute_chain(obj: object, parts: list[str]) -> bool:
    """Whether obj.parts[0].parts[1]... exists; the last part may also be an instance attribute of a class (a
    dataclass field, or `self.NAME =` in its source)."""
    for i, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if i == len(parts) - 1 and inspect.isclass(obj):
            fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
            return part in fields or re.search(rf"\bself\.{part}\s*[:=]", inspect.getsource(obj)) is not None
        return False
    return True


def resolves(name: str) -> bool:
    """A module path (as a suffix: `io.jobs`, `errors` for utils.errors) then attributes, or a class or function
    defined in some module, then attributes."""
    parts = name.removeprefix("puface.").split(".")
    if name.startswith("puface.") and _attribute_chain(puface, parts):
        return True
    for path, module in _modules().items():
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if (path == head or path.endswith("." + head)) and _attribute_chain(module, parts[i:]):
                return True
        first = vars(module).get(parts[0])
        if (inspect.isclass(first) or inspect.isfunction(first)) and _attribute_chain(first, parts[1:]):
            return True
    return False


def test_the_names_the_architecture_doc_cites_exist():
    cited = cited_symbols((REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert len(cited) > 20  # the check reads something (53 citations on 2026-12-07)
    missing = [f"docs/ARCHITECTURE.md:{line}: {name}" for line, name in cited if not resolves(name)]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "name, found",
    [
        ("io.jobs.run_folder_job", True),  # a module path, then a function
        ("errors.missing_base_dependency", True),  # a module named by the tail of its path (utils.errors)
        ("Purifier.shipped_as", True),  # an instance attribute set in the class
        ("Claim.ended", True),
        ("puface.defenses.register", True),
        ("io.jobs.run_folder_jobs", False),  # renamed
        ("Purifier.no_such_attribute", False),
        ("nosuchmodule.thing", False),
    ],
)
def test_a_renamed_name_is_caught(name, found):
    assert resolves(name) is found
