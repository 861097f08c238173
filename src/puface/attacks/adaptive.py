"""Adaptive attacks on a purifier: surrogates that see the world through it.

An attacker who knows the defender's purifier P can optimise the cloak against `embed(P(x))`
instead of `embed(x)`. Wrapping every surrogate in `ThroughPurifier` turns any attack of this
package (Fawkes, LowKey) into that adaptive attack with the same perturbation budget (Fawkes'
DSSIM threshold and 15/255 cap, LowKey's step schedule): only the gradients change.

Gradients:
- ``"exact"``: backpropagate through the purifier (it is a differentiable network).
- ``"bpda"``: Backward Pass Differentiable Approximation (Athalye et al. 2018): the forward pass uses
  P(x), the backward pass treats P as the identity (straight-through).
EOT (expectation over transformations): with ``eot_noise > 0`` each forward pass adds Gaussian
noise of that standard deviation (images in [0, 1]) before the purifier, so the cloak must survive
small input changes, not one exact input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, PufaceError
from ..models.base import FaceEmbedder

__all__ = ["ThroughPurifier", "through_purifier", "adaptive_options", "GRADIENTS"]

GRADIENTS = ("exact", "bpda")


class _StraightThrough(torch.autograd.Function):
    """y = P(x) forward, dL/dx = dL/dy backward (BPDA with the identity)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return purified

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ThroughPurifier(FaceEmbedder):
    """The surrogate `inner` applied to `purifier(x)`: (N, 3, H, W) [0, 1] RGB -> (N, D) unit embeddings.

    Named ``"<inner>|puface[-bpda]"`` so cloak caches and reports tell it apart; the purifier's weights
    are part of its state (and so of the attack's fingerprint).
    """

    def __init__(self, inner: FaceEmbedder, purifier: nn.Module, *, gradient: str = "exact", eot_noise: float = 0.0,
                 label: str = "puface"):
        if gradient not in GRADIENTS:
            raise PufaceError(f"unknown gradient {gradient!r} for an adaptive attack (choose from {', '.join(GRADIENTS)})")
        if eot_noise < 0:
            raise PufaceError(f"eot_noise must be >= 0, got {eot_noise}")
        suffix = label + ("" if gradient == "exact" else f"-{gradient}") + (f"-eot{eot_noise:g}" if eot_noise else "")
        super().__init__(inner.net, name=f"{inner.name}|{suffix}", input_size=inner.input_size,
                         embedding_dim=inner.embedding_dim, normalization=inner.normalization, source=inner.source,
                         licence=inner.licence, input_layout=inner.input_layout, input_warp=inner.input_warp)
        self.purifier = purifier.eval()
        for p in self.purifier.parameters():
            p.requires_grad_(False)
        self.gradient = gradient
        self.eot_noise = float(eot_noise)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.eot_noise > 0:
            x = (x + torch.randn_like(x) * self.eot_noise).clamp(0.0, 1.0)
        if self.gradient == "bpda":
            with torch.no_grad():
                y = self.purifier(x)
            return _StraightThrough.apply(images, y)
        return self.purifier(x)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return super().preprocess(self.purify(images))


def through_purifier(embedders: Sequence[FaceEmbedder | str], purifier: nn.Module | str | None = None, *,
                     gradient: str = "exact", eot_noise: float = 0.0) -> list[ThroughPurifier]:
    """Wrap surrogates (objects or registry names/paths) so an attack optimises through `purifier`.

    purifier: a module, a checkpoint path, or None / "default" for the shipped purifier.
    """
    from ..models.registry import load_embedder
    from ..purifier.apply import Purifier

    if purifier is None or isinstance(purifier, str):
        purifier = Purifier.load(None if purifier in (None, "default") else purifier)
    out = []
    for e in embedders:
        emb = load_embedder(e) if isinstance(e, str) else e
        out.append(ThroughPurifier(emb, purifier, gradient=gradient, eot_noise=eot_noise))
    return out


def adaptive_options(kw: dict, *, what: str = "the attack") -> dict:
    """Resolve an attack spec's adaptive keys in place and return `kw`.

    Pops ``through`` (a checkpoint path or "default"), ``gradient`` ("exact" / "bpda") and ``eot_noise``
    (std of the Gaussian input noise, images in [0, 1]); when ``through`` is set, ``kw["embedders"]``
    (names or embedders) becomes their `ThroughPurifier` wrappers. Config readers (experiments,
    purifier training) share this so an adaptive spec means the same everywhere.
    """
    through = kw.pop("through", None)
    gradient = str(kw.pop("gradient", "exact"))
    eot_noise = float(kw.pop("eot_noise", 0.0))
    if through is None:
        if gradient != "exact" or eot_noise:
            raise ConfigError(f"{what}: gradient / eot_noise only apply to an adaptive attack (through = ...)")
        return kw
    if not kw.get("embedders"):
        raise ConfigError(f"{what}: an adaptive attack (through = ...) must name its embedders")
    kw["embedders"] = through_purifier(list(kw["embedders"]), str(through), gradient=gradient, eot_noise=eot_noise)
    return kw
