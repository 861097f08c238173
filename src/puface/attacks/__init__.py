"""Facial cloaking attacks (Fawkes, LowKey, OPOM, unlearnable examples) as small objects you call on a batch
of [0, 1] images.

    >>> from puface.attacks import create_attack, list_attacks
    >>> atk = create_attack("fawkes", mode="high", embedders=["dlib-resnet29"], seed=0)  # doctest: +SKIP
    >>> cloaked = atk(images)                 # (N, 3, H, W) in [0, 1] -> same          # doctest: +SKIP
    >>> res = atk.run(images); res.stats["dssim"], res.stats["shift_dlib-resnet29"]   # doctest: +SKIP
    >>> atk.config                            # every setting, JSON-serialisable (cache key)  # doctest: +SKIP
    >>> create_attack("fawkes:mode=high,embedders=dlib-resnet29,through=default")  # adaptive  # doctest: +SKIP

Modules: `base` (what every attack shares), `fawkes`, `lowkey`, `group` (attacks fitted on a labelled
group: `opom`, `unlearnable`), `adaptive` (through a defense),
`surrogates`, `targets` (targeted Fawkes), `cache` (cloaks cached by content), `folder` (cloak a
folder tree; read cloaks made elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.registry import Registry
from ..utils.specs import as_table
from .adaptive import adaptive_options
from .base import AttackResult, CloakAttack
from .group import GroupCloakAttack, Reference

ATTACKS = Registry("attack")


# `fast`: options that make an entry cheap enough for the contract tests (tests/test_contracts.py); every
# registered attack, defense and trainer is tested there with them.
@ATTACKS.register("fawkes", summary="Fawkes v1.0.2 (untargeted; targeted=True for the paper's version)",
                  fast={"mode": "custom", "th": 0.017, "lr": 15.0, "steps": 3})
def _fawkes(**kw: Any) -> CloakAttack:
    from .fawkes import Fawkes

    return Fawkes(**kw)


@ATTACKS.register("lowkey", summary="LowKey (ensemble + blur copies, flip TTA, LPIPS penalty)", fast={"steps": 2})
def _lowkey(**kw: Any) -> CloakAttack:
    from .lowkey import LowKey

    return LowKey(**kw)


@ATTACKS.register(
    "opom",
    summary="OPOM person-specific universal privacy mask (affine/convex hull, class centre, FI-UAP)",
    fast={"steps": 2},
)
def _opom(**kw: Any) -> CloakAttack:
    from .opom import OPOM

    return OPOM(**kw)


@ATTACKS.register(
    "unlearnable",
    summary="unlearnable examples: error-minimizing noise, min-min (sample-wise or class-wise)",
    fast={"steps": 2, "train_steps": 2, "max_rounds": 2},
)
def _unlearnable(**kw: Any) -> CloakAttack:
    from .unlearnable import UnlearnableExamples

    return UnlearnableExamples(**kw)


def create_attack(spec: "str | dict", **options: Any) -> CloakAttack:
    """An attack from its name and options, a spec string or a table (`puface.utils.specs`):
    `create_attack("fawkes", mode="high", embedders=["dlib-resnet29"], seed=0, device=None)`,
    `create_attack("lowkey:steps=20,embedders=dlib-resnet29|sface")`. Options are the attack's knobs;
    ``through`` (a defense, "default" = the shipped purifier), ``gradient`` and ``eot_noise`` make it
    adaptive (`adaptive.adaptive_options`). Keyword options override a spec's. A table's ``label`` is ignored (it
    names the row in tables).

    `attack(images)`: (N, 3, H, W) float in [0, 1] -> the cloaked images, same shape, in [0, 1], on the input's
    device; `attack.run(images)` gives them with per-image statistics. Group attacks (opom, unlearnable) also take
    the identities: `attack(images, labels=...)`."""
    table = {**as_table(spec if not isinstance(spec, str) or ":" in spec else {"name": spec}, "attack"), **options}
    table.pop("label", None)
    name = str(table.pop("name"))
    if isinstance(table.get("embedders"), str):
        table["embedders"] = [table["embedders"]]
    adaptive_options(table, what=f"attack {name!r}")
    return ATTACKS.create(name, **table)


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names()


def attack_label(spec: dict) -> str:
    """The label an attack table has in results: its `label`, else "clean" for the clean reference
    ("none"), "folder-<folder name>" for cloaks read from a folder, "<name>-<mode>" or "<name>"."""
    if spec.get("label"):
        return str(spec["label"])
    name = str(spec.get("name", "?"))
    if name == "none":
        return "clean"
    if name == "folder" and spec.get("root"):
        return f"folder-{Path(str(spec['root'])).name}"
    return f"{name}-{spec['mode']}" if spec.get("mode") is not None else name


__all__ = [
    "ATTACKS",
    "AttackResult",
    "CloakAttack",
    "GroupCloakAttack",
    "Reference",
    "create_attack",
    "list_attacks",
    "attack_label",
]
