"""LowKey (Cherepanova et al., ICLR 2021) in PyTorch, faithful to the released attack as FaceCure ran it.

Reference: LowKey's `util/attack_utils.py`, `prepare_utils.py`, `feature_extraction_utils.py` and
FaceCure's `lowkey_attack.py` (attack_type 'lpips', combination=True, no alignment):

* ensemble: every surrogate f_i appears twice, behind a 7x7 Gaussian blur (sigma 3, reflect padding)
  and plain;
* features with flip test-time augmentation: F(x) = l2norm(f(x) + f(hflip(x))) on the raw outputs;
* reference: F_i(x) of the clean image from the plain models (used for both copies of f_i);
* objective, maximised: mean over ensemble entries and embedding dimensions of
  (F_e(x') - F_e(x))^2 / ||F_e(x)||, minus c_sim * LPIPS_alex(x, x') (c_sim = 0.05);
* x' = x + U(-0.005, 0.005), then 50 steps x' <- x' + 0.0025 sign(grad); no projection, no clamping
  inside the loop (so |x' - x| <= 50 * 0.0025 + 0.005 = 0.13); clamp to [0, 1] at the end.

`clamp` = "steps" clamps the start and every iterate to [0, 1] instead (same step rule and bound), so the
surrogates see only images the saved cloak can be. It is the default ("auto") of an adaptive LowKey (a surrogate
`ThroughDefense`): the defense deployed receives the clamped 8-bit cloak, so optimising through it on pixels
outside [0, 1] (up to 0.1 past them) aimed at inputs it never gets. Plain LowKey keeps "end", as released.

The perceptual term is ST-LPIPS(alex) from `puface.attacks.perceptual` (needs the `stlpips-pytorch`
weights package, a dependency of puface). Without it the default (`perceptual="lpips"`) is an
error, not a silent change of attack: `perceptual="ssim"` asks for 1 - SSIM (same window as Fawkes'
DSSIM, i.e. twice the DSSIM) and `"auto"` takes LPIPS when installed, else 1 - SSIM with a warning.
The resolved choice is part of the config (and so of the cloak cache key).
LowKey resized every face to 112x112 first; here the image keeps its size and the surrogates
resize inside (differentiably).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..utils.errors import ConfigError, MissingDependencyError
from ..utils.filters import GaussianBlur
from ..utils.metrics import ReferenceSSIM
from ..utils.registry import typed_settings
from .base import CloakAttack, check_knobs
from .adaptive import ThroughDefense
from .surrogates import SurrogateSpec, raw_embedding

if TYPE_CHECKING:
    from .perceptual import LPIPS

__all__ = ["LowKey", "LowKeySettings", "PERCEPTUAL_CHOICES", "CLAMP_CHOICES"]

PERCEPTUAL_CHOICES = ("auto", "lpips", "ssim")
CLAMP_CHOICES = ("auto", "end", "steps")


@dataclass(frozen=True)
class LowKeySettings:
    """Every knob; step sizes and noise on the [0, 1] pixel scale."""

    steps: int = 50
    step_size: float = 0.0025
    init_noise: float = 0.005  # uniform start in [-init_noise, init_noise]
    c_sim: float = 0.05  # weight of the perceptual penalty
    perceptual: str = "lpips"  # "lpips" (ST-LPIPS, LowKey's choice), "ssim" (1 - SSIM) or "auto" (lpips if installed)
    lpips_net: str = "alex"
    blur_kernel: int = 7
    blur_sigma: float = 3.0
    combination: bool = True  # each surrogate plain *and* blurred (False: blurred only, as LowKey's flag)
    flip_tta: bool = True
    clamp: str = "auto"  # "end" (as released: once, at the end), "steps" (every iterate), "auto" (steps if adaptive)

    def check(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"lowkey: steps must be >= 0, got {self.steps}")
        if not self.step_size > 0:
            raise ConfigError(f"lowkey: step_size must be > 0, got {self.step_size}")
        if self.init_noise < 0:
            raise ConfigError(f"lowkey: init_noise must be >= 0, got {self.init_noise}")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ConfigError(
                f"lowkey: perceptual must be one of {', '.join(PERCEPTUAL_CHOICES)}, got {self.perceptual!r}"
            )
        if self.clamp not in CLAMP_CHOICES:
            raise ConfigError(f"lowkey: clamp must be one of {', '.join(CLAMP_CHOICES)}, got {self.clamp!r}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ConfigError(f"lowkey: blur_kernel must be odd and >= 1, got {self.blur_kernel}")

    @property
    def max_change(self) -> float:
        """The largest possible per-pixel change, [0, 1] scale: steps * step_size + init_noise."""
        return self.steps * self.step_size + self.init_noise


def _resolve_perceptual(choice: str, net: str) -> str:
    if choice == "ssim":
        return "ssim"
    try:
        from .perceptual import lpips_weights_path

        lpips_weights_path(net)
        return "lpips"
    except (ImportError, MissingDependencyError) as e:
        if choice == "lpips":
            raise MissingDependencyError(
                f"lowkey: LPIPS, LowKey's perceptual penalty, is not available ({e}); install it, or choose another "
                "penalty explicitly: perceptual = \"ssim\" (1 - SSIM; cloaks differ from LowKey as released) or "
                "\"auto\" (LPIPS when installed, else 1 - SSIM)"
            ) from None
        warnings.warn(f"lowkey: LPIPS not available ({e}); using 1 - SSIM as the perceptual penalty", stacklevel=3)
        return "ssim"


class LowKey(CloakAttack):
    """LowKey cloaking (see the module docstring).

    Args:
        embedders: the ensemble (registry names, model paths or `FaceEmbedder`s); None: every
            registered embedder.
        seed, device, batch_size: see `CloakAttack`.
        **knobs: fields of `LowKeySettings`.
    """

    kind = "lowkey"
    algorithm = "lowkey-facecure-port/1"
    EARLIER = {"clamp": "end"}  # LowKey as released, the only way before the knob

    def __init__(
        self,
        embedders: Sequence[SurrogateSpec] | None = None,
        *,
        seed: int = 0,
        device=None,
        batch_size: int = 8,
        **knobs: Any,
    ):
        check_knobs("lowkey", knobs, LowKeySettings)
        settings = replace(LowKeySettings(), **knobs)
        settings = typed_settings(settings, "lowkey")
        settings.check()
        self.settings = replace(settings, perceptual=_resolve_perceptual(settings.perceptual, settings.lpips_net))
        if embedders is None:
            from ..models.registry import distinct_embedders

            embedders = distinct_embedders()  # not the layout variants: on dlib chips they see misaligned faces
            if not embedders:
                raise MissingDependencyError(
                    "lowkey: no face models are installed; reinstall puface (it depends on them) or pass --surrogate"
                )
        super().__init__(embedders, seed=seed, device=device, batch_size=batch_size)
        if self.settings.clamp == "auto":
            adaptive = any(isinstance(e, ThroughDefense) for e in self.surrogates)
            self.settings = replace(self.settings, clamp="steps" if adaptive else "end")
        self.blur = GaussianBlur(self.settings.blur_kernel, self.settings.blur_sigma).to(self.device)
        self._lpips: LPIPS | None = None

    @property
    def name(self) -> str:
        return "lowkey"

    @property
    def pushes_from_clean(self) -> bool:
        return True

    @property
    def min_side(self) -> int:
        side = max(11, self.settings.blur_kernel // 2 + 1)
        return max(side, 21) if self.settings.perceptual == "lpips" else side

    @property
    def linf_budget(self) -> float:
        return self.settings.max_change

    # ------------------------------------------------------------------ pieces
    def _features(self, emb, x: torch.Tensor) -> list[torch.Tensor]:
        """Ensemble entries of one surrogate for x (N, 3, H, W): [blurred, plain] (combination) or
        [blurred], each (N, D) L2-normalised, with flip TTA; one forward pass for all of them."""
        s = self.settings
        views = [self.blur(x)] + ([x] if s.combination else [])
        n = x.shape[0]
        batch = torch.cat([torch.cat([v, v.flip(3)]) if s.flip_tta else v for v in views])
        raw = raw_embedding(emb, batch)
        out = []
        for k in range(len(views)):
            chunk = raw[k * n * (2 if s.flip_tta else 1) : (k + 1) * n * (2 if s.flip_tta else 1)]
            f = chunk[:n] + chunk[n:] if s.flip_tta else chunk
            out.append(F.normalize(f, dim=1))
        return out

    def _reference(self, emb, x: torch.Tensor) -> torch.Tensor:
        """Plain (unblurred) flip-TTA features of the clean images, (N, D) (an adaptive surrogate's without its
        defense: `surrogates.clean_embedding`)."""
        raw = raw_embedding(emb, torch.cat([x, x.flip(3)]) if self.settings.flip_tta else x, clean=True)
        n = x.shape[0]
        return F.normalize(raw[:n] + raw[n:] if self.settings.flip_tta else raw, dim=1)

    def _perceptual(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """d(x') -> (N,) distance to the clean x: LPIPS, or 1 - SSIM."""
        if self.settings.perceptual == "lpips":
            if self._lpips is None:
                from .perceptual import load_lpips

                self._lpips = load_lpips(self.settings.lpips_net, self.device)
            lp = self._lpips
            return lambda y: lp(x, y)
        ref = ReferenceSSIM(x, max_val=1.0)
        return lambda y: 1.0 - ref(y)

    def feature_distance(self, x_adv: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        """LowKey's per-image feature term: mean over ensemble entries and dims of (F - ref)^2 / ||ref||."""
        terms = []
        for emb, r in zip(self.surrogates, refs):
            rn = r.norm(dim=1, keepdim=True)
            for f in self._features(emb, x_adv):
                terms.append((((f - r) ** 2) / rn).mean(dim=1))
        return torch.stack(terms).mean(dim=0)

    # ------------------------------------------------------------------ the attack
    def _attack_batch(self, x: torch.Tensor, generators: list[torch.Generator]):
        s = self.settings
        with torch.no_grad():
            refs = [self._reference(emb, x) for emb in self.surrogates]
        perceptual = self._perceptual(x)
        x_adv = x + self.uniform_noise(generators, x.shape[1:], -s.init_noise, s.init_noise, x.device)
        each = s.clamp == "steps"  # x in [0, 1]: clamping only brings an iterate closer to x, within the bound
        if each:
            x_adv = x_adv.clamp(0, 1)
        for _ in range(s.steps):
            with torch.enable_grad():
                x_adv = x_adv.detach().requires_grad_(True)
                objective = self.feature_distance(x_adv, refs) - s.c_sim * perceptual(x_adv)
                (grad,) = torch.autograd.grad(objective.sum(), x_adv)
            x_adv = x_adv.detach() + s.step_size * grad.sign()
            if each:
                x_adv = x_adv.clamp(0, 1)
        x_adv = x_adv.detach().clamp(0, 1)
        with torch.no_grad():
            perc = perceptual(x_adv)
            feat = self.feature_distance(x_adv, refs)
        return x_adv, {"perceptual": perc, "feature_distance": feat}
