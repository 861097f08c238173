"""OPOM (Zhong & Deng, "OPOM: Customized Invisible Cloak towards Face Privacy Protection", TPAMI 2022,
arXiv 2205.11981): one person-specific universal privacy mask per identity, optimised on a set of that
person's photos and added to every photo of the person.

The mask pushes the protected photos' features out of the *feature subspace* of the person's clean
photos, approximated by (the reference code's `loss_type`):

* ``"affine"`` (OPOM-AffineHull, 8): distance of each masked photo's feature to its projection onto the
  affine hull of the clean features {sum_i a_i f_i : sum_i a_i = 1}; closed form here (the reference
  solves one constrained least squares per photo with cvxpy: the same projection);
* ``"convex"`` (OPOM-ConvexHull, 9): to the convex hull (a_i >= 0 as well), solved by projected gradient
  on the simplex; the first `center_steps` steps use the class centre, as the reference's `nter`;
* ``"center"`` (OPOM-ClassCenter, 7): to the mean clean feature;
* ``"fi-uap"`` (the paper's FI-UAP baseline, 0): each masked photo's distance to its own clean feature.

Features are L2-normalised, the distance is the mean squared difference (the reference's `MSELoss`),
summed over the surrogates. The optimisation is the reference's `FIM`: a random start x + U(-eps, eps)
per photo, then `steps` times: the gradient of the loss averaged over the person's photos, a signed step
of `step_size`, the mask = the mean of (x_adv - x) clipped to [-eps, eps], x_adv = clip(x + mask, 0, 1).
Defaults as the released scripts (``--alpha 8 --round 16 --step_size 1``): eps 8/255, 16 steps of 1/255.

``variant = "dfanet-mfim"`` is the reference's transfer variant (`DFANet_MFIM`, its scripts' ``--base 0 --DFANet 1
--round 100``), made for face models the mask was not made with: 100 steps unless `steps` is given, the same random
start, eps and step size, and at every step (a) both the clean and the masked photos' features come from the
surrogates with dropout (rate `droprate`, the scripts' 0.1) on their intermediate feature maps
(`feature_dropout`: every convolution's output, as the reference's IR-50 drops its stem and residual-branch
convolutions), fresh masks each pass, drawn from per-photo generators seeded by the group's; (b) momentum
(MI-FGSM, decay 1): each photo's gradient divided by the reference's normaliser (mean |g| over the photos,
channels and rows: one value per image column; a column no surrogate sees has no gradient and stays 0) is added
to its running sum, each photo steps by `step_size` along the sign of its own sum, and the mask is the mean step,
clipped to eps.
About 15x the plain variant's time (100 steps of two forward passes; 30 chips of 150 px against dlib ResNet-29 on one
CPU thread: 122 s vs 8.1 s). Meant for residual surrogates: on dlib ResNet-29 dropout 0.1 keeps a chip's embedding
at cosine 0.96 to the one without it, but on SFace (depthwise blocks, few shortcuts) at about 0.2, below two photos
of one person's (0.64), and SFace masks made so do not protect on SFace (docs/RESULTS.md 15.12): lower `droprate`
there. The attack measures this at its first step for free (the clean photos' features with that step's dropout
against those without): the per-photo cosine is the stat `dropout_cos_<surrogate>`, and a group whose mean falls
below `DROPOUT_COS_WARN` warns once per surrogate (8 LFW chips: dlib 0.99 / 0.98 / 0.96 / 0.92 at droprate 0.02 /
0.05 / 0.1 / 0.2, SFace 0.85 / 0.62 / 0.24 / 0.11).
Budgets are in grey levels (0-255). Images keep their size: the mask has the photos' resolution, the
surrogates resize inside (OPOM worked on 112x112 ArcFace crops).

Where this differs from the reference (the released code, zhongyy/OPOM):

* the default is its plain `FIM` (``--base 1``); its `DFANet_MFIM` is the `variant` above, with dropout on the
  convolution outputs of puface's models (not on its IR-50) and its random start seeded (it drew from torch's
  global generator);
* the mask is fitted on the photos it is added to (`run`'s group); OPOM's evaluation fits it on 10 photos of the
  person and adds it to 5 others, so at query time a mask fitted on the probes themselves is the stronger one;
* on 150 px chips SFace sees the mask resampled to its 112 px layout, a weaker mask than one made on 112 px crops;
* the convex hull's projection is approximate (`hull_iters`; cvxpy's is exact), and 8-bit outputs round
  (`quantize_output`) where the reference's evaluation truncates (``astype(uint8)``): both small.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..utils.errors import ConfigError
from ..utils.registry import typed_settings
from .base import check_knobs
from .feature_dropout import FeatureDropout, dropout_layers
from .group import GroupCloakAttack, Reference
from .surrogates import SurrogateSpec, available_defaults

__all__ = ["OPOM", "OPOMSettings", "HULLS", "VARIANTS", "affine_projection", "simplex_projection"]

HULLS = ("affine", "convex", "center", "fi-uap")
VARIANTS = ("fim", "dfanet-mfim")
#: the transfer variant's step count when `steps` is not given (the scripts' ``--round 100``)
DFANET_STEPS = 100
#: dfanet-mfim warns about a surrogate whose clean embeddings under dropout keep a mean cosine below this to those
#: without (a model the mask is no longer fitted to: module docstring)
DROPOUT_COS_WARN = 0.8


@dataclass(frozen=True)
class OPOMSettings:
    """Every knob; `epsilon` and `step_size` in grey levels (0-255)."""

    hull: str = "affine"
    epsilon: float = 8.0
    step_size: float = 1.0
    steps: int = 16
    random_start: bool = True
    center_steps: int = 5  # convex hull only: steps that use the class centre first (the reference's nter)
    hull_iters: int = 100  # convex hull only: projected-gradient iterations per projection
    variant: str = "fim"  # "fim" (plain signed steps) or "dfanet-mfim" (momentum + feature dropout; module docstring)
    droprate: float = 0.1  # dfanet-mfim only: dropout rate on the surrogates' feature maps, [0, 1)

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"opom: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0 <= self.droprate < 1:
            raise ConfigError(f"opom: droprate must be in [0, 1), got {self.droprate}")
        if self.hull not in HULLS:
            raise ConfigError(f"opom: hull must be one of {', '.join(HULLS)}, got {self.hull!r}")
        if not 0 < self.epsilon <= 255 or not self.step_size > 0:
            raise ConfigError(
                f"opom: epsilon must be in (0, 255] and step_size > 0 (grey levels), "
                f"got {self.epsilon}, {self.step_size}"
            )
        if self.steps < 0 or self.center_steps < 0 or self.hull_iters < 1:
            raise ConfigError("opom: steps and center_steps must be >= 0, hull_iters >= 1")


def affine_projection(points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Projection of each row of `points` (M, D) onto the affine hull of the rows of `anchors` (n, D)."""
    c = anchors.mean(dim=0, keepdim=True)
    centred = anchors - c
    if len(anchors) < 2:
        return c.expand_as(points)
    u, s, _ = torch.linalg.svd(centred.T, full_matrices=False)  # columns of u span the hull's directions
    u = u[:, s > s.max() * 1e-6]
    return c + (points - c) @ u @ u.T


def simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` (M, n) onto the probability simplex (Duchi et al. 2008)."""
    n = v.shape[1]
    mu, _ = v.sort(dim=1, descending=True)
    css = mu.cumsum(dim=1) - 1
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = mu - css / k > 0
    rho = cond.to(v.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0)


def convex_projection(points: torch.Tensor, anchors: torch.Tensor, iters: int) -> torch.Tensor:
    """Approximate projection of each row of `points` (M, D) onto the convex hull of `anchors` (n, D):
    min_a ||a A - y||^2 over the simplex, by projected gradient (step 1 / Lipschitz constant)."""
    n = len(anchors)
    a = torch.full((len(points), n), 1.0 / n, dtype=points.dtype, device=points.device)
    gram = anchors @ anchors.T
    lip = torch.linalg.matrix_norm(gram, ord=2).clamp(min=1e-12)
    target = points @ anchors.T
    for _ in range(iters):
        a = simplex_projection(a - (a @ gram - target) / lip)
    return a @ anchors


class OPOM(GroupCloakAttack):
    """OPOM privacy masks (see the module docstring): one universal mask per distinct label.

    Args:
        embedders: surrogate face models (names, model files or `FaceEmbedder`s; default dlib-resnet29
            and sface), their losses summed.
        seed, device, batch_size: see `CloakAttack` (`batch_size`: images per surrogate pass).
        **knobs: fields of `OPOMSettings`.
    """

    kind = "opom"
    algorithm = "opom-fim/1"
    EARLIER = {"variant": "fim"}  # the plain variant, the only one before `variant` and `droprate`
    EARLIER_ALONG = {"variant": ("droprate",)}  # dfanet-mfim's alone

    def __init__(self, embedders: Sequence[SurrogateSpec] | None = None, *, seed: int = 0, device=None,
                 batch_size: int = 16, **knobs: Any):
        check_knobs("opom", knobs, OPOMSettings)
        self.settings = replace(OPOMSettings(), **knobs)
        self.settings = typed_settings(self.settings, "opom")
        self.settings.check()
        if self.settings.variant == "dfanet-mfim" and "steps" not in knobs:
            self.settings = replace(self.settings, steps=DFANET_STEPS)
        if embedders is None:
            embedders = available_defaults(["dlib-resnet29", "sface"], "opom")
        super().__init__(embedders, seed=seed, device=device, batch_size=batch_size)
        self._warned: set[str] = set()  # surrogates already warned about (dfanet-mfim's dropout cosine)
        if self.settings.variant == "dfanet-mfim":
            bare = [e.name for e in self.surrogates if not dropout_layers(e)]
            if bare:
                raise ConfigError(
                    f"opom: variant dfanet-mfim drops out convolution outputs, and surrogate {bare[0]} has no "
                    "torch convolution (a TorchScript model?)"
                )

    @property
    def name(self) -> str:
        name = "opom" if self.settings.hull == "affine" else f"opom-{self.settings.hull}"
        return name if self.settings.variant == "fim" else f"{name}-dfanet"

    @property
    def linf_budget(self) -> float:
        return self.settings.epsilon / 255.0

    def _target(self, y: torch.Tensor, f: torch.Tensor, step: int) -> torch.Tensor:
        """The point each masked feature y (n, D) is pushed away from at `step`, given the clean features f (n, D):
        its projection onto the hull (the class centre for the first `center_steps` of the convex hull), or its
        own clean feature (fi-uap); detached."""
        s = self.settings
        if s.hull == "fi-uap":
            target = f
        elif s.hull == "center" or (s.hull == "convex" and step < s.center_steps):
            target = f.mean(dim=0, keepdim=True).expand_as(y)
        elif s.hull == "affine":
            target = affine_projection(y.detach(), f)
        else:
            target = convex_projection(y.detach(), f, s.hull_iters)
        return target.detach()

    def _loss(self, adv: list[torch.Tensor], clean: list[torch.Tensor], step: int) -> torch.Tensor:
        """The feature-subspace distance (to maximise), summed over surrogates."""
        total = adv[0].new_zeros(())
        for y, f in zip(adv, clean):
            total = total + F.mse_loss(y, self._target(y, f, step))
        return total

    def _features(self, x: torch.Tensor, dropout: FeatureDropout | None = None) -> list[torch.Tensor]:
        if dropout is not None:
            return [F.normalize(dropout.apply(emb, x, self.batch_size), dim=1) for emb in self.surrogates]
        return [F.normalize(self._batched(emb, x), dim=1) for emb in self.surrogates]

    def _mask(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The universal mask (1, 3, H, W) of one person's photos x (n, 3, H, W), and its per-photo stats (n,):
        `hull_distance`, the squared L2 distance of its unit feature to the configured hull (fi-uap: to its own clean
        feature), mean over the surrogates; dfanet-mfim also `dropout_cos_<surrogate>` (`_mfim`)."""
        s = self.settings
        eps = s.epsilon / 255.0
        with torch.no_grad():
            clean = self._features(x)
        x_adv = x.clone()
        if s.random_start:
            x_adv = x + self.uniform_noise([generator] * len(x), x.shape[1:], -eps, eps, x.device)
        stats: dict[str, torch.Tensor] = {}
        if s.variant == "dfanet-mfim":
            mask, cos = self._mfim(x, x_adv, generator, clean)
            stats.update({f"dropout_cos_{emb.name}": c for emb, c in zip(self.surrogates, cos)})
        else:
            mask = self._fim(x, x_adv, clean)
        with torch.no_grad():
            adv = self._features((x + mask).clamp(0, 1))
            last = max(s.steps, s.center_steps)  # the convex hull itself, not the centre of its first steps
            dist = torch.stack([((y - self._target(y, f, last)) ** 2).sum(dim=1) for y, f in zip(adv, clean)])
        return mask, {"hull_distance": dist.mean(dim=0), **stats}

    def _warn_dropout(self, name: str, cos: float) -> None:
        """Warn once per surrogate whose mean dropout cosine `cos` is below `DROPOUT_COS_WARN`."""
        if not cos < DROPOUT_COS_WARN or name in self._warned:  # NaN (no step) too
            return
        self._warned.add(name)
        warnings.warn(
            f"opom: droprate {self.settings.droprate:g} leaves surrogate {name}'s embedding of a clean photo at mean "
            f"cosine {cos:.2f} to its own (< {DROPOUT_COS_WARN:g}): the dfanet-mfim mask is fitted to another model "
            "and may not protect; set a lower droprate (e.g. droprate=0.02) or use a residual surrogate "
            "(dlib-resnet29)",
            stacklevel=3,
        )

    def _fim(self, x: torch.Tensor, x_adv: torch.Tensor, clean: list[torch.Tensor]) -> torch.Tensor:
        """The reference's `FIM` from the start x_adv: signed steps of the photos' mean gradient; the mask
        (1, 3, H, W)."""
        s = self.settings
        eps, alpha = s.epsilon / 255.0, s.step_size / 255.0
        mask = torch.zeros_like(x[:1])
        for step in range(s.steps):
            with torch.enable_grad():
                x_adv = x_adv.detach().requires_grad_(True)
                loss = self._loss(self._features(x_adv), clean, step)
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.mean(dim=0, keepdim=True).sign()
            mask = (x_adv - x).mean(dim=0, keepdim=True).clamp(-eps, eps)
            x_adv = (x + mask).clamp(0, 1)
        return mask

    def _mfim(self, x: torch.Tensor, x_adv: torch.Tensor, generator: torch.Generator,
              clean0: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's `DFANet_MFIM` from the start x_adv: momentum steps against dropout surrogates, the clean
        features recomputed with dropout each step. Returns the mask (1, 3, H, W) and, per surrogate and photo
        (S, n), the cosine of the first step's clean feature with dropout to `clean0`, the one without (unit
        features, one per surrogate; `_warn_dropout` at that step); NaN when `steps` is 0."""
        s = self.settings
        eps, alpha = s.epsilon / 255.0, s.step_size / 255.0
        seeds = torch.randint(0, 2**62, (len(x),), generator=generator).tolist()
        gens = [torch.Generator(device=x.device).manual_seed(int(v)) for v in seeds]  # one per photo
        mask = torch.zeros_like(x[:1])
        momentum = torch.zeros_like(x)
        cos = torch.full((len(clean0), len(x)), float("nan"))
        with FeatureDropout(self.surrogates, s.droprate, gens) as dropout:
            for step in range(s.steps):
                with torch.no_grad():
                    clean = self._features(x, dropout)
                if step == 0:  # free (the features are computed anyway); warns before the other 99 steps
                    cos = torch.stack([(f * f0).sum(dim=1) for f, f0 in zip(clean, clean0)]).cpu()
                    for emb, c in zip(self.surrogates, cos):
                        self._warn_dropout(emb.name, float(c.mean()))
                with torch.enable_grad():
                    x_adv = x_adv.detach().requires_grad_(True)
                    loss = self._loss(self._features(x_adv, dropout), clean, step)
                    (grad,) = torch.autograd.grad(loss, x_adv)
                scale = grad.abs().mean(dim=(0, 1, 2), keepdim=True)  # (1, 1, 1, W): the reference's normaliser
                momentum = momentum + grad / scale.clamp(min=torch.finfo(grad.dtype).tiny)
                x_adv = x_adv.detach() + alpha * momentum.sign()
                mask = (x_adv - x).mean(dim=0, keepdim=True).clamp(-eps, eps)
                x_adv = (x + mask).clamp(0, 1)
        return mask, cos

    def _attack_group(self, x: torch.Tensor, labels: list, reference: Reference | None, generator: torch.Generator):
        out = torch.empty_like(x)
        stats: dict[str, torch.Tensor] = {}
        for lab in dict.fromkeys(labels):
            idx = torch.tensor([i for i, label in enumerate(labels) if label == lab])
            mask, own = self._mask(x[idx], generator)
            out[idx] = (x[idx] + mask).clamp(0, 1)
            for k, v in own.items():
                stats.setdefault(k, torch.zeros(len(x)))[idx] = v.detach().float().cpu()
        return out, stats
