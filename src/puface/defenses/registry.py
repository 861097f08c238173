"""Defenses by name: the registry, `create_defense` (a name with options, a spec string or a table) and
`list_defenses`. The spec grammar is `puface.utils.specs`; ``+`` composes::

    create_defense("jpeg", quality=75)
    create_defense("jpeg:quality=50+median:size=3")          # a composition
    create_defense({"name": "blur", "sigma": 1.0})           # TOML's table form
    create_defense("compose", steps=["blur:sigma=1", {"name": "bitdepth", "bits": 5}])
"""

from __future__ import annotations

from typing import Any, Sequence

from ..utils.errors import ConfigError
from ..utils.registry import Registry
from ..utils.specs import as_table, parse_spec, split_composition
from .base import Compose, Defense, NoDefense

__all__ = ["DEFENSES", "register", "create_defense", "list_defenses", "default_label"]

DEFENSES = Registry("defense")


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a `Defense` subclass under its `kind` (first docstring line as its help)."""
    DEFENSES.register(cls.kind, doc=(cls.__doc__ or "").strip().splitlines()[0])(cls)
    return cls


register(NoDefense)


@DEFENSES.register(
    "compose", doc="apply `steps` (defenses or specs) in order", fast={"steps": ["blur:sigma=1", "jpeg:quality=80"]}
)
def _compose(steps: Sequence["Defense | str | dict"]) -> Compose:
    if not steps:
        raise ConfigError("compose: needs at least one step")
    return Compose([create_defense(s) for s in steps])


def create_defense(spec: "str | dict | Defense", **params: Any) -> Defense:
    """A defense from a name and its options (`create_defense("jpeg", quality=75)`), a spec string
    (``"blur:sigma=1+bitdepth:bits=5"``), a table (``{"name": "jpeg", "quality": 75}``) or a defense.

    Keyword options override a single spec's. Unknown names and options raise `ConfigError` / `PufaceError` listing
    what is accepted. `defense(images)`: (N, 3, H, W) float in [0, 1] -> same shape, in [0, 1], on the input's
    device; no gradient (`defense.gradient_estimate` is the differentiable form for adaptive attacks).
    """
    if isinstance(spec, Defense):
        if params:
            raise ConfigError(f"create_defense: options {sorted(params)} given with a ready defense {spec!r}")
        return spec
    if isinstance(spec, dict):
        table = as_table(spec, "defense")
        table.pop("label", None)
        name = str(table.pop("name"))
        if "+" in name or ":" in name:
            if table or params:
                raise ConfigError(f"defense {name!r}: give options inside the spec string or use a table per step")
            return create_defense(name)
        return DEFENSES.create(name, **{**table, **params})
    if not isinstance(spec, str):
        raise ConfigError(f"cannot make a defense from {spec!r}")
    steps = split_composition(spec, "defense spec")
    if len(steps) > 1:
        if params:
            raise ConfigError(f"defense {spec!r}: options go inside the spec string of a composition")
        return Compose([create_defense(s) for s in steps])
    table = parse_spec(steps[0], "defense spec")
    name = table.pop("name")
    return DEFENSES.create(name, **{**table, **params})


def list_defenses() -> list[str]:
    """Names of the registered defenses."""
    return DEFENSES.names()


def default_label(spec: "str | dict") -> str:
    """The short name a spec's defense has in result tables (jpeg-q75, blur-s1, puface, ...). Building a
    defense loads no weights, so this is cheap for the purifier too."""
    return create_defense(spec).name
