"""What every cloaking attack shares: surrogates, seeds, batching, per-image statistics, the config.

An attack is a small object you call on a batch (torchattacks style)::

    atk = create_attack("fawkes", mode="high")
    cloaked = atk(images)                  # (N, 3, H, W) in [0, 1] -> same shape, [0, 1]
    res = atk.run(images)                  # res.images, res.stats["dssim"], ...

Randomness: each image's random start comes from a generator seeded with (attack seed, sha256 of the
image's pixels), so an image's random start does not depend on which other images share its batch,
on the batch size, or on the order of the inputs (resume-safe). Same inputs, seed and batch size give
bit-identical outputs on CPU. Another batch composition (or device) changes float rounding, which
can flip the sign of near-zero gradients; the optimisation then takes a slightly different path, so
the cloak differs pixel by pixel (Fawkes high with dlib-resnet29: about 2 grey levels on average)
while its statistics (DSSIM, embedding shift) stay the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..models.base import FaceEmbedder
from ..utils.device import resolve_device
from ..utils.errors import ConfigError
from ..utils.fingerprint import image_digest
from ..utils.images import check_unit_images, quantize
from ..utils.metrics import dssim, psnr
from ..utils.seeding import stable_seed
from .surrogates import SurrogateSpec, describe_surrogate, resolve_surrogates

__all__ = ["AttackResult", "CloakAttack", "check_knobs"]

#: what every attack spec takes besides its settings' fields (`attacks.create_attack`, `adaptive.adaptive_options`)
SPEC_KEYS = ("embedders", "seed", "batch_size", "label", "through", "gradient", "eot_noise")


def check_knobs(kind: str, knobs: dict, settings: type, *extra: str) -> None:
    """A `ConfigError` naming the `knobs` that are not fields of the dataclass `settings`; the options it lists
    as known are those fields, `extra` (e.g. Fawkes' mode) and `SPEC_KEYS`."""
    known = {f.name for f in fields(settings)}
    unknown = sorted(set(knobs) - known)
    if unknown:
        known |= {*extra, *SPEC_KEYS}
        raise ConfigError(f"{kind}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _integer(what: str, key: str, value: Any) -> int:
    """`value` as an int; text or a fraction (`lowkey:seed=abc` from a spec) is a `ConfigError` naming the option."""
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ConfigError(f"{what}: {key} must be an integer, got {value!r}")
    return int(value)


@dataclass
class AttackResult:
    """Cloaked images (N, 3, H, W) in [0, 1] and per-image statistics, each a (N,) float tensor.

    Always present: `dssim` ((1 - SSIM) / 2), `psnr` (dB), `linf` (largest per-pixel change on the
    [0, 1] scale; x 255 for grey levels) and `shift_<surrogate>` (L2 distance between the clean and
    cloaked L2-normalised embeddings, 0..2) for every surrogate. Attacks add their own (Fawkes:
    `fallback`).
    """

    images: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float]]:
        """One {stat: value} dict per image (for CSV files)."""
        keys = list(self.stats)
        cols = [self.stats[k].detach().cpu().tolist() for k in keys]
        return [dict(zip(keys, vals)) for vals in zip(*cols)] if keys else [{} for _ in range(len(self.images))]

    @staticmethod
    def concat(parts: Sequence["AttackResult"]) -> "AttackResult":
        """The results one after another; results of no image add nothing (their stats may be fewer: an attack's own
        stats are known only once it ran)."""
        full = [p for p in parts if len(p.images)]
        if not full:
            return parts[0] if parts else AttackResult(torch.empty(0, 3, 0, 0), {})
        keys = list(full[0].stats)
        return AttackResult(
            torch.cat([p.images for p in full]),
            {k: torch.cat([p.stats[k] for p in full]) for k in keys},
        )


