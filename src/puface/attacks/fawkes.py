"""Fawkes (Shan et al., USENIX Security 2020) in PyTorch, faithful to the v1.0.2 release.

v1.0.2 (`fawkes/differentiator.py`, `FawkesMaskGeneration` with `maximize=True`), per image x
(pixels on the 0..255 scale, surrogates Phi_m returning L2-normalised embeddings):

* variable: a modifier m in tanh space, x' = (tanh(atanh((x/255 - 0.5) c) + m) / c + 0.5) * 255,
  c = 2 - 1e-6; m starts at U(-1, 1) * 1e-4; the change x' - x is clipped to +-15 grey levels;
* loss  = const * max(DSSIM(x', x) - th, 0)^2 - const_diff * sum_m ||Phi_m(x') - Phi_m(x)||^2 / ||Phi_m(x)||,
  const = `sd` = 1e6 (the CLI default), DSSIM = (1 - SSIM) / 2 with tf.image.ssim (max_val 255);
* optimiser: Adadelta with the mode's learning rate and Keras 2.4's rho 0.95, eps 1e-7 (TensorFlow's
  ApplyAdadelta update, reproduced here). After step 1 the modifier gets an extra -0.01 sign(grad)
  and, because Fawkes wraps it in a new tf.Variable, a fresh optimiser state;
* const_diff adapts per image after every step: DSSIM <= 0.9 th and const_diff <= 129 -> x2 (reset
  to 1 when the image was above the band before); DSSIM >= 1.1 th and const_diff >= 1/129 -> /2
  (reset to 1 when it was below before); otherwise reset to 1;
* result: the iterate with the largest feature distance among those with DSSIM <= 1.1 th; with
  `save_last_on_failed` the last iterate replaces it when that best distance is < 0.3, the last
  iterate's DSSIM < 0.015 and its distance is larger (so such outputs can exceed 1.1 th; they are
  flagged in the `fallback` statistic).

8-bit outputs (`run(..., quantize_output=True)`, what the CLI and the cache save): rounding adds a
little DSSIM, which can push an image just inside the budget over 1.1 th (Fawkes saved such PNGs).
Here such an image's cloak is scaled down by the smallest factor (steps of 1%) that brings the rounded
image back under 1.1 th, so every saved non-fallback image keeps the budget; `budget_scale` records
the factor (1 for almost all images).

Modes (th / steps / lr, v1.0.2): low 0.004 / 40 / 25, mid 0.012 / 75 / 20, high 0.017 / 150 / 15;
`custom` takes every knob. Fawkes used one extractor for `low` and two for `mid`/`high`; our defaults
mirror that with dlib-resnet29 (low) and dlib-resnet29 + sface (mid, high).

Targeted (the paper's and v0.3's behaviour): `targeted=True` mimics a target embedding t_m per
surrogate instead: loss = const * hinge^2 + target_weight * sum_m ||t_m - Phi_m(x')||^2 / ||t_m||
(v1.0's non-maximising branch, weight 1000), keeping the closest iterate inside the budget. The
target (an identity whose embedding centroid is farthest from the user's images) comes from
`puface.attacks.targets.TargetPool`.

Geometry (`geometry`, `puface.attacks.fawkes_geometry`): by default ("chip") the attack runs on the chip
at its native size (the surrogates resize inside, differentiably). "square112" is v1.0.2's own: the
variable, the +-15 cap and the DSSIM budget live on the chip padded to a square (+30 px, mean colour) and
resized to 112 px, and the saved chip gets the upsampled cloak; the surrogates see the saved chip (the
layout they were trained on). The same th then changes the chip more (`dssim` on the chip, `dssim_work`
where the budget is kept).

Cap (`cap`): v1.0.2 clips the change to +-max_change inside the loss (`tf.clip_by_value`), so a pixel
past the cap passes no gradient. When a step overshoots the DSSIM band, those pixels cannot be pulled
back; DSSIM then creeps down over many steps and the image keeps an early, weakly cloaked iterate.
"clip" (the default) reproduces that. "project" moves the modifier of such pixels back to just inside
the cap after every step (PGD-style), with the same th, cap, steps and lr: same budget, stronger cloaks
(docs/RESULTS.md, "Fawkes mid"). It does not stop Adadelta at lr 20 from
oscillating above the band on a few images; those keep an early iterate under either cap.

Ensemble (`ensemble`): with several surrogates v1.0.2 sums their feature distances ("sum", the default).
"min" pushes the weakest of them instead (the loss and the kept iterate use the smallest distance): what an
attacker needs against a defender who keeps several views of a photo (for example the photo and its
purified version) and recognises the person when any view still matches.

Other differences from the original, all deliberate: the source embeddings are
computed once, not at every step (same values); the iterate kept when none is inside the budget is
the unmodified image, not the all-zero array v1.0 starts from (step 1 is always inside, so this only
matters for `steps=0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..utils.errors import ConfigError
from ..utils.images import quantize
from ..utils.metrics import ReferenceSSIM, dssim
from ..utils.registry import typed_settings
from .base import CloakAttack, check_knobs
from .fawkes_geometry import GEOMETRIES, make_view
from .surrogates import SurrogateSpec, available_defaults, clean_embedding

__all__ = ["Fawkes", "FawkesSettings", "MODES", "CAP_MODES", "DEFAULT_SURROGATES", "KerasAdadelta"]

TANH_CONSTANT = 2 - 1e-6


@dataclass(frozen=True)
class FawkesSettings:
    """Every knob of the optimisation. Pixel quantities are on the 0..255 scale, as in Fawkes."""

    th: float = 0.017  # DSSIM budget
    steps: int = 150  # optimiser steps
    lr: float = 15.0  # Adadelta learning rate
    const: float = 1e6  # weight of the squared DSSIM hinge (Fawkes' `sd`)
    max_change: float = 15.0  # per-pixel cap on |x' - x|, grey levels
    rho: float = 0.95  # Adadelta decay (Keras 2.4)
    eps: float = 1e-7  # Adadelta epsilon (Keras 2.4)
    init_scale: float = 1e-4  # modifier starts at U(-1, 1) * init_scale
    sign_nudge: float = 0.01  # extra -sign(grad) step after step 1
    const_diff_bound: float = 129.0  # const_diff stays within [1/bound, bound] (then resets)
    band: float = 0.1  # DSSIM band (1 - band) th .. (1 + band) th; outputs kept under (1 + band) th
    save_last_on_failed: bool = True  # v1.0's fallback to the last iterate (untargeted only)
    fallback_feature: float = 0.3  # ... when the best feature distance is below this
    fallback_dssim: float = 0.015  # ... and the last iterate's DSSIM is below this
    targeted: bool = False  # mimic a target embedding (paper / v0.3) instead of pushing away (v1.0)
    target_weight: float = 1000.0  # weight of the targeted feature term (v1.0's mimic branch)
    geometry: str = (
        "chip"  # where the budget lives: "chip" (native size) or "square112" (v1.0.2's padded 112 px square)
    )
    cap: str = "clip"  # how the +-max_change cap acts: "clip" (v1.0.2: clipped, no gradient past it) or "project"
    ensemble: str = "sum"  # how several surrogates' feature distances combine: "sum" (v1.0.2) or "min" (the weakest)

    def check(self) -> None:
        if not 0 < self.th < math.inf:
            raise ConfigError(f"fawkes: th (DSSIM budget) must be a number > 0, got {self.th}")
        if self.steps < 0:
            raise ConfigError(f"fawkes: steps must be >= 0, got {self.steps}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"fawkes: lr must be a number > 0, got {self.lr}")
        if not 0 < self.max_change <= 255:
            raise ConfigError(f"fawkes: max_change must be in (0, 255] grey levels, got {self.max_change}")
        if not 0 <= self.band < 1:
            raise ConfigError(f"fawkes: band must be in [0, 1), got {self.band}")
        if not 0 < self.rho < 1:
            raise ConfigError(f"fawkes: rho must be in (0, 1), got {self.rho}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"fawkes: unknown geometry {self.geometry!r}; choose one of {', '.join(GEOMETRIES)}")
        if self.cap not in CAP_MODES:
            raise ConfigError(f"fawkes: unknown cap {self.cap!r}; choose one of {', '.join(CAP_MODES)}")
        if self.ensemble not in ENSEMBLE_MODES:
            raise ConfigError(f"fawkes: unknown ensemble {self.ensemble!r}; choose one of {', '.join(ENSEMBLE_MODES)}")


MODES: dict[str, FawkesSettings] = {
    "low": FawkesSettings(th=0.004, steps=40, lr=25.0),
    "mid": FawkesSettings(th=0.012, steps=75, lr=20.0),
    "high": FawkesSettings(th=0.017, steps=150, lr=15.0),
}
CAP_MODES = ("clip", "project")
ENSEMBLE_MODES = ("sum", "min")
MODE_KNOBS = ("th", "steps", "lr")  # what a named mode fixes
DEFAULT_SURROGATES = {
    "low": ("dlib-resnet29",),
    "mid": ("dlib-resnet29", "sface"),
    "high": ("dlib-resnet29", "sface"),
    "custom": ("dlib-resnet29", "sface"),
}


class KerasAdadelta:
    """Adadelta exactly as TensorFlow's ApplyAdadelta (Keras 2.4), on one tensor:

        acc_g <- rho acc_g + (1 - rho) g^2
        u      = sqrt(acc_u + eps) / sqrt(acc_g + eps) * g
        p     <- p - lr u
        acc_u <- rho acc_u + (1 - rho) u^2
    """

    def __init__(self, param: torch.Tensor, lr: float, rho: float = 0.95, eps: float = 1e-7):
        self.lr, self.rho, self.eps = lr, rho, eps
        self.acc_g = torch.zeros_like(param)
        self.acc_u = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        rho, eps = self.rho, self.eps
        self.acc_g.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        u = (self.acc_u + eps).sqrt_().div_((self.acc_g + eps).sqrt_()).mul_(grad)
        param.sub_(u, alpha=self.lr)
        self.acc_u.mul_(rho).addcmul_(u, u, value=1 - rho)

    def reset(self) -> None:
        self.acc_g.zero_()
        self.acc_u.zero_()


class Fawkes(CloakAttack):
    """Fawkes v1.0 cloaking. See the module docstring for the algorithm.

    Args:
        mode: "low", "mid", "high" (v1.0.2's th / steps / lr) or "custom" (any knob; unset knobs take
            the `high` values).
        embedders: surrogates (registry names, model paths or `FaceEmbedder`s); None: the mode's
            defaults that are installed.
        seed, device, batch_size: see `CloakAttack`.
        **knobs: fields of `FawkesSettings`. A named mode fixes th, steps and lr (use mode="custom" to
            change them); `targeted` and the other knobs are allowed in every mode.
    `run(images, targets=...)`: for `targeted=True`, `targets` is one tensor per surrogate, (N, D) or
    (D,) for all images (see `TargetPool.targets_for`).
    """

    kind = "fawkes"
    algorithm = "fawkes-v1.0.2-port/1"
    EARLIER = {"geometry": "chip", "cap": "clip", "ensemble": "sum"}  # v1.0.2's, the only way before the knobs

    def __init__(
        self,
        mode: str = "high",
        embedders: Sequence[SurrogateSpec] | None = None,
        *,
        seed: int = 0,
        device=None,
        batch_size: int = 16,
        **knobs: Any,
    ):
        if mode not in (*MODES, "custom"):
            raise ConfigError(f"fawkes: unknown mode {mode!r}; choose one of low, mid, high, custom")
        check_knobs("fawkes", knobs, FawkesSettings, "mode")
        if mode != "custom":
            fixed = sorted(k for k in knobs if k in MODE_KNOBS)
            if fixed:
                raise ConfigError(
                    f"fawkes: mode {mode!r} fixes {', '.join(MODE_KNOBS)}; use mode='custom' to set {', '.join(fixed)}"
                )
        base = MODES.get(mode, MODES["high"])
        self.settings = replace(base, **knobs)
        self.settings = typed_settings(self.settings, "fawkes")
        self.settings.check()
        self.mode = mode
        if embedders is None:
            embedders = available_defaults(DEFAULT_SURROGATES[mode], f"fawkes {mode}")
        super().__init__(embedders, seed=seed, device=device, batch_size=batch_size)

    @property
    def name(self) -> str:
        return f"fawkes-{self.mode}" + ("-targeted" if self.settings.targeted else "")

    @property
    def pushes_from_clean(self) -> bool:
        return not self.settings.targeted  # targeted Fawkes moves towards its targets

    @property
    def linf_budget(self) -> float | None:
        """The +-max_change cap on the chip (in the padded 112 px square the cap lives there instead)."""
        return self.settings.max_change / 255.0 if self.settings.geometry == "chip" else None

    def _settings(self) -> dict[str, Any]:
        return {"mode": self.mode, **super()._settings()}  # mode first: the order cloak records hold

    def run(self, images: torch.Tensor, *, targets: Sequence[torch.Tensor] | None = None, **kw):
        """Cloak `images` (N, 3, H, W) in [0, 1]; `targets` only for targeted Fawkes (see class doc)."""
        if self.settings.targeted:
            if targets is None:
                raise ValueError("targeted Fawkes needs `targets` (one embedding tensor per surrogate); see TargetPool")
            if len(targets) != len(self.surrogates):
                raise ValueError(
                    f"targets: expected {len(self.surrogates)} tensors (one per surrogate), got {len(targets)}"
                )
            targets = [t.expand(len(images), -1) if t.ndim == 1 else t for t in targets]
            for t, emb in zip(targets, self.surrogates):
                if t.shape != (len(images), emb.embedding_dim):
                    raise ValueError(
                        f"targets for {emb.name}: expected shape ({len(images)}, {emb.embedding_dim}), "
                        f"got {tuple(t.shape)}"
                    )
            return super().run(images, targets=list(targets), **kw)
        if targets is not None:
            raise ValueError("`targets` is only used by targeted Fawkes (targeted=True)")
        return super().run(images, **kw)

    # ------------------------------------------------------------------ the optimisation
    def _attack_batch(self, x: torch.Tensor, generators: list[torch.Generator], targets=None):
        s = self.settings
        n = x.shape[0]
        dev = x.device
        cap = s.max_change / 255.0
        hi_band, lo_band = (1 + s.band) * s.th, (1 - s.band) * s.th
        view = make_view(s.geometry, x)
        xw = view.to_work(x)  # where the variable, the cap and the DSSIM budget live
        simg_tanh = torch.atanh((xw - 0.5) * TANH_CONSTANT)
        ref_ssim = ReferenceSSIM(xw, max_val=1.0)
        with torch.no_grad():
            if s.targeted:
                refs = [t.to(dev, torch.float32) for t in targets]
            else:
                refs = [clean_embedding(emb, x) for emb in self.surrogates]
            ref_norms = [r.norm(dim=1) for r in refs]

        modifier = self.uniform_noise(generators, xw.shape[1:], -s.init_scale, s.init_scale, dev)
        opt = KerasAdadelta(modifier, s.lr, s.rho, s.eps)
        const = torch.full((n,), float(s.const), device=dev)
        const_diff = torch.ones(n, device=dev)
        outside = torch.ones(n, device=dev)  # +1 below the band, -1 above, 0 inside (v1.0's outside_list)
        maximize = not s.targeted
        best_feat = torch.zeros(n, device=dev) if maximize else torch.full((n,), float("inf"), device=dev)
        best = x.clone()
        best_d = torch.zeros(n, device=dev)  # DSSIM of the kept iterate where the budget lives
        last = (x, torch.zeros(n, device=dev), torch.zeros(n, device=dev))

        for it in range(1, s.steps + 1):
            with torch.enable_grad():
                modifier.requires_grad_(True)
                awork = torch.tanh(simg_tanh + modifier) / TANH_CONSTANT + 0.5
                delta = (awork - xw).clamp(-cap, cap)
                d = ref_ssim.dssim(xw + delta)
                aimg = view.apply(delta)  # the image that gets saved; the surrogates see it
                dists = [((emb(aimg) - r) ** 2).sum(dim=1) / rn for emb, r, rn in zip(self.surrogates, refs, ref_norms)]
                if s.ensemble == "min":
                    feat = torch.stack(dists).min(dim=0).values
                else:  # summed in order, as v1.0.2
                    feat = torch.zeros(n, device=dev)
                    for dist in dists:
                        feat = feat + dist
                hinge = (d - s.th).clamp_min(0.0)
                if maximize:
                    loss = const * hinge**2 - const_diff * feat
                else:
                    loss = const * hinge**2 + s.target_weight * feat
                (grad,) = torch.autograd.grad(loss.sum(), modifier)
            modifier = modifier.detach()
            opt.step(modifier, grad)
            if it == 1:  # v1.0: modifier - 0.01 sign(grad) in a new variable (fresh optimiser state)
                modifier.sub_(grad.sign(), alpha=s.sign_nudge)
                opt.reset()
            if s.cap == "project":
                modifier = _project_into_cap(modifier, simg_tanh, xw, cap)

            with torch.no_grad():
                aimg, d, feat = aimg.detach(), d.detach(), feat.detach()
                better = feat > best_feat if maximize else feat < best_feat
                keep = (d <= hi_band) & better
                best_feat = torch.where(keep, feat, best_feat)
                best = torch.where(keep.view(-1, 1, 1, 1), aimg, best)
                best_d = torch.where(keep, d, best_d)
                if maximize:
                    const_diff, outside = _adapt_const_diff(
                        d, const_diff, outside, lo_band, hi_band, s.const_diff_bound
                    )
                last = (aimg, d, feat)

        fallback = torch.zeros(n, dtype=torch.bool, device=dev)
        if maximize and s.save_last_on_failed and s.steps > 0:
            last_img, last_d, last_feat = last
            fallback = (best_feat < s.fallback_feature) & (last_d < s.fallback_dssim) & (last_feat > best_feat)
            best = torch.where(fallback.view(-1, 1, 1, 1), last_img, best)
            best_d = torch.where(fallback, last_d, best_d)
        stats = {"fallback": fallback.float()}
        if s.geometry != "chip":  # the budget is not measured on the output itself: report where it is
            stats["dssim_work"] = best_d
        return best.clamp(0, 1), stats

    def _quantize(self, x, out, own_stats):
        s = self.settings
        to_work = make_view(s.geometry, x).to_work
        q, scale = _budget_guard(x, out, (1 + s.band) * s.th, own_stats["fallback"].to(x.device) > 0, to_work)
        own_stats["budget_scale"] = scale
        return q


def _project_into_cap(modifier: torch.Tensor, simg_tanh: torch.Tensor, xw: torch.Tensor, cap: float) -> torch.Tensor:
    """The modifier whose image lies within +-cap of `xw` (pixels in [0, 1]): entries whose image is past
    the cap are moved to just inside it (0.1% of the cap), so the clip in the loss never cuts their gradient."""
    with torch.no_grad():
        img = torch.tanh(simg_tanh + modifier) / TANH_CONSTANT + 0.5
        inner = cap * (1 - 1e-3)
        past = (img - xw).abs() > inner
        if not past.any():
            return modifier
        inside = torch.minimum(torch.maximum(img, xw - inner), xw + inner)
        moved = torch.atanh((inside - 0.5) * TANH_CONSTANT) - simg_tanh
        return torch.where(past, moved, modifier)


def _budget_guard(
    x: torch.Tensor, out: torch.Tensor, bound: float, exempt: torch.Tensor, to_work=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit round `out`; where the rounded image's DSSIM to `x` exceeds `bound` (and the image is not
    `exempt`), shrink its cloak x + a (out - x) with the largest a in 0.99, 0.98, ... that fits.
    `to_work` maps images to the view the budget is measured in (None: the images themselves).
    Returns (rounded images, a per image)."""
    if to_work is None:
        to_work = lambda images: images  # noqa: E731
    x_work = to_work(x)
    q = quantize(out)
    scale = torch.ones(len(x), device=x.device)
    with torch.no_grad():
        over = (dssim(to_work(q), x_work) > bound) & ~exempt
        step = 0
        while over.any() and step < 100:
            step += 1
            idx = over.nonzero().flatten()
            a = 1.0 - 0.01 * step
            cand = quantize(x[idx] + a * (out[idx] - x[idx]))
            q[idx] = cand
            scale[idx] = a
            over[idx] = dssim(to_work(cand), x_work[idx]) > bound
    return q, scale


def _adapt_const_diff(d, const_diff, outside, lo_band: float, hi_band: float, bound: float):
    """v1.0's per-image const_diff rule, vectorised (see the module docstring)."""
    up = (d <= lo_band) & (const_diff <= bound)
    down = ~up & (d >= hi_band) & (const_diff >= 1.0 / bound)
    one = torch.ones_like(const_diff)
    new = torch.where(
        up,
        torch.where(outside == -1, one, const_diff * 2),
        torch.where(down, torch.where(outside == 1, one, const_diff / 2), one),
    )
    new_outside = torch.where(up, one, torch.where(down, -one, torch.zeros_like(one)))
    return new, new_outside
