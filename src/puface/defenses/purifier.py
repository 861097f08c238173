"""The PuFace purifier as a defense, with the exact gradient an adaptive attacker backpropagates.

`PuFaceDefense(weights)` loads `Purifier.load(weights)` on first use (None or "default" = the shipped
one). Helpers read what a purifier checkpoint records: the identities it was trained on (so an
evaluation can refuse to protect a user the purifier has seen) and its amplification factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..purifier.model import Purifier
from ..utils.errors import PufaceError
from ..utils.fingerprint import module_fingerprint
from .base import Compose, Defense
from .registry import register

__all__ = ["PuFaceDefense", "purifier_training_identities", "purifier_amplification", "defense_training_identities"]


@register
class PuFaceDefense(Defense):
    """The PuFace purifier: `Purifier.load(weights)` (None or "default" = the shipped one)."""

    kind = "puface"

    def __init__(self, weights: str | None = None, batch_size: int = 32, device: str | None = None):
        if weights in ("", "default"):
            weights = None
        super().__init__(weights=str(weights) if weights is not None else "default")
        self.batch_size = int(batch_size)
        self.device = device
        self._purifier: Purifier | None = None
        self._weights = weights

    @property
    def purifier(self) -> Purifier:
        """The purifier network, loaded on first use."""
        if self._purifier is None:
            if self._weights is not None and not Path(self._weights).exists():
                raise PufaceError(f"{self._weights}: purifier checkpoint not found")
            p = Purifier.load(self._weights)
            p.eval()
            if self.device:
                p = p.to(self.device)
            self._purifier = p
        return self._purifier

    @property
    def loaded(self) -> bool:
        """Whether the weights have been loaded (reading metadata then costs nothing)."""
        return self._purifier is not None

    @property
    def network(self) -> nn.Module:
        return self.purifier

    @property
    def name(self) -> str:
        w = self.params["weights"]
        return "puface" if w == "default" else f"puface-{Path(w).stem}"

    @property
    def fingerprint(self) -> str:
        return module_fingerprint(self.purifier)

    @property
    def training_identities(self) -> set[str] | None:
        return purifier_training_identities(self.purifier)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = {"batch_size": self.batch_size}
        if self.device:
            kw["device"] = self.device
        return self.purifier.purify(images, **kw).cpu()

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The purifier's forward pass with gradients (no clamp: what an attacker differentiates)."""
        return self.purifier(images)


def defense_training_identities(defense: Defense) -> set[str] | None:
    """Identities the purifier(s) inside `defense` saw in training, None when none is recorded or the
    defense has no purifier (empty set: it has one that records no identities... see `learned`)."""
    found = [d.training_identities for d in (defense.steps if isinstance(defense, Compose) else [defense])
             if isinstance(d, PuFaceDefense)]
    known = [ids for ids in found if ids is not None]
    return set().union(*known) if known else None


def purifier_training_identities(purifier: Any) -> set[str] | None:
    """Identities a purifier checkpoint says it saw in training or validation, or None when it does not
    record them. Reads `meta["data_summary"]` (train_identities, val_identities) of a `Purifier`, or a
    `training_identities` attribute."""
    meta = getattr(purifier, "meta", None)
    summary = meta.get("data_summary") if isinstance(meta, dict) else None
    if isinstance(summary, dict) and summary.get("train_identities"):
        return set(summary["train_identities"]) | set(summary.get("val_identities") or [])
    v = getattr(purifier, "training_identities", None)
    if v:
        return set(v)
    return None


def purifier_amplification(purifier: Any, default: float = 3.0) -> float:
    """The largest cloak amplification factor k the purifier was trained with (for illustrations)."""
    meta = getattr(purifier, "meta", None)
    amp = ((meta or {}).get("config") or {}).get("amplify") if isinstance(meta, dict) else None
    if isinstance(amp, dict):
        if amp.get("k_values"):
            return float(max(amp["k_values"]))
        if amp.get("k_max") is not None:
            return float(amp["k_max"])
    return default
