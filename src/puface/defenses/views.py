"""Several views of every training photo: the FR model trains on all of them.

`Views(["none", "puface"])` keeps each photo *and* its purified version, both under the person's label.
A defender moves second (FaceCure): a cloak is published first and must work against whatever the trainer
does later. Purification alone is a fixed function, and an attacker who optimises through it turns the
purifier into his amplifier (docs/RESULTS.md, "the adaptive attacker"); with both views in the training set
the cloak must fool the FR model on the raw photo *and* after purification, two aims that work against each
other (the purifier is trained to undo perturbations that fool face models on their own).

As an images -> images function (the `Defense` contract, `puface purify`), a `Views` is its last view; the
evaluation protocol (`evaluation.protocol`) trains on every view: the training set is the concatenation of
the views, view-major, labels repeated.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..utils.errors import ConfigError
from .base import Composite, Defense
from .registry import DEFENSES, create_defense

__all__ = ["Views"]


class Views(Composite):
    """Keep several views of each photo (`of`: defenses or specs, e.g. ["none", "puface"]); FR trains on all."""

    kind = "views"

    def __init__(self, of: Sequence["Defense | str | dict"]):
        if isinstance(of, (str, dict, Defense)) or len(of) < 2:
            raise ConfigError("views: `of` lists at least two defenses (e.g. of = [\"none\", \"puface\"])")
        self.views = [create_defense(v) for v in of]
        if any(isinstance(v, Views) for v in self.views):
            raise ConfigError("views: a view cannot itself be a `views` defense")
        super().__init__(of=[v.config for v in self.views])

    @property
    def name(self) -> str:
        return "views-" + "-".join(v.name for v in self.views)

    @property
    def members(self) -> list[Defense]:
        return self.views

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.views[-1](images)

    @property
    def has_exact_gradient(self) -> bool:
        return self.views[-1].has_exact_gradient

    @property
    def gradient_parts(self) -> list[Defense]:
        return self.views[-1].gradient_parts

    def gradient_estimate(self, images: torch.Tensor, gradient: str = "exact") -> torch.Tensor:
        """The last view's estimate (an adaptive attack's ``through`` naming a `views` defense optimises through each
        view, as the list of them: `attacks.adaptive.through_defenses`)."""
        return self.views[-1].gradient_estimate(images, gradient)


DEFENSES.register("views", doc=(Views.__doc__ or "").strip().splitlines()[0], fast={"of": ["none", "blur:sigma=1"]})(
    Views
)
