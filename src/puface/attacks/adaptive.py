"""Adaptive attacks: surrogates that see the world through the defender's defense.

An attacker who knows the defense D optimises the cloak against `embed(D(x))` instead of `embed(x)`.
Wrapping every surrogate in `ThroughDefense` turns any attack of this package (Fawkes, LowKey) into
that adaptive attack with the same perturbation budget (Fawkes' DSSIM threshold and 15/255 cap,
LowKey's step schedule): only the gradients change. The gradient is the defense's own estimate
(`Defense.gradient_estimate`):

- ``"exact"``: backpropagate through the defense (the purifier is a differentiable network);
- ``"bpda"``: the defense's output forward, the identity backward (straight-through, Athalye et al. 2018).

The cloak's defended embedding is pushed away from that of the defended clean photo, except through a defense with a
part that has no gradient of its own (JPEG, bit depth, median, noise: `rounds`; of a `views` defense, in its last view,
the one differentiated): there the reference is the clean photo itself (`surrogates.clean_embedding`; untargeted Fawkes
and LowKey), since the first iterates round back onto the defended clean photo, where the distance and its gradient are
exactly 0 and the attack never moved.

EOT (expectation over transformations): with ``eot_noise > 0`` each forward pass adds Gaussian noise
of that standard deviation (images in [0, 1]) before the defense, so the cloak must survive small
input changes, not one exact input. Each image's noise is seeded by its exact pixels (`eot_noise_like`): every
new iterate meets new noise, while a cloak stays a function of the attack's seed and the image (the global torch
generator is not used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..defenses import GRADIENTS, Defense, Views, create_defense
from ..models.base import FaceEmbedder
from ..utils.errors import ConfigError, PufaceError
from ..utils.fingerprint import image_digest
from ..utils.seeding import stable_seed

__all__ = ["ThroughDefense", "through_defense", "through_defenses", "as_through_defense", "adaptive_options",
           "eot_noise_like", "GRADIENTS"]


class ThroughDefense(FaceEmbedder):
    """The surrogate `inner` applied to `defense(x)`: (N, 3, H, W) [0, 1] RGB -> (N, D) unit embeddings.

    Named ``"<inner>|<defense>[-bpda][-eot<std>]"`` so cloak caches and reports tell it apart; a learned
    defense's network is a sub-module (moved with `.to`, part of the embedder's fingerprint).
    """

    def __init__(self, inner: FaceEmbedder, defense: Defense, *, gradient: str = "exact", eot_noise: float = 0.0):
        if gradient not in GRADIENTS:
            raise PufaceError(
                f"unknown gradient {gradient!r} for an adaptive attack (choose from {', '.join(GRADIENTS)})"
            )
        if not 0 <= eot_noise < float("inf"):  # nan too: it made cloaks that change nothing
            raise PufaceError(f"eot_noise must be a number >= 0, got {eot_noise}")
        suffix = (
            defense.name + ("" if gradient == "exact" else f"-{gradient}") + (f"-eot{eot_noise:g}" if eot_noise else "")
        )
        super().__init__(inner.net, name=f"{inner.name}|{suffix}", input_size=inner.input_size,
                         embedding_dim=inner.embedding_dim, normalization=inner.normalization, source=inner.source,
                         licence=inner.licence, input_layout=inner.input_layout, input_warp=inner.input_warp)
        self.defense = defense
        network = defense.network
        if network is not None:
            self.defense_net = network.eval()
            for p in network.parameters():
                p.requires_grad_(False)
        self.gradient = gradient
        self.eot_noise = float(eot_noise)
        #: a part of the defense the attack differentiates has no exact gradient (JPEG, bit depth, ...): pushed away
        #: from the clean photo itself (a `views` defense: its last view's parts, the one `gradient_estimate` uses)
        self.rounds = any(not p.has_exact_gradient for p in defense.gradient_parts)

    def defend(self, images: torch.Tensor) -> torch.Tensor:
        """The defended images, with the gradient the attacker uses (EOT noise added first)."""
        x = images
        if self.eot_noise > 0:
            x = (x + eot_noise_like(x) * self.eot_noise).clamp(0.0, 1.0)
        return self.defense.gradient_estimate(x, self.gradient)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return super().preprocess(self.defend(images))

    def clean_preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The inner surrogate's input for the photos themselves, without the defense (the reference an attack pushes
        away from when the defense `rounds`: `surrogates.clean_embedding`)."""
        return super().preprocess(images)


