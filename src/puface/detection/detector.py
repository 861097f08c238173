"""`CloakDetector`: which face chips carry a cloak, scored from what purification does to them.

A cloak is a perturbation a purifier trained to remove cloaks takes out, and one that moves a face model's
embedding. Per chip x (float RGB in [0, 1], (N, 3, S, S); other sizes are resized to the detector's chip
size), with P(x) the shipped purifier's output rounded to 8 bits (what `puface purify` writes):

* ``psnr``: PSNR(P(x), x) in dB (natural chips keep about 43 dB);
* ``shift:<embedder>``: 1 - cos(E(x), E(P(x))) on each of the detector's face models (natural chips move
  by about 0.002 on dlib-resnet29, Fawkes-high cloaks by 0.1-0.3);
* ``net``: the logit of a small CNN (`net.ResidualNet`) on P(x) - x and x's high-pass, with the log
  shifts as extra inputs, trained on cloaks of the purifier's training identities (`puface train-detector`).

Each *component* (the log10 shifts, the net's logit, minus the PSNR) is put on one scale by natural
calibration chips: z = (value - median) / (99th percentile - median), so every component exceeds 1 on
about 1% of natural chips; the **score** is the largest z (higher = more likely cloaked). A chip is
called cloaked when its score exceeds the threshold at which a chosen share (the false-positive rate,
default 1%) of the natural calibration chips score higher, on each kind of calibration chip (as they are,
JPEG re-encoded, resized, with noise): the highest of the per-kind thresholds. Each per-kind threshold is set so that
the rate holds on new photos of that kind with a stated confidence (default 0.9; `allowed_above`), not only on
average: with 660 calibration chips per kind, 2 of them may score above it instead of 6. The calibration chips belong
to identities the evaluation never protects.

The detector file (`.safetensors`: the net's weights and the sorted natural calibration scores as
tensors, the rest as JSON metadata "puface") carries its config, the fingerprints of the purifier and
face models it was calibrated with, the data summary and the training metrics.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import FaceEmbedder
from ..models.registry import load_embedder
from ..purifier.model import Purifier
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from ..utils.fingerprint import module_fingerprint
from ..utils.images import check_batch_size, check_unit_images, quantize
from ..utils.metrics import psnr
from ..utils.paths import package_weights
from ..utils.version import __version__
from .net import ResidualNet
from .storage import is_storage_kind, kinds_for_storage

__all__ = [
    "CloakDetector",
    "DetectorConfig",
    "threshold_at_fpr",
    "allowed_above",
    "checked_confidence",
    "min_calibration_size",
    "default_detector_path",
    "detector_path",
    "load_detector",
    "FORMAT",
    "DEFAULT_FPR",
    "DEFAULT_CONFIDENCE",
    "SHIPPED_DETECTORS",
]


FORMAT = "puface-detector"
FORMAT_VERSION = 1
DEFAULT_FPR = 0.01
# Confidence with which a calibrated threshold holds its false-positive rate on new natural photos of each calibration
# kind (`allowed_above`); detector files without one use the plain empirical quantile.
DEFAULT_CONFIDENCE = 0.9
DEFAULT_DETECTOR_NAME = "detector-default.safetensors"
# Detectors shipped inside the package, by the name `load_detector` / `--detector` take: "default" (every cloak
# family measured, Fawkes low included), "sharpen" (for photos from sources that sharpen: natural photos
# sharpened by unsharp masking are not flagged, Fawkes low mostly missed) and "edits" (for edited or mixed photo
# sources: sharpened, contrast / gamma changed and re-encoded natural photos are not flagged, JPEG'd cloaks are;
# Fawkes low and most cloaks made through the photo and the purifier missed; RESULTS 18).
SHIPPED_DETECTORS = {"default": DEFAULT_DETECTOR_NAME, "sharpen": "detector-sharpen.safetensors",
                     "edits": "detector-edits.safetensors"}
PSNR_CAP = 99.0
# Forward-pass chunks on a CPU (bench/bench_detect.py speed): the purifier runs fastest in chunks of 8-16 chips
# (its 150x150 feature maps then stay in cache; 32 is 10-25% slower), the face models in chunks of 32 or more.
CPU_PURIFY_CHUNK = 16
MIN_EMBED_CHUNK = 32
_CAL_TENSORS = ("natural_scores", "natural_kinds")  # calibration entries stored as tensors


def default_detector_path() -> Path:
    """The detector shipped inside the package (`puface/weights/`)."""
    return package_weights(DEFAULT_DETECTOR_NAME)


def detector_path(ref: str | Path | None) -> Path:
    """The file of a detector reference: None or a shipped name (`SHIPPED_DETECTORS`; a file of that name in
    the working folder wins) -> the packaged file, else the path itself."""
    if ref is None:
        ref = "default"
    if str(ref) in SHIPPED_DETECTORS and not Path(ref).is_file():
        return package_weights(SHIPPED_DETECTORS[str(ref)])
    return Path(ref)


def allowed_above(n: int, fpr: float, confidence: float | None = None) -> int:
    """How many of `n` natural calibration scores a threshold may leave above it for false-positive rate `fpr`.

    confidence None or 0: floor(fpr * n), the empirical quantile; on new photos of the same kind the rate is then
    about `fpr`, and above it for about half of the calibration draws. confidence c in (0, 1): the largest k with
    P(Binomial(n, fpr) <= k) <= 1 - c, so that the rate on new photos of that kind is <= `fpr` with probability
    >= c over the draw of the calibration photos (the order-statistic bound behind PAC / conformal calibration;
    n = 660 and fpr = 1% give 6 without and 2 at c = 0.9). Returns -1 when n is too small for any k (n < ln(1 - c) /
    ln(1 - fpr), 230 photos at 1% and 0.9): even the highest score does not hold the rate at that confidence."""
    if not 0.0 <= fpr < 1.0:
        raise PufaceError(f"false-positive rate must be in [0, 1), got {fpr}")
    confidence = checked_confidence(confidence)
    if confidence is None:
        return math.floor(fpr * n + 1e-9)
    if fpr == 0.0:
        return 0
    log_delta = math.log1p(-confidence)
    log_pmf = log_cdf = n * math.log1p(-fpr)  # log P(B = 0), log P(B <= 0)
    ratio = math.log(fpr) - math.log1p(-fpr)
    k = -1  # the largest count known to have P(B <= k) <= 1 - confidence
    while k < n - 1 and log_cdf <= log_delta + 1e-12:
        k += 1
        log_pmf += math.log(n - k) - math.log(k + 1) + ratio  # log P(B = k + 1)
        hi, lo = max(log_cdf, log_pmf), min(log_cdf, log_pmf)
        log_cdf = hi + math.log1p(math.exp(lo - hi))  # log P(B <= k + 1)
    return k


def checked_confidence(confidence: float | None) -> float | None:
    """A confidence as calibration stores it: None for None or <= 0 (the empirical quantile), else in (0, 1)."""
    if confidence is None or confidence <= 0.0:
        return None
    if not confidence < 1.0:
        raise PufaceError(f"confidence must be in [0, 1), got {confidence}")
    return float(confidence)


def min_calibration_size(fpr: float, confidence: float | None) -> int:
    """The fewest natural calibration photos that can hold `fpr` at `confidence` (1 without a confidence)."""
    confidence = checked_confidence(confidence)
    if confidence is None or fpr <= 0.0:
        return 1
    return math.ceil(math.log1p(-confidence) / math.log1p(-fpr) - 1e-9)


def threshold_at_fpr(
    natural_scores: Sequence[float] | np.ndarray | torch.Tensor, fpr: float, confidence: float | None = None
) -> float:
    """The smallest threshold t among `natural_scores` such that at most `allowed_above(n, fpr, confidence)` of
    them are > t (a chip is called cloaked when its score > t): without a confidence, at most a share `fpr`;
    with one, the rate holds on new photos with that probability. Too few scores give the largest one."""
    s = torch.as_tensor(natural_scores, dtype=torch.float64).flatten().sort().values
    if s.numel() == 0:
        raise PufaceError("no natural calibration scores")
    n = s.numel()
    allowed = max(allowed_above(n, fpr, confidence), 0)  # natural scores allowed above the threshold
    return float(s[n - 1 - allowed])


@dataclass
class DetectorConfig:
    """What the detector computes. embedders: face models of the shift features (registry names).
    components: what the score combines ("shift:<embedder>", "net", "psnr"). chip_size: inputs of
    another size are resized to it. shift_floor: added to a shift before its log10. net: the
    `ResidualNetConfig` as a dict (None: no net). scalar_norm: {scalar name: (mean, std)} of the net's
    scalar inputs (log10 shifts) on its training data."""

    embedders: tuple[str, ...] = ("dlib-resnet29",)
    components: tuple[str, ...] = ("shift:dlib-resnet29",)
    chip_size: int = 150
    shift_floor: float = 1e-4
    net: dict | None = None
    scalar_norm: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"embedders": list(self.embedders), "components": list(self.components), "chip_size": self.chip_size,
                "shift_floor": self.shift_floor, "net": self.net,
                "scalar_norm": {k: list(v) for k, v in self.scalar_norm.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DetectorConfig":
        return cls(
            embedders=tuple(d.get("embedders", ("dlib-resnet29",))),
            components=tuple(d.get("components", ("shift:dlib-resnet29",))),
            chip_size=int(d.get("chip_size", 150)),
            shift_floor=float(d.get("shift_floor", 1e-4)),
            net=d.get("net"),
            scalar_norm={k: (float(v[0]), float(v[1])) for k, v in (d.get("scalar_norm") or {}).items()},
        )

    def check(self) -> None:
        for c in self.components:
            kind, _, arg = c.partition(":")
            if kind == "shift" and arg not in self.embedders:
                raise PufaceError(
                    f"detector component {c!r} names a face model not among its embedders {list(self.embedders)}"
                )
            if kind == "net" and self.net is None:
                raise PufaceError("detector component 'net' needs a net config")
            if kind not in ("shift", "net", "psnr"):
                raise PufaceError(f"unknown detector component {c!r} (known: shift:<embedder>, net, psnr)")


class CloakDetector(torch.nn.Module):
    """Scores face chips: higher = more likely cloaked (see the module docstring).

        >>> det = puface.load_detector()                       # doctest: +SKIP
        >>> scores = det.score(images)                         # (N,) float; images (N, 3, H, W) in [0, 1]
        >>> flagged = det.is_cloaked(scores)                   # at the calibrated 1% false-positive rate
        >>> det.detect_folder("photos/", "scores.csv")         # a folder tree, streamed, resumable

    Args:
        config: a `DetectorConfig` (or its dict).
        purifier: the purifier the features use (None: the shipped one).
        calibration: {"components": {name: {"center", "scale"}}, "natural_scores": combined scores of the
            natural calibration chips, "natural_kinds" / "kind_names": their kinds, "fpr": the default
            false-positive rate, ...}.
        meta: data summary, metrics, fingerprints (what the file carries).
        embedders: ready face models by name (None: loaded from the registry).
    """

    def __init__(self, config: DetectorConfig | dict | None = None, *, purifier: Purifier | None = None,
                 calibration: dict | None = None, meta: dict | None = None,
                 embedders: Mapping[str, FaceEmbedder] | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = DetectorConfig.from_dict(config)
        self.config = config or DetectorConfig()
        self.config.check()
        self.purifier = purifier if purifier is not None else Purifier.load()
        given = dict(embedders or {})
        self.embedders = torch.nn.ModuleDict(
            {self._key(n): given.get(n) or load_embedder(n) for n in self.config.embedders}
        )
        self.net = ResidualNet(self.config.net) if self.config.net is not None else None
        self.calibration: dict[str, Any] = dict(calibration or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self.eval()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    def embedder(self, name: str) -> FaceEmbedder:
        return cast(FaceEmbedder, self.embedders[self._key(name)])  # (built from FaceEmbedders only)

    @property
    def device(self) -> torch.device:
        return next(self.purifier.parameters()).device

    @property
    def calibrated(self) -> bool:
        return "natural_scores" in self.calibration and "components" in self.calibration

    @property
    def default_fpr(self) -> float:
        return float(self.calibration.get("fpr", DEFAULT_FPR))

    @property
    def default_confidence(self) -> float | None:
        """The confidence its thresholds hold the false-positive rate with (None: the empirical quantile)."""
        c = self.calibration.get("confidence")
        return None if c is None else float(c)

    def fingerprints(self) -> dict[str, str]:
        """Weights the calibration holds for: the purifier and each face model."""
        out = {"purifier": module_fingerprint(self.purifier)}
        out.update({f"embedder:{n}": self.embedder(n).fingerprint() for n in self.config.embedders})
        return out

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of everything a score depends on: config, calibration, weights."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.config.as_dict(), sort_keys=True).encode())
        h.update(json.dumps({k: v for k, v in self.calibration.items() if k not in _CAL_TENSORS}, sort_keys=True,
                            default=str).encode())
        for k in _CAL_TENSORS:
            if k in self.calibration:
                h.update(torch.as_tensor(self.calibration[k]).numpy().tobytes())
        h.update(json.dumps(self.fingerprints(), sort_keys=True).encode())
        if self.net is not None:
            h.update(module_fingerprint(self.net).encode())
        return h.hexdigest()[:16]

    def to_chips(self, images: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] (uint8 accepted) (N, 3, H, W) -> (N, 3, S, S) at the chip size, on the 8-bit grid."""
        x = check_unit_images(images, "detector", uint8=True)
        s = self.config.chip_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return quantize(x.float())

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def purify_chips(self, chips: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """P(x) of chips from `to_chips`, rounded to 8 bits (float, CPU): what `puface purify` writes.
        On a CPU the purifier runs in chunks of at most `CPU_PURIFY_CHUNK` (same output, faster)."""
        if self.device.type == "cpu":
            batch_size = min(batch_size, CPU_PURIFY_CHUNK)
        return quantize(self.purifier.purify(chips, batch_size=batch_size, device=self.device))

    @torch.no_grad()
    def features(self, images: torch.Tensor, *, purified: torch.Tensor | None = None,
                 embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 known: Mapping[str, torch.Tensor] | None = None, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Per-image features (each (N,), CPU float): "psnr", "shift:<embedder>", "net" (when the detector
        has one), every component's z and the "score".

        purified: P(x) when already computed (uint8 or float, the chips' size), e.g. from a cache;
        embeddings: {embedder: (E(x), E(P(x)))} already computed; known: features already computed
        ("shift:<embedder>", of these same images and purified images). Missing ones are computed here.
        """
        batch_size = check_batch_size(batch_size, "detector")
        x = self.to_chips(images)
        n = len(x)
        dev = self.device
        if purified is None:
            px = self.purify_chips(x, batch_size)
        else:
            px = self.to_chips(purified)
        out: dict[str, torch.Tensor] = {"psnr": psnr(px, x, cap=PSNR_CAP).float().cpu()}
        given = dict(embeddings or {})
        for name in self.config.embedders:
            if known is not None and f"shift:{name}" in known:
                out[f"shift:{name}"] = torch.as_tensor(known[f"shift:{name}"]).float().cpu()
                continue
            if name in given:
                ex, ep = (t.float().cpu() for t in given[name])
            else:
                e = self.embedder(name)
                both = e.embed(torch.cat([x, px]).to(dev), batch_size=max(batch_size, MIN_EMBED_CHUNK))
                ex, ep = both[:n], both[n:]
            out[f"shift:{name}"] = (1.0 - (F.normalize(ex, dim=1) * F.normalize(ep, dim=1)).sum(1)).clamp_min(0.0)
        if self.net is not None:
            logits = []
            for i in range(0, n, batch_size):
                sl = slice(i, i + batch_size)
                sc = self.net_scalars({k: v[sl] for k, v in out.items()})
                logits.append(self.net(x[sl].to(dev), px[sl].to(dev), None if sc is None else sc.to(dev)).float().cpu())
            out["net"] = torch.cat(logits) if logits else torch.empty(0)
        return self.scored(out) if self.calibrated else out

    def scored(self, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The features with each component's z ("z:<component>") and the "score" (the largest z) added."""
        self._need_calibration()
        out = dict(feats)
        z = self.normalise(self.component_values(out))
        out.update({f"z:{k}": v for k, v in z.items()})
        out["score"] = torch.stack(list(z.values()), 1).max(1).values
        return out

    def log_shift(self, shift: torch.Tensor) -> torch.Tensor:
        return torch.log10(shift + self.config.shift_floor)

    def net_scalars(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The net's standardised scalar inputs from the features (None when it takes none)."""
        if self.net is None or not self.net.config.scalars:
            return None
        cols = []
        for name in self.net.config.scalars:
            kind, _, arg = name.partition(":")
            if kind != "log_shift":
                raise PufaceError(f"unknown net scalar {name!r}")
            mean, std = self.config.scalar_norm.get(name, (0.0, 1.0))
            cols.append((self.log_shift(feats[f"shift:{arg}"]) - mean) / std)
        return torch.stack(cols, 1)

    def component_values(self, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw component values (higher = more likely cloaked): log10 shifts, the net's logit, -PSNR."""
        out = {}
        for c in self.config.components:
            kind, _, arg = c.partition(":")
            if kind == "shift":
                out[c] = self.log_shift(feats[f"shift:{arg}"])
            elif kind == "net":
                out[c] = feats["net"]
            else:
                out[c] = -feats["psnr"]
        return out

    def normalise(self, comps: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cal = self.calibration["components"]
        return {k: (v - float(cal[k]["center"])) / float(cal[k]["scale"]) for k, v in comps.items()}

    # ------------------------------------------------------------------ scores and decisions
    def score(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N,) cloak scores of (N, 3, H, W) images in [0, 1]; higher = more likely cloaked."""
        self._need_calibration()
        return self.features(images, batch_size=batch_size)["score"]

    def threshold(self, fpr: float | None = None, confidence: float | None = None, storage: str = "") -> float:
        """The score above which a chip is called cloaked, for false-positive rate `fpr` on natural photos
        (None: the detector's default, 1%): the highest of the thresholds that give `fpr` on each kind of
        calibration photo (as they are, re-encoded, resized, ...), so that no kind exceeds it. confidence (None:
        the detector's, 0.9 for the shipped ones; 0: the plain empirical quantile): each kind's threshold holds
        `fpr` on new photos of that kind with this probability (`allowed_above`). Storage kinds
        (`storage_kinds`) do not count, but for a chip whose file is stored their way: storage (how the chip's
        file stores it, `io.images.storage_of`; "" = unknown) raises the threshold to that of the kinds that
        describe the storage (`detection.storage.kinds_for_storage`) when theirs is higher; it never lowers it."""
        self._need_calibration()
        fpr = self.default_fpr if fpr is None else float(fpr)
        confidence = self.default_confidence if confidence is None else float(confidence)
        scores = torch.as_tensor(self.calibration["natural_scores"])
        kinds = self.calibration.get("natural_kinds")
        if kinds is None:
            return threshold_at_fpr(scores, fpr, confidence)
        kinds = torch.as_tensor(kinds)
        names = list(self.calibration["kind_names"])
        only = set(self.storage_kinds)

        def of(k: str) -> float:
            return threshold_at_fpr(scores[kinds == names.index(k)], fpr, confidence)

        default = max(of(k) for k in (n for n in names if n not in only))
        chosen = kinds_for_storage(names, storage) if storage else None
        return max([default] + [of(k) for k in chosen or []])

    @property
    def storage_kinds(self) -> list[str]:
        """Calibration kinds that only serve files stored their way (`detection.storage`); [] when none."""
        return list(self.calibration.get("storage_kinds") or []) if self.calibration else []

    def is_cloaked(self, scores: torch.Tensor, fpr: float | None = None, storage: str = "") -> torch.Tensor:
        """(N,) bool: scores above `threshold(fpr, storage=storage)` (storage: how the chips were stored, e.g.
        "jpeg:quality=75,subsampling=4:2:0"; "" = unknown)."""
        scores = torch.as_tensor(scores)
        if scores.ndim > 1:  # images instead of their scores gave a bool per pixel
            raise ValueError(f"is_cloaked: expected (N,) scores (detector.score(images)), "
                             f"got shape {tuple(scores.shape)}")
        return scores > self.threshold(fpr, storage=storage)

    def _need_calibration(self) -> None:
        if not self.calibrated:
            raise PufaceError("this detector is not calibrated (no natural calibration scores)")

    def calibrate(self, natural_features: Mapping[str, torch.Tensor], fpr: float = DEFAULT_FPR, *,
                  kinds: Sequence[str] | None = None, confidence: float | None = DEFAULT_CONFIDENCE,
                  storage_kinds: Sequence[str] = (), **info: Any) -> None:
        """Set the component scales and the natural score distribution from natural chips' features
        (`features(...)` of natural calibration chips). kinds: each chip's kind ("natural", "natural:jpeg:
        quality=75", ...): the threshold then holds the false-positive rate on every kind. confidence: the
        default threshold holds `fpr` on each kind with this probability (None: the empirical quantile).
        storage_kinds: kinds (among `kinds`) that only serve files stored their way (`threshold(storage=)`);
        they neither set the component scales nor the default threshold. `info` is kept in the calibration record."""
        storage_kinds = sorted(set(storage_kinds))
        comps = self.component_values(natural_features)
        if storage_kinds:
            if kinds is None or not set(storage_kinds) <= set(kinds):
                raise ValueError(f"storage kinds {storage_kinds} are not all among the calibration kinds")
            for k in storage_kinds:
                if not is_storage_kind(k):
                    raise ValueError(
                        f"kind {k!r}: a storage kind must end in a JPEG (jpeg:quality=...) or palette step"
                    )
            base = torch.tensor([k not in storage_kinds for k in kinds])
            if not bool(base.any()):
                raise ValueError("every calibration kind is a storage kind; the default threshold needs another")
            cal = self._scales({k: v[base] for k, v in comps.items()})
        else:
            cal = self._scales(comps)
        confidence = checked_confidence(confidence)
        self.calibration = {"components": cal, "fpr": float(fpr)}
        if storage_kinds:
            self.calibration["storage_kinds"] = storage_kinds
        z = self.normalise(comps)
        scores = torch.stack(list(z.values()), 1).max(1).values
        self.calibration["natural_scores"] = scores.float()
        if kinds is not None:
            if len(kinds) != len(scores):
                raise ValueError(f"{len(kinds)} kinds for {len(scores)} calibration chips")
            names = sorted(set(kinds))
            self.calibration["kind_names"] = names
            self.calibration["natural_kinds"] = torch.tensor([names.index(k) for k in kinds], dtype=torch.int64)
        self.set_confidence(confidence)  # stores it and the default threshold
        self.calibration.update(info)

    @staticmethod
    def _scales(comps: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        """Each component's natural center (median) and scale (99th percentile - median)."""
        cal = {}
        for k, v in comps.items():
            v = v.double()
            center = float(v.median())
            q99 = float(torch.quantile(v, 0.99))
            cal[k] = {"center": center, "scale": max(q99 - center, 1e-6)}
        return cal

    def set_confidence(self, confidence: float | None) -> float:
        """Hold the default false-positive rate with `confidence` on each calibration kind (None or 0: the
        empirical quantile), as `calibrate(..., confidence=)` would have; the scores and scales stay. Returns
        the new default threshold."""
        self._need_calibration()
        confidence = checked_confidence(confidence)
        if confidence is None:
            self.calibration.pop("confidence", None)
        else:
            self.calibration["confidence"] = confidence
        self.calibration["threshold"] = self.threshold()
        return self.calibration["threshold"]

    def add_natural_kind(self, scores: Sequence[float] | torch.Tensor, kind: str, *, storage: bool = False) -> float:
        """Hold the false-positive rate on a new kind of natural photo too: `scores` (this detector's scores of
        photos known to be natural, e.g. a user's own collection) join the calibration as kind `kind` (a kind
        already there is replaced); the component scales stay. Returns the new default threshold, which is
        the highest of the per-kind thresholds, so it never falls (fewer cloaks are caught when it rises).
        storage: the kind only serves files stored as its last step says (`detection.storage`; e.g.
        "natural:jpeg:quality=75,subsampling=4:4:4"): the default threshold stays."""
        if storage and not is_storage_kind(kind):
            raise PufaceError(f"kind {kind!r}: a storage kind must end in a JPEG (jpeg:quality=...) or palette step")
        self._need_calibration()
        new = torch.as_tensor(scores, dtype=torch.float32).flatten()
        if len(new) == 0:
            raise PufaceError("no natural scores to calibrate on")
        old = torch.as_tensor(self.calibration["natural_scores"], dtype=torch.float32)
        if self.calibration.get("natural_kinds") is None:
            names, codes = ["natural"], torch.zeros(len(old), dtype=torch.int64)
        else:
            names = list(self.calibration["kind_names"])
            codes = torch.as_tensor(self.calibration["natural_kinds"], dtype=torch.int64)
        if kind in names:
            keep = codes != names.index(kind)
            old, codes = old[keep], codes[keep]
        else:
            names.append(kind)
        self.calibration["natural_scores"] = torch.cat([old, new])
        self.calibration["natural_kinds"] = torch.cat(
            [codes, torch.full((len(new),), names.index(kind), dtype=torch.int64)]
        )
        self.calibration["kind_names"] = names
        only = [k for k in self.storage_kinds if k != kind] + ([kind] if storage else [])
        if only:
            self.calibration["storage_kinds"] = sorted(only)
        else:
            self.calibration.pop("storage_kinds", None)
        self.calibration["threshold"] = self.threshold()
        self.calibration.setdefault("added_kinds", {})[kind] = len(new)
        return self.calibration["threshold"]

    # ------------------------------------------------------------------ folders
    def detect_folder(self, in_path: str | Path, out_csv: str | Path, **options: Any):
        """Score every image under `in_path` into `out_csv` (see `puface.detection.folder.detect_folder`)."""
        from .folder import detect_folder

        return detect_folder(in_path, out_csv, detector=self, **options)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the detector (net weights, calibration, config, meta) to a `.safetensors` file, atomically."""
        from safetensors.torch import save as to_bytes

        from ..io.images import atomic_write_bytes

        self._need_calibration()
        path = Path(path)
        tensors = {
            f"net.{k}": v.detach().cpu().contiguous() for k, v in (self.net.state_dict().items() if self.net else [])
        }
        for k in _CAL_TENSORS:
            if k in self.calibration:
                tensors[f"calibration.{k}"] = torch.as_tensor(self.calibration[k]).contiguous()
        cal = {k: v for k, v in self.calibration.items() if k not in _CAL_TENSORS}
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "puface_version": __version__,
                "config": self.config.as_dict(), "calibration": cal, "fingerprints": self.fingerprints(), **self.meta}
        # a folder or an unwritable place there: a PufaceError naming the file, not a traceback
        atomic_write_bytes(path, to_bytes(tensors, metadata={"puface": json.dumps(meta)}))
        return path

    @staticmethod
    def read_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
        """(metadata, tensors) of a detector file; `PufaceError` naming the file when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise PufaceError(f"{path}: detector file not found")
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("puface")
            tensors = load_file(str(path))
        except Exception as e:
            raise PufaceError(f"{path}: cannot read detector file ({type(e).__name__}: {e})") from None
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != FORMAT:
            raise PufaceError(f"{path}: not a puface detector (format {meta.get('format')!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise PufaceError(
                f"{path}: detector format {meta['format_version']} is newer than this puface; upgrade puface"
            )
        return meta, tensors

    @classmethod
    def load(cls, path: str | Path | None = None, *, purifier: Purifier | None = None, device: str | None = "cpu",
             embedders: Mapping[str, FaceEmbedder] | None = None, check: bool = True) -> "CloakDetector":
        """Load a detector file, or a shipped one by name (None: "default"; `SHIPPED_DETECTORS`). purifier:
        the one its features use (None: the shipped purifier); with `check`, a purifier other than the one it
        was calibrated with is an error (its scores would not match the calibration), another face model's
        weights a warning."""
        given, path = path, detector_path(path)
        if not path.is_file() and (given is None or Path(given) != path):  # a shipped name
            raise PufaceError(
                f"the shipped detector {path.name} is missing from this installation ({path}); reinstall puface"
            )
        if not path.is_file():
            raise PufaceError(
                f"{path}: detector file not found; give a detector file (`puface train-detector`, "
                f"`puface calibrate-detector`) or a shipped detector's name: {', '.join(SHIPPED_DETECTORS)}"
            )
        meta, tensors = cls.read_file(path)
        cal = dict(meta.get("calibration") or {})
        for k in _CAL_TENSORS:
            if f"calibration.{k}" in tensors:
                cal[k] = tensors.pop(f"calibration.{k}")
        extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "calibration")}
        det = cls(meta["config"], purifier=purifier, calibration=cal, meta=extra, embedders=embedders)
        if det.net is not None:
            try:
                det.net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
            except RuntimeError as e:
                raise PufaceError(f"{path}: net weights do not match its config ({e})") from None
        if check:
            want = meta.get("fingerprints") or {}
            have = det.fingerprints()
            if want.get("purifier") and want["purifier"] != have["purifier"]:
                raise PufaceError(
                    f"{path}: calibrated with another purifier (fingerprint {want['purifier']}, this one "
                    f"{have['purifier']}); load it with that purifier (`--purifier FILE`; Python: `purifier=`; "
                    f"configs: [detection] purifier) or train a detector for this one "
                    f"(`puface train-detector --purifier FILE`)"
                )
            for k, v in want.items():
                if k.startswith("embedder:") and have.get(k) not in (None, v):
                    warnings.warn(f"{path}: face model {k[9:]} has other weights than at calibration "
                                  f"({have[k]} vs {v}); scores may drift", stacklevel=2)
        det.eval()
        return det.to(resolve_device(device)) if device is not None else det


def load_detector(
    path: str | Path | None = None, device: str | None = "cpu", purifier: Purifier | str | Path | None = None
) -> CloakDetector:
    """A cloak detector with the purifier it was calibrated for: the shipped one (None or "default"), another
    shipped one by name ("sharpen", "edits"; `SHIPPED_DETECTORS`), or a detector file."""
    p = purifier if isinstance(purifier, Purifier) or purifier is None else Purifier.load(purifier)
    return CloakDetector.load(path, purifier=p, device=device)
