"""Amplified training inputs: x~ = clip(x + k * (x_c - x), 0, 1), with natural (x -> x) pairs mixed in.

The cloak delta = x_c - x is scaled by a factor k drawn per image, either uniformly from a range
(default [1, 3]) or from a finite set. A share of the rows gets k = 0, i.e. the natural image itself,
so the purifier learns to leave natural photos unchanged (it is applied to every training image,
cloaked or not).

Why a range and why [1, 3] by default: the purifier sees real cloaks (k = 1) at test time, so k = 1
must be in the training distribution; larger k exaggerates the cloak's structure so it is learned
more clearly (PuFace's "amplified cloaked images"), and k = 3 turns Fawkes-high's 15/255 budget into
about 45/255, beyond LowKey's 33/255, so the strongest attack in the mix is covered too. A continuous
range (rather than a few values) keeps the purifier's response smooth in the cloak's strength, since
attacks other than the training ones have other strengths. Beyond ~3 the clip to [0, 1] starts to
distort the cloak's shape on bright and dark skin.

Other photo sources (`source_variants`, `source_share`): a share of the rows gets its natural photo changed
first by one of the variants (defense specs such as "contrast:factor=1.5", "gamma:gamma=2+sharpen:amount=1"),
drawn per row, the cloak's change added on top and the changed photo as the target:
x~ = clip(v(x) + k * (x_c - x), 0, 1) -> v(x). Training chips from one source (LFW: soft, low-contrast,
upsampled small faces) otherwise teach the purifier that whatever those chips lack is a cloak; photos from
other cameras, lighting and skin tones then come out far from themselves (docs/RESULTS.md section 18).

Re-encoded uploads (`input_variants`, `input_share`): a share of the rows gets the finished input and its target
changed by one of the variants (JPEG as a photo-sharing site re-encodes: "jpeg:quality=75"), drawn per row:
v(x~) -> v(x). A site re-encodes the cloaked photo, not the natural one; a purifier that only saw cloaks as
made meets JPEG'd ones it removes less of (docs/RESULTS.md section 19), and the target keeps the variant's own
artefacts, so a re-encoded natural photo is still left as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import torch

from ..defenses import Defense, create_defense
from ..utils.errors import ConfigError


@dataclass(frozen=True)
class AmplifyConfig:
    """How training inputs are made from (natural, cloaked) pairs.

    k_min, k_max: k ~ Uniform(k_min, k_max) (used when `k_values` is empty).
    k_values: a finite set of factors, chosen uniformly (overrides the range when non-empty).
    natural_share: fraction of rows whose input is the natural image (k = 0), in [0, 1).
    source_variants: defense specs of photo variants ("contrast:factor=1.5", "a+b" composes); empty = off.
    source_share: fraction of rows (natural or cloaked) whose photo becomes one of the variants (drawn
    uniformly per row), in [0, 1].
    input_variants: defense specs applied to a finished input and to its target (re-encoding: "jpeg:quality=75").
    input_share: fraction of rows (natural or cloaked) whose input and target go through one of them, in [0, 1].
    """

    k_min: float = 1.0
    k_max: float = 3.0
    k_values: tuple[float, ...] = ()
    natural_share: float = 0.25
    source_variants: tuple[str, ...] = ()
    source_share: float = 0.0
    input_variants: tuple[str, ...] = ()
    input_share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k_values", tuple(float(v) for v in self.k_values))
        for kind in ("source", "input"):
            specs, share = getattr(self, f"{kind}_variants"), getattr(self, f"{kind}_share")
            if isinstance(specs, str):
                raise ConfigError(f"amplify.{kind}_variants must be a list of specs, got {specs!r}")
            object.__setattr__(self, f"{kind}_variants", tuple(str(v) for v in specs))
            for spec in getattr(self, f"{kind}_variants"):
                _variant(spec)  # a bad spec is a ConfigError naming it
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"amplify.{kind}_share must be in [0, 1], got {share}")
            if share > 0 and not specs:
                raise ConfigError(f"amplify.{kind}_share > 0 needs amplify.{kind}_variants")
        if self.k_values:
            if any(v < 0 for v in self.k_values):
                raise ConfigError(f"amplify.k_values must be >= 0, got {list(self.k_values)}")
        elif not 0 <= self.k_min <= self.k_max:
            raise ConfigError(f"amplify needs 0 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if not 0.0 <= self.natural_share < 1.0:
            raise ConfigError(f"amplify.natural_share must be in [0, 1), got {self.natural_share}")

    @classmethod
    def from_dict(cls, d: dict) -> "AmplifyConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown amplify option(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
            )
        return cls(**d)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["k_values"] = list(self.k_values)
        d["source_variants"] = list(self.source_variants)
        d["input_variants"] = list(self.input_variants)
        if not self.input_variants and not self.input_share:  # recipes without them keep their recorded config
            del d["input_variants"], d["input_share"]
        return d

    def describe(self) -> str:
        k = (
            f"k in {{{', '.join(f'{v:g}' for v in self.k_values)}}}"
            if self.k_values
            else f"k ~ U[{self.k_min:g}, {self.k_max:g}]"
        )
        text = f"{k}, natural share {self.natural_share:g}"
        if self.source_share > 0:
            text += f", photo variants {self.source_share:g} ({len(self.source_variants)} kinds)"
        if self.input_share > 0:
            text += f", re-encoded inputs {self.input_share:g} ({len(self.input_variants)} kinds)"
        return text


@lru_cache(maxsize=None)
def _variant(spec: str) -> Defense:
    """The photo variant of a spec, parsed once (the config checks it; every training step applies it)."""
    return create_defense(spec)


def amplify(natural: torch.Tensor, cloaked: torch.Tensor, k: torch.Tensor | float) -> torch.Tensor:
    """clip(x + k * (x_c - x), 0, 1). `k` is a scalar or one factor per image, shape (N,).

    natural, cloaked: (N, 3, H, W) in [0, 1]. Returns (N, 3, H, W) in [0, 1].
    """
    if natural.shape != cloaked.shape:
        raise ValueError(
            f"natural and cloaked images differ in shape: {tuple(natural.shape)} vs {tuple(cloaked.shape)}"
        )
    if not torch.is_tensor(k):
        k = torch.tensor(float(k), dtype=natural.dtype, device=natural.device)
    k = k.to(dtype=natural.dtype, device=natural.device)
    if k.ndim == 1:
        k = k.view(-1, *([1] * (natural.ndim - 1)))
    return (natural + k * (cloaked - natural)).clamp(0.0, 1.0)


def sample_factors(n: int, config: AmplifyConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """k for `n` rows (float32, shape (n,)): 0 for the natural share, else drawn as configured."""
    u = torch.rand(n, generator=generator)
    if config.k_values:
        idx = torch.randint(len(config.k_values), (n,), generator=generator)
        k = torch.tensor(config.k_values, dtype=torch.float32)[idx]
    else:
        k = config.k_min + (config.k_max - config.k_min) * torch.rand(n, generator=generator)
    natural = u < config.natural_share
    return torch.where(natural, torch.zeros_like(k), k)


def amplified_batch(
    natural: torch.Tensor, cloaked: torch.Tensor, config: AmplifyConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs x~, factors k): one training batch made from (natural, cloaked) pairs.

    Rows with k = 0 are natural inputs (x -> x). Shapes: (N, 3, H, W) and (N,).
    """
    k = sample_factors(natural.shape[0], config, generator)
    return amplify(natural, cloaked, k), k


