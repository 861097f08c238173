"""Facial cloaking attacks (Fawkes, LowKey) as small objects you call on a batch of [0, 1] images.

    >>> from puface.attacks import create_attack, list_attacks
    >>> atk = create_attack("fawkes", mode="high", embedders=["dlib-resnet29"], seed=0)  # doctest: +SKIP
    >>> cloaked = atk(images)                 # (N, 3, H, W) in [0, 1] -> same          # doctest: +SKIP
    >>> res = atk.run(images); res.stats["dssim"], res.stats["shift_dlib-resnet29"]   # doctest: +SKIP
    >>> atk.config                            # every setting, JSON-serialisable (cache key)  # doctest: +SKIP

Cached cloaks for files: `puface.attacks.cache.CloakCache`.
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import AttackResult, CloakAttack

ATTACKS = Registry("attack")


@ATTACKS.register("fawkes", summary="Fawkes v1.0.2 (untargeted; targeted=True for the paper's version)")
def _fawkes(**kw: Any) -> CloakAttack:
    from .fawkes import Fawkes

    return Fawkes(**kw)


@ATTACKS.register("lowkey", summary="LowKey (ensemble + blur copies, flip TTA, LPIPS penalty)")
def _lowkey(**kw: Any) -> CloakAttack:
    from .lowkey import LowKey

    return LowKey(**kw)


def create_attack(name: str, **kwargs: Any) -> CloakAttack:
    """Build an attack by name: `create_attack("fawkes", mode="high", embedders=[...], seed=0, device=None)`
    or `create_attack("lowkey", embedders=[...], seed=0)`; further keyword arguments are the attack's knobs."""
    return ATTACKS.create(name, **kwargs)


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names()


__all__ = ["ATTACKS", "AttackResult", "CloakAttack", "create_attack", "list_attacks"]