class CloakAttack:
    """Base class. Subclasses set `kind` and `algorithm`, keep their knobs in a `settings` dataclass (or implement
    `_settings()`: every knob as a JSON-serialisable dict), and implement `name` and `_attack_batch(x, generators)`,
    with keyword parameters after those for the attack's own per-image inputs (`run`'s `extra`: Fawkes' `targets`); a
    knob added after cloaks were cached goes in `EARLIER`.

    Args:
        surrogates: resolved `FaceEmbedder`s (see `surrogates.resolve_surrogates`).
        seed: seeds every random choice.
        device: where the optimisation runs (None: CUDA if available, else CPU).
        batch_size: images optimised together; results do not depend on it (up to float rounding).
    """

    kind: str = ""
    algorithm: str = ""  # bump when the algorithm's output changes: it is part of the cache key
    #: A knob added after cloaks were cached is left out of the key at the value that reproduces the earlier cloaks;
    #: any other value enters the key. Its author adds {knob: that value} here (`key_settings` applies it), so earlier
    #: cache entries and the published runs' keys stay valid.
    EARLIER: ClassVar[Mapping[str, Any]] = {}
    #: {knob in EARLIER: knobs only its later values use}: left out of the key with it at its earlier value, whatever
    #: their own values (OPOM's plain variant ignores `droprate`).
    EARLIER_ALONG: ClassVar[Mapping[str, Sequence[str]]] = {}

    @property
    def pushes_from_clean(self) -> bool:
        """The cloaks are pushed away from `surrogates.clean_embedding` of the photos (untargeted Fawkes, LowKey), so
        an adaptive surrogate through a defense that rounds changes them, and `config` records it."""
        return False

    def __init__(self, surrogates: Sequence[SurrogateSpec], *, seed: int = 0, device=None, batch_size: int = 16):
        what = self.kind or type(self).__name__
        seed, batch_size = _integer(what, "seed", seed), _integer(what, "batch_size", batch_size)
        if batch_size < 1:
            raise ConfigError(f"{what}: batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.surrogates: list[FaceEmbedder] = resolve_surrogates(surrogates, self.device)
        self.seed = seed
        self.batch_size = batch_size
        self._surrogate_info: list[dict] | None = None

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:  # pragma: no cover - overridden
        return self.kind

    def recorded_settings(self) -> dict[str, Any] | None:
        """Every field of the attack's `settings` dataclass, JSON-ready (None for an attack without one): what
        `puface cloak` records as OUT's "settings" (`attacks.folder`), the knobs `key_settings` leaves out too."""
        settings = getattr(self, "settings", None)
        if settings is None or not is_dataclass(settings) or isinstance(settings, type):
            return None
        return json.loads(json.dumps(asdict(settings), default=str))

    def _settings(self) -> dict[str, Any]:
        """Every knob, as the cache key holds them before `key_settings` leaves out the EARLIER values:
        `recorded_settings()` ({} without a settings dataclass). The one difference between the two: an attack adds
        here the knobs it keeps outside its settings dataclass (Fawkes' `mode`; the record has them in its "attack",
        `config`), or, without one, returns all of its knobs here (the record's "settings" is then None)."""
        return self.recorded_settings() or {}

    def key_settings(self) -> dict[str, Any]:
        """`_settings()` as the cache key holds them: without each `EARLIER` knob at its earlier value (and the knobs
        `EARLIER_ALONG` names with it)."""
        settings = self._settings()
        drop = {k for k, v in self.EARLIER.items() if k in settings and settings[k] == v}
        drop |= {k for knob in drop for k in self.EARLIER_ALONG.get(knob, ())}
        return {k: v for k, v in settings.items() if k not in drop}

    @property
    def config(self) -> dict[str, Any]:
        """Every setting that changes the output, JSON-serialisable (used as the cache key)."""
        if self._surrogate_info is None:
            self._surrogate_info = [describe_surrogate(e, self.pushes_from_clean) for e in self.surrogates]
        return {
            "attack": self.kind,
            "name": self.name,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "surrogates": self._surrogate_info,
            **self.key_settings(),
        }

    def __repr__(self) -> str:
        sur = ", ".join(e.name for e in self.surrogates)
        return f"{type(self).__name__}(name={self.name!r}, surrogates=[{sur}], seed={self.seed}, device={self.device})"

    # ------------------------------------------------------------------ running
    def image_seeds(self, images: torch.Tensor) -> list[int]:
        """Per-image seeds: (attack seed, attack kind, sha256 of the pixels)."""
        return [stable_seed(self.seed, self.kind, image_digest(im)) for im in images]

    def _generators(self, images: torch.Tensor) -> list[torch.Generator]:
        gens = []
        for s in self.image_seeds(images):
            g = torch.Generator(device="cpu")
            g.manual_seed(s % (2**63))
            gens.append(g)
        return gens

    def _check_images(self, images: torch.Tensor, min_side: int) -> None:
        """The models' check (`check_unit_images`: a float (N, 3, H, W) tensor, finite, not 0..255), then the
        attack's own: at least `min_side` px, values strictly in [0, 1]; a ValueError naming the attack."""
        who = f"attack {self.name}"
        check_unit_images(images, who)
        if min(images.shape[-2:]) < min_side:
            raise ValueError(f"{who}: images must be at least {min_side}x{min_side} px, got {tuple(images.shape[-2:])}")
        if images.numel():
            lo, hi = (float(v) for v in torch.aminmax(images.detach()))
            if lo < 0 or hi > 1:
                raise ValueError(f"{who}: expected values in [0, 1], got [{lo:.3g}, {hi:.3g}]")

    @property
    def min_side(self) -> int:
        """The smallest image side, in px, the attack takes."""
        return 11

    @property
    def linf_budget(self) -> float | None:
        """The largest per-pixel change the attack may make on its output, [0, 1] scale (None: no such bound)."""
        return None

    def run(
        self, images: torch.Tensor, *, quantize_output: bool = False, progress: bool = False, **extra
    ) -> AttackResult:
        """Cloak `images` (N, 3, H, W) float in [0, 1]; returns images and per-image stats.

        Args:
            quantize_output: round the cloaked images to 8 bits (as a PNG stores them) before the
                statistics are measured, so the stats describe what gets saved.
            progress: show a tqdm bar over images.
            extra: attack-specific per-image inputs (Fawkes: `targets`), split into batches here.
        The result is on the input's device.
        """
        self._check_images(images, self.min_side)
        home = images.device
        parts: list[AttackResult] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(images), desc=self.name, unit="img", dynamic_ncols=True)
        try:
            for i in range(0, len(images), self.batch_size):
                x = images[i : i + self.batch_size].to(self.device, torch.float32)
                part_extra = {k: self._slice_extra(v, i, i + len(x)) for k, v in extra.items()}
                gens = self._generators(x)
                out, own_stats = self._attack_batch(x, gens, **part_extra)
                out = out.detach().clamp(0, 1)
                if quantize_output:
                    out = self._quantize(x, out, own_stats)
                stats = self.measure(x, out)
                stats.update({k: v.detach().float().cpu() for k, v in own_stats.items()})
                parts.append(AttackResult(out.to(home), stats))
                if bar is not None:
                    bar.update(len(x))
        finally:
            if bar is not None:
                bar.close()
        if not parts:
            return self._empty_result(images)
        return AttackResult.concat(parts)

    def _empty_result(self, images: torch.Tensor) -> AttackResult:
        """The result of no image: the images as given, and the stats every result holds (dssim, psnr, linf, shift per
        surrogate), each of shape (0,), so that code reading them needs no special case."""
        names = ["dssim", "psnr", "linf", *(f"shift_{emb.name}" for emb in self.surrogates)]
        return AttackResult(images.clone(), {k: torch.empty(0) for k in names})

    @staticmethod
    def _slice_extra(value, lo: int, hi: int):
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            return value[lo:hi] if value.ndim > 1 else value
        if isinstance(value, (list, tuple)):
            return type(value)(CloakAttack._slice_extra(v, lo, hi) for v in value)
        return value

    def __call__(self, images: torch.Tensor, **extra) -> torch.Tensor:
        """Just the cloaked images, (N, 3, H, W) in [0, 1]."""
        return self.run(images, **extra).images

    def _attack_batch(
        self, x: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _quantize(self, x: torch.Tensor, out: torch.Tensor, own_stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """8-bit rounding of a batch's outputs (attacks with a budget keep it here)."""
        return quantize(out)

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def measure(self, clean: torch.Tensor, cloaked: torch.Tensor) -> dict[str, torch.Tensor]:
        """dssim, psnr, linf and shift_<surrogate> of each (clean, cloaked) pair, (N,) CPU tensors."""
        clean = clean.to(self.device, torch.float32)
        cloaked = cloaked.to(self.device, torch.float32)
        stats = {
            "dssim": dssim(cloaked, clean),
            "psnr": psnr(cloaked, clean),
            "linf": (cloaked - clean).abs().flatten(1).amax(dim=1),
        }
        for emb in self.surrogates:
            stats[f"shift_{emb.name}"] = (emb(cloaked) - emb(clean)).norm(dim=1)
        return {k: v.float().cpu() for k, v in stats.items()}

    @staticmethod
    def uniform_noise(
        generators: list[torch.Generator], shape: Sequence[int], low: float, high: float, device
    ) -> torch.Tensor:
        """(N, *shape) uniform noise in [low, high), image i drawn from generators[i]."""
        noise = torch.stack([torch.rand(tuple(shape), generator=g) for g in generators])
        return (noise * (high - low) + low).to(device)