def source_variants(natural: torch.Tensor, cloaked: torch.Tensor, config: AmplifyConfig,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x), v(x) + (x_c - x)): a `config.source_share` of the rows replaced by one of `config.source_variants`
    (drawn per row), the cloak's change kept; the other rows unchanged.

    natural, cloaked: (N, 3, H, W) in [0, 1]. The returned "cloaked" rows are not clipped (`amplify` clips).
    Draws nothing from `generator` when the share is 0, so recipes without variants keep their random stream.
    """
    changed = _vary(natural, config.source_variants, config.source_share, generator)[0]
    return (natural, cloaked) if changed is natural else (changed, changed + (cloaked - natural))


def input_variants(targets: torch.Tensor, inputs: torch.Tensor, config: AmplifyConfig,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x), v(x~)): a `config.input_share` of the rows' targets and finished inputs both through one of
    `config.input_variants` (drawn per row; JPEG: as a site re-encodes an upload); the other rows unchanged.

    targets, inputs: (N, 3, H, W) in [0, 1]. Draws nothing from `generator` when the share is 0."""
    varied, varied_inputs = _vary(targets, config.input_variants, config.input_share, generator, inputs)
    assert varied_inputs is not None  # _vary gives its second tensor back varied
    return varied, varied_inputs


def _vary(a: torch.Tensor, specs: tuple[str, ...], share: float, generator: torch.Generator | None,
          b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A `share` of the rows of `a` (and the same rows of `b`) through one of `specs`, drawn per row; the
    tensors themselves (not copies) when no row is chosen or the share is 0 (then nothing is drawn)."""
    if share <= 0:  # the config refuses a share without variants
        return a, b
    n = a.shape[0]
    chosen = torch.rand(n, generator=generator) < share
    which = torch.randint(len(specs), (n,), generator=generator)
    if not chosen.any():
        return a, b
    a2, b2 = a.clone(), (b.clone() if b is not None else None)
    for v, spec in enumerate(specs):
        rows = (chosen & (which == v)).nonzero().flatten()
        if len(rows):
            variant = _variant(spec)
            a2[rows] = variant(a[rows]).to(a.dtype)
            if b is not None and b2 is not None:  # (b2 is b's copy)
                b2[rows] = variant(b[rows]).to(b.dtype)
    return a2, b2
