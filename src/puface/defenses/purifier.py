"""The PuFace purifier as a defense, with the exact gradient an adaptive attacker backpropagates.

`PuFaceDefense(weights)` loads `Purifier.load(weights)` on first use (None or "default" = the shipped
one); it reports the identities the checkpoint says the purifier saw, so an evaluation can refuse to
protect a user the purifier has seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..purifier.model import Purifier, check_step, extrapolate, is_shipped
from ..utils.errors import PufaceError
from ..utils.fingerprint import module_fingerprint
from .base import Defense
from .registry import register

__all__ = ["PuFaceDefense", "defense_training_identities", "holds_purifier"]


@register
class PuFaceDefense(Defense):
    """The PuFace purifier: `Purifier.load(weights)` (None or "default" = the shipped one, "arcface112" = the
    shipped one for ArcFace 112 px crops, else a checkpoint path)."""

    kind = "puface"

    def __init__(self, weights: str | None = None, batch_size: int = 32, device: str | None = None,
                 template: str | None = None, step: float = 1.0):
        """template: the face layout of the images ("dlib150", "arcface112"; None: the purifier's own);
        another layout is served by resampling to the purifier's face scale (`Purifier.forward_template`).
        step: how far to go along the purifier's change, x + step * (P(x) - x), clamped to [0, 1] (1: P(x),
        the paper's PuFace and every `puface` column of the documented grids; > 1 extrapolates past the purified
        image, 0 < step). `puface purify` goes 1.5 with the shipped purifier (`purifier.model.job_step`): measure
        that with `step = 1.5` (label `puface-step1.5`)."""
        if weights in ("", "default"):
            weights = None
        params: dict[str, Any] = {"weights": str(weights) if weights is not None else "default"}
        if template is not None:
            from ..purifier.model import TEMPLATES

            if template not in TEMPLATES:
                raise PufaceError(f"puface: unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
            params["template"] = template  # only when set: the configs and cache keys of old runs stay the same
        try:
            step = check_step(step)
        except PufaceError as e:
            raise PufaceError(f"puface: {e}") from None
        if step != 1.0:
            params["step"] = step  # likewise only when set
        super().__init__(**params)
        self.step = step
        self.template = template
        self.batch_size = int(batch_size)
        self.device = device
        self._purifier: Purifier | None = None
        self._weights = weights

    @classmethod
    def wrapping(cls, purifier: Purifier, batch_size: int = 32) -> "PuFaceDefense":
        """A defense around an already loaded purifier (its cache key follows the network's fingerprint)."""
        d = cls(batch_size=batch_size)
        d._purifier = purifier
        return d

    @property
    def purifier(self) -> Purifier:
        """The purifier network, loaded on first use."""
        if self._purifier is None:
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
        base = "puface" if w == "default" else f"puface-{Path(w).stem}"
        base = base if self.template is None else f"{base}-{self.template}"
        return base if self.step == 1.0 else f"{base}-step{self.step:g}"

    @property
    def fingerprint(self) -> str:
        return module_fingerprint(self.purifier)

    @property
    def key_config(self) -> dict[str, Any]:
        """A checkpoint file stands in the cache key for its content, not its path: the weights (`fingerprint`) and the
        face layouts its metadata records (`Purifier.template`, `net_template`: they choose the resampling), so the same
        checkpoint elsewhere reuses its purified images and another one written at the same path does not. Shipped
        purifiers keep their name (their keys as before)."""
        w = self.params["weights"]
        if is_shipped(None if w == "default" else w):
            return self.config
        p = self.purifier
        return {**self.config, "weights": {"checkpoint": [p.template, p.net_template]}}

    @property
    def training_identities(self) -> set[str] | None:
        """Identities the purifier saw in training or validation (None: not recorded)."""
        return self.purifier.seen_identities

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        kw: dict[str, Any] = {"batch_size": self.batch_size, "template": self.template}
        if self.device:
            kw["device"] = self.device
        return self.purifier.purify(images, step=self.step, **kw).cpu()

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The purifier's forward pass with gradients (no clamp: what an attacker differentiates)."""
        out = self.purifier.forward_template(images, self.template)
        return out if self.step == 1.0 else extrapolate(images, out, self.step, clamp=False)


def defense_training_identities(defense: Defense) -> set[str] | None:
    """Identities the purifier(s) inside `defense` saw in training, or None when the defense has no
    purifier or none records them."""
    found = [d.training_identities for d in defense.parts if isinstance(d, PuFaceDefense)]
    known = [ids for ids in found if ids is not None]
    return set().union(*known) if known else None


def holds_purifier(spec: Any) -> bool:
    """Whether the defense of `spec` (a registry spec: name, dict or "a+b" text; a "label" key ignored) holds a
    purifier anywhere (alone, a step of a composition, a view, a branch of `random`), whatever its label. Builds the
    defense (no weights are loaded); False for a spec this install cannot build."""
    from .registry import create_defense

    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k != "label"}
    try:
        defense = create_defense(spec)
    except (PufaceError, TypeError, ValueError):
        return False
    return any(isinstance(p, PuFaceDefense) for p in defense.parts)
