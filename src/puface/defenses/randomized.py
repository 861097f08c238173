"""Randomised defense: each photo goes through one of several defenses, chosen per photo by a private seed.

`RandomChoice(["resize:factor=2+puface", "puface+resize:factor=2"], seed=S)` purifies each photo with one of
the listed defenses. The defender's choice is a pure function of (seed, the photo's uint8 content), so a
defended image is reproducible and cacheable like any other; an attacker who knows the list but not the seed
cannot tell which branch a published photo will meet, and must make a cloak that survives all of them.

What such an attacker optimises through (the adaptive attacks of `puface.attacks.adaptive`):

- ``through = {name = "random", of = [...]}`` (this defense): every forward pass draws a branch per image from the
  image's exact pixels (fresh for every new iterate, the same for the same image in any batch, never from the global
  torch generator, so the cloaks follow the attack's seed alone), the one-sample expectation over transformations
  (EOT, Athalye et al. 2018);
- ``through = [branch, branch, ...]`` with Fawkes' ``ensemble = "sum"``: the exact expectation over the
  uniform choice, every branch in every step (K times the cost).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..utils.errors import ConfigError
from ..utils.fingerprint import image_digest, image_seed
from ..utils.seeding import stable_seed
from .base import GRADIENTS, Composite, Defense
from .registry import DEFENSES, create_defense

__all__ = ["RandomChoice"]


class RandomChoice(Composite):
    """One of several defenses per photo (`of`: defenses or specs), chosen by (`seed`, the photo's content)."""

    kind = "random"

    def __init__(self, of: Sequence["Defense | str | dict"], seed: int = 0):
        if isinstance(of, (str, dict, Defense)) or len(of) < 2:
            raise ConfigError(
                'random: `of` lists at least two defenses (e.g. of = ["puface", "resize:factor=2+puface"])'
            )
        self.branches = [create_defense(b) for b in of]
        for b in self.branches:
            if b.groupwise or b.kind in ("views", "random"):
                raise ConfigError(f"random: a branch must be a per-photo defense, not {b.name!r}")
        super().__init__(of=[b.config for b in self.branches], seed=int(seed))

    @property
    def name(self) -> str:
        return "random-" + "-or-".join(b.name for b in self.branches)

    @property
    def members(self) -> list[Defense]:
        return self.branches

    def choices(self, images: torch.Tensor) -> torch.Tensor:
        """The defender's branch index of each image, (N,) int64: a pure function of (seed, uint8 content)."""
        k = len(self.branches)
        return torch.tensor([image_seed("random", self.params["seed"], im) % k for im in images], dtype=torch.long)

    def _route(self, images: torch.Tensor, index: torch.Tensor, run) -> torch.Tensor:
        """`run(branch, subset)` for each branch on the images routed to it, reassembled in input order."""
        parts, order = [], []
        for j, b in enumerate(self.branches):
            sel = (index == j).nonzero().flatten()
            if len(sel):
                parts.append(run(b, images[sel.to(images.device)]))
                order.append(sel)
        inverse = torch.argsort(torch.cat(order)).to(images.device)
        return torch.cat(parts)[inverse]

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self._route(images, self.choices(images), lambda b, x: b(x))

    @property
    def has_exact_gradient(self) -> bool:
        return all(b.has_exact_gradient for b in self.branches)

    def gradient_estimate(self, images: torch.Tensor, gradient: str = "exact") -> torch.Tensor:
        """What an attacker who knows the branches but not the seed differentiates: a uniform draw per image from
        its exact float pixels (`image_digest`: a new one for every new iterate of an attack, the same for the same
        image whatever its batch; not the global torch generator, which made an attack's cloaks depend on what ran
        before it), through that branch's own estimate (one-sample EOT)."""
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if len(images) == 0:
            return images
        k = len(self.branches)
        draw = torch.tensor([stable_seed("random-eot", image_digest(im)) % k for im in images], dtype=torch.long)
        return self._route(images, draw, lambda b, x: b.gradient_estimate(x, gradient))


DEFENSES.register("random", doc=(RandomChoice.__doc__ or "").strip().splitlines()[0],
                  fast={"of": ["blur:sigma=1", "resize:factor=2"]})(RandomChoice)