def eot_noise_like(images: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `images` (N, 3, H, W), image i drawn from a generator seeded by its exact
    pixels (`image_digest`): fresh noise for every new iterate of an attack, yet the same for the same image whatever
    its batch, and not taken from the global torch generator, so an EOT attack's cloaks follow its seed alone."""
    gens = [torch.Generator().manual_seed(stable_seed("eot", image_digest(im)) % 2**63) for im in images]
    noise = [torch.randn(tuple(images.shape[1:]), generator=g, dtype=torch.float32) for g in gens]
    return (torch.stack(noise) if noise else torch.zeros(images.shape)).to(images)


def as_through_defense(through: "str | dict | Defense") -> Defense:
    """The defense an adaptive spec's ``through`` names: a `Defense`, "default" (the shipped purifier), a
    purifier checkpoint path, any defense spec ("puface:weights=FILE", "blur:sigma=1", ...) or a defense table
    ({name = "random", of = [...]})."""
    if isinstance(through, Defense):
        return through
    if isinstance(through, dict):                 # a TOML table: {name = "random", of = [...]}
        return create_defense(through)
    text = str(through)
    if text in ("default", "puface"):
        return create_defense("puface")
    if Path(text).suffix in (".pt", ".safetensors") or Path(text).is_file():
        return create_defense("puface", weights=text)
    return create_defense(text)


def through_defenses(through: "str | dict | Defense | Sequence[str | dict | Defense]") -> list[Defense]:
    """The defenses an adaptive spec's ``through`` names, in order (see `as_through_defense`); a `views` defense
    stands for its views, as the list of them would: the FR model trains on every view, so the attacker optimises
    through each (a `Views` as one images -> images function is its last view alone)."""
    items = [through] if isinstance(through, (str, dict, Defense)) else list(through)
    out: list[Defense] = []
    for d in (as_through_defense(t) for t in items):
        out.extend(d.views if isinstance(d, Views) else [d])
    return out


def through_defense(
    embedders: Sequence[FaceEmbedder | str],
    defense: "str | dict | Defense | Sequence[str | dict | Defense]" = "default",
    *,
    gradient: str = "exact",
    eot_noise: float = 0.0,
) -> list[ThroughDefense]:
    """Wrap surrogates (objects or registry names/paths) so an attack optimises through `defense`.

    A list of defenses is an ensemble: every surrogate is wrapped once per defense (surrogate-major order),
    so the attack sums (or, with Fawkes' ``ensemble = "min"``, takes the weakest of) its losses over all of
    them: expectation over a set of purifiers the attacker knows. ``"none"`` in the list is the photo itself; a
    `views` defense counts as the list of its views (`through_defenses`).
    """
    from ..models.registry import load_embedder

    defenses = through_defenses(defense)
    if not defenses:
        raise ConfigError("an adaptive attack needs at least one defense to optimise through")
    out: list[ThroughDefense] = []
    for e in embedders:
        emb = load_embedder(e) if isinstance(e, str) else e
        out.extend(ThroughDefense(emb, d, gradient=gradient, eot_noise=eot_noise) for d in defenses)
    return out


def adaptive_options(kw: dict, *, what: str = "the attack") -> dict:
    """Resolve an attack spec's adaptive keys in place and return `kw`.

    Pops ``through`` (see `as_through_defense`; a list is an ensemble, see `through_defense`), ``gradient`` ("exact" /
    "bpda") and ``eot_noise`` (std of the Gaussian input noise, images in [0, 1]); when ``through`` is set,
    ``kw["embedders"]`` (names or embedders) becomes their `ThroughDefense` wrappers. Every config reader
    (experiments, purifier training, the CLI) goes through this, so an adaptive spec means the same everywhere.
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
    embedders = kw["embedders"]
    kw["embedders"] = through_defense([embedders] if isinstance(embedders, str) else list(embedders), through,
                                      gradient=gradient, eot_noise=eot_noise)
    return kw
