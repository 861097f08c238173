"""Training and calibrating the cloak detector (`puface train-detector --config default`).

The config (packaged: `puface/configs/detector/default.toml`, every option commented) names a purifier;
its checkpoint says which identities it trained on and which it validated on. The detector uses only
those: the evaluation's pool (the purifier's held-out identities) stays unseen.

The purifier's training identities are split (seeded) into *fit* identities and a share
`calibration_fraction` of *calibration* identities, which join the purifier's validation identities.

1. Chips: every chip of the purifier's training identities, ordered by the seed (`interleaved_chips`: one
   chip per identity in turn). Natural samples: each chip of a fit identity as it is, and in
   `natural_variants` (defense specs: JPEG re-encoding, down-up resizing, noise; each chip gets a seeded
   choice of `variants_per_chip` of them), so that re-encoded or resampled natural photos are not taken for
   cloaks. Cloaked samples: the first `images` chips of each `[[attacks]]` entry, cloaked through the
   shared cloak cache, at each of `cloak_strengths` (x + k (x_c - x)), plus `cloak_variants_per_chip` seeded
   choices among `cloak_variants` (defense specs, e.g. JPEG: cloaks re-encoded as a photo site would); those
   of fit identities train the net, those of calibration identities validate it.
2. Features of every sample with the purifier and the face models (`CloakDetector.features`); the net
   (`ResidualNet`) is trained on the fit samples (weighted binary cross-entropy, random crops and flips, the
   pooled maps dropped for a share of the images so the log shifts alone must also separate).
3. Calibration: every natural chip of the calibration identities (never seen by the net), as it is and in
   every natural variant; the threshold is the highest of those giving the config's false-positive rate on
   each variant. Each `storage_variants` spec (a JPEG or palette step) adds a *storage kind*: it serves only chip
   files stored that way (`detection.storage`), whose threshold it raises; it sets neither the component scales
   nor the default threshold. Validation: the
   cloaks of calibration identities against those natural samples (AUC, TPR at the threshold).

Output folder: detector.safetensors, config.toml (as it ran), metrics.json (training and validation
AUCs, calibration); while the net trains, .net-state.pt (its state after the last finished epoch: a rerun of the
same recipe on the same samples resumes there, bit for bit).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attacks import attack_label
from ..data.datasets import resolve_data_root
from ..data.loading import load_images
from ..data.split import split_identities
from ..defenses import create_defense
from ..detection.detector import DEFAULT_CONFIDENCE, DEFAULT_FPR, CloakDetector, DetectorConfig
from ..detection.storage import is_storage_kind
from ..detection.net import ResidualNet, ResidualNetConfig
from ..io.files import check_output_folder, check_output_root, list_image_files
from ..io.images import atomic_write_bytes
from ..purifier.model import Purifier
from ..utils.device import resolve_device
from ..utils.errors import ConfigError, PufaceError
from ..utils.fingerprint import content_hashes
from ..utils.paths import cache_dir, create_temporary
from ..utils.images import to_float, to_uint8
from ..utils.seeding import stable_seed
from ..utils.tomlconfig import (apply_overrides, clear_optional, config_where, load_toml_config, refuse_unknown,
                                to_toml)
from .data import check_attacks, cloak_with_cache

__all__ = [
    "DetectorTrainConfig",
    "load_detector_config",
    "interleaved_chips",
    "train_detector",
    "SampleSet",
    "cached_inputs",
]

LABELS = {"attacks": attack_label}

_SECTIONS: dict[str, dict[str, Any]] = {
    "data": {"root": "lfw-chips150", "purifier": "default", "cache": "", "cloak_batch_size": 8, "cached_only": False,
             "max_natural": None, "max_calibration": None, "calibration_fraction": 0.33},
    "augment": {"natural_variants": ["jpeg:quality=75", "jpeg:quality=85", "jpeg:quality=95", "resize:factor=1.5",
                                     "resize:factor=2.0", "noise:sigma=0.008+jpeg:quality=95"],
                "variants_per_chip": 2, "cloak_strengths": [1.0], "cloak_variants": [], "cloak_variants_per_chip": 1,
                "storage_variants": []},
    "detector": {"embedders": ["dlib-resnet29"], "components": ["shift:dlib-resnet29", "net"], "fpr": DEFAULT_FPR,
                 "confidence": DEFAULT_CONFIDENCE, "shift_floor": 1e-4, "chip_size": 150},
    "net": {"channels": [8, 16, 32, 32], "scalars": ["log_shift:dlib-resnet29"], "dropout": 0.2,
            "inputs": list(ResidualNetConfig.inputs)},
    "train": {"epochs": 12, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4, "crop": 128, "hflip": True,
              "map_dropout": 0.25, "batch_features": 32},
}


@dataclass(frozen=True)
class DetectorTrainConfig:
    """A detector recipe: `seed`, [data], [[attacks]], [augment], [detector], [net], [train] (see the
    packaged `default.toml` for every option)."""

    seed: int = 0
    attacks: tuple[dict, ...] = ()
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the file it was read from (with its --set overrides, `config_where`), for errors found later; not saved
    where: str = field(default="", compare=False)

    def __getattr__(self, name: str) -> Any:
        if name in _SECTIONS:
            return self.sections[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            **{k: dict(v) for k, v in self.sections.items()},
            "attacks": [dict(a) for a in self.attacks],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorTrainConfig":
        d = dict(d)
        d.pop("description", None)
        d.pop("name", None)
        refuse_unknown(d, {"seed", "attacks", *_SECTIONS})
        sections = {}
        for name, defaults in _SECTIONS.items():
            s = dict(d.get(name) or {})
            refuse_unknown(s, defaults, f"[{name}]")
            for key, value in s.items():
                _check_type(f"{name}.{key}", value, defaults[key])
            sections[name] = {**defaults, **s}
        attacks = d.get("attacks") or []
        comps = (d.get("detector") or {}).get("components", _SECTIONS["detector"]["components"])
        if (not attacks and "net" in comps) or not all(isinstance(a, dict) and "name" in a for a in attacks):
            raise ConfigError(
                "the detector config needs [[attacks]] tables with a name (the cloaks the net learns from)"
            )
        labels = [attack_label(a) for a in attacks]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"attack labels must be unique, got {labels}")
        cfg = cls(seed=int(d.get("seed", 0)), attacks=tuple(dict(a) for a in attacks), sections=sections)
        if not 0.0 < float(cfg.detector["fpr"]) < 0.5:
            raise ConfigError(f"detector.fpr must be in (0, 0.5), got {cfg.detector['fpr']}")
        if not 0.0 <= float(cfg.detector["confidence"]) < 1.0:
            raise ConfigError(
                f"detector.confidence must be in [0, 1) (0: the empirical quantile), got {cfg.detector['confidence']}"
            )
        for spec in cfg.augment["storage_variants"]:
            if not is_storage_kind(f"natural:{spec}"):
                raise ConfigError(f"augment.storage_variants: {spec!r} must end in a JPEG at the chip's size "
                                  "(jpeg:quality=...) or a palette step: it serves files stored that way")
            if spec in cfg.augment["natural_variants"]:
                raise ConfigError(f"augment.storage_variants: {spec!r} is also a natural variant")
        if int(cfg.train["epochs"]) < 0 or int(cfg.train["batch_size"]) < 1:
            raise ConfigError("train.epochs must be >= 0 and train.batch_size >= 1")
        return cfg


def _check_type(key: str, value: Any, default: Any) -> None:
    """A recipe's setting has its default's kind: true or false, an integer, a number, a string or a list; a setting
    whose default is None (data.max_natural, data.max_calibration: counts, None = all) an integer or none."""
    if default is None:
        ok, want = value is None or (isinstance(value, int) and not isinstance(value, bool)), "an integer or none"
    elif isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, want = isinstance(value, type(default)), "a list" if isinstance(default, list) else "a string"
    if not ok:
        raise ConfigError(f"{key} must be {want}, got {value!r}")


def _takes_none(key: str) -> bool:
    """Whether the setting "section.key" is optional (its default is None)."""
    section, _, name = key.partition(".")
    return name in _SECTIONS.get(section, {}) and _SECTIONS[section][name] is None


def load_detector_config(ref: str | Path, overrides: dict[str, Any] | None = None,
                         data_root: str | Path | None = None) -> DetectorTrainConfig:
    """A detector recipe: a TOML file or a packaged recipe's name ("default"); overrides "section.key" -> value, the
    text "none" clearing an optional setting (`tomlconfig.clear_optional`: data.max_natural, data.max_calibration)."""
    path, d, _ = load_toml_config(ref, "detector", LABELS)
    overrides = clear_optional(overrides, _takes_none)
    apply_overrides(d, overrides, data_root)
    try:
        return replace(DetectorTrainConfig.from_dict(d), where=config_where(path, overrides))
    except (ConfigError, TypeError, ValueError) as e:  # ValueError: text where a number goes (--set train.epochs=x)
        raise ConfigError(f"{config_where(path, overrides)}: {e}") from None


def require_identities(root: str | Path, identities: Sequence[str]) -> None:
    """A `PufaceError` naming the identities (of the purifier's) that have no folder under `root`."""
    missing = [i for i in sorted(identities) if not (Path(root) / i).is_dir()]
    if missing:
        raise PufaceError(
            f"{root}: {len(missing)} of the purifier's {len(identities)} training identities are not here "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); the detector learns from the "
            "identities its purifier was trained on: pass the purifier's training data as --data, or "
            "--purifier a purifier trained on this folder"
        )


def interleaved_chips(root: str | Path, identities: Sequence[str], key: str) -> list[Path]:
    """Every image of `identities` (folders under `root`), ordered by the text `key`: each identity's
    images shuffled, then one image per identity in turn (sorted names). The first N images spread over
    as many identities as possible, and a smaller N is a prefix of a larger one."""
    rng = random.Random(key)
    require_identities(root, identities)
    per_id = []
    for ident in sorted(identities):
        files = list_image_files(Path(root) / ident)
        rng.shuffle(files)
        per_id.append(files)
    out: list[Path] = []
    for k in range(max((len(f) for f in per_id), default=0)):
        out.extend(f[k] for f in per_id if k < len(f))
    return out


@dataclass
class SampleSet:
    """Detector samples: chips and their purified versions (uint8 (N, 3, S, S)), label 1 = cloaked, the
    kind ("natural", "natural:<variant>", "<attack>", "<attack>@k") and the features per sample."""

    images: torch.Tensor
    purified: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]
    features: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kinds:
            out[k] = out.get(k, 0) + 1
        return out


def _variants(x: torch.Tensor, specs: Sequence[str], per_chip: int, seed: int, tag: str,
              kind: str = "natural") -> tuple[torch.Tensor, list[str]]:
    """Each chip of `x` (float) as it is (kind `kind`, first, in order) plus `per_chip` seeded choices among
    `specs` (defense specs; kind "<kind>:<spec>")."""
    if not specs or per_chip <= 0:
        return x, [kind] * len(x)
    defenses = [create_defense(s) for s in specs]
    rng = random.Random(stable_seed("detector-variants", seed, tag))
    picks = [rng.sample(range(len(specs)), min(per_chip, len(specs))) for _ in range(len(x))]
    outs, kinds = [x], [kind] * len(x)
    for j, d in enumerate(defenses):
        idx = [i for i, p in enumerate(picks) if j in p]
        if idx:
            outs.append(d(x[torch.as_tensor(idx)]))
            kinds += [f"{kind}:{specs[j]}"] * len(idx)
    return torch.cat(outs), kinds


def _all_variants(x: torch.Tensor, specs: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Each chip as it is and in every variant."""
    outs, kinds = [x], ["natural"] * len(x)
    for s in specs:
        outs.append(create_defense(s)(x))
        kinds += [f"natural:{s}"] * len(x)
    return torch.cat(outs), kinds


def cached_inputs(
    det: CloakDetector, images: torch.Tensor, batch: int = 32
) -> tuple[torch.Tensor, torch.Tensor, dict, bool]:
    """(chips uint8, P(x) uint8, {"psnr", "shift:<embedder>"}, from the cache?) of a set of images; cached as a
    whole under $PUFACE_HOME/detector-samples, keyed by the chips' pixels and the purifier's and face models'
    weights (so a rerun with other net settings, or a measurement, reuses them)."""
    x = det.to_chips(images)
    xu = to_uint8(x)
    h = hashlib.sha256(json.dumps(det.fingerprints(), sort_keys=True).encode())
    for c in content_hashes(xu):
        h.update(c.encode())
    path = cache_dir("detector-samples") / f"{h.hexdigest()[:24]}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return xu, saved["purified"], saved["features"], True
        except Exception:  # an unreadable cache file is recomputed
            pass
    px = torch.cat([det.purify_chips(x[i : i + 256], batch) for i in range(0, len(x), 256)]) if len(x) else x
    feats = det.features(x, purified=px, batch_size=batch)
    feats = {k: v for k, v in feats.items() if k.startswith("shift:") or k == "psnr"}
    fd, tmp = create_temporary(path, thread=False)  # a new file: never through a link planted at its name
    try:
        with open(fd, "wb") as f:
            torch.save({"purified": to_uint8(px), "features": feats}, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return xu, to_uint8(px), feats, False


def _featurise(det: CloakDetector, images: torch.Tensor, kinds: list[str], labels: torch.Tensor, batch: int,
               log: Callable[[str], None], what: str) -> SampleSet:
    """The samples with their purified images and features (`cached_inputs`)."""
    t0 = time.perf_counter()
    xu, pu, feats, hit = cached_inputs(det, images, batch)
    log(
        f"{what}: {len(xu)} samples "
        + ("(features from the cache)" if hit else f"featurised ({time.perf_counter() - t0:.0f} s)")
    )
    return SampleSet(xu, pu, labels, kinds, feats)


def fit_paths(cfg: DetectorTrainConfig, root: Path, train_ids: Sequence[str],
              fit_ids: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(every chip of the purifier's training identities in the recipe's order: each attack cloaks the first `images`;
    the natural chips the net learns from: the fit identities' among them, the first data.max_natural)."""
    chips = interleaved_chips(root, train_ids, f"detector-train-{cfg.seed}")
    if not chips:
        raise PufaceError(f"{root}: no images of the purifier's training identities found")
    fit = set(fit_ids)
    nat_paths = [p for p in chips if p.parent.name in fit]
    return chips, nat_paths[: cfg.data["max_natural"]] if cfg.data["max_natural"] else nat_paths


def attack_chips(cfg: DetectorTrainConfig, spec: dict, chips: Sequence[Path]) -> tuple[list[Path], dict]:
    """(the chips an [[attacks]] entry cloaks: the first `images` of `chips`, default 100; the attack spec its cloaks
    are made and cached with: the recipe's seed, no `images` or `label`)."""
    seeded = {"seed": cfg.seed, **{k: v for k, v in spec.items() if k not in ("images", "label")}}
    return list(chips[: int(spec.get("images", 100))]), seeded


def check_cloak_size(cfg: DetectorTrainConfig, label: str, size: tuple[int, ...]) -> None:
    """Refuse the cloaks of attack `label` when their (H, W) `size` (that of the chips they are made from) is not
    the recipe's detector.chip_size square."""
    if tuple(size) != (int(cfg.detector["chip_size"]),) * 2:
        raise PufaceError(f"{label}: cloaks of {tuple(size)} px; the detector trains on chips of "
                          f"{cfg.detector['chip_size']} px")


def build_samples(cfg: DetectorTrainConfig, det: CloakDetector, root: Path, train_ids: Sequence[str],
                  fit_ids: Sequence[str], *, progress: bool = True, device: str | None = None,
                  log: Callable[[str], None] = print) -> tuple[SampleSet, SampleSet, dict]:
    """(fit samples: natural variants and cloaks of the fit identities; validation cloaks: those of the
    other training identities; summary), with their features. device: where the cloaks are made (None: auto)."""
    d, aug = cfg.data, cfg.augment
    chips, nat_paths = fit_paths(cfg, root, train_ids, fit_ids)
    fit = set(fit_ids)
    nat, _, errors = load_images(nat_paths, size=int(cfg.detector["chip_size"]))
    for e in errors:
        log(f"warning: skipped {e.path}: {e.reason}")
    nat_x, nat_kinds = _variants(nat, aug["natural_variants"], int(aug["variants_per_chip"]), cfg.seed, "train")
    parts, kinds, labels = [nat_x], list(nat_kinds), [torch.zeros(len(nat_x))]
    vparts, vkinds = [], []
    cloak_fn = cloak_with_cache(
        d["cache"] or None,
        device=device,
        batch_size=int(d["cloak_batch_size"]),
        progress=progress,
        cached_only=bool(d["cached_only"]),
    )
    summary: dict[str, Any] = {"natural_chips": len(nat), "natural_samples": len(nat_x), "attacks": {}}
    for spec in cfg.attacks:
        label = attack_label(spec)
        paths, spec_seeded = attack_chips(cfg, spec, chips)
        cl, kept, errors = cloak_fn(spec_seeded, paths)
        for e in errors:
            log(f"warning: skipped {getattr(e, 'path', e)}: {getattr(e, 'reason', e)}")
        x0, _, _ = load_images([paths[i] for i in kept])
        check_cloak_size(cfg, label, tuple(cl.shape[-2:]))
        in_fit = torch.as_tensor([paths[i].parent.name in fit for i in kept], dtype=torch.bool)
        for k in aug["cloak_strengths"]:
            k = float(k)
            xk = (cl if k == 1.0 else (x0 + k * (cl - x0)).clamp(0, 1))[in_fit]
            parts.append(xk)
            kinds += [label if k == 1.0 else f"{label}@{k:g}"] * len(xk)
            labels.append(torch.ones(len(xk)))
        if aug["cloak_variants"]:
            n_plain = int(in_fit.sum())  # the plain cloaks come first and are already in
            xv, vk = _variants(cl[in_fit], aug["cloak_variants"], int(aug["cloak_variants_per_chip"]), cfg.seed,
                               f"cloak:{label}", kind=label)
            parts.append(xv[n_plain:])
            kinds += vk[n_plain:]
            labels.append(torch.ones(len(vk) - n_plain))
        vparts.append(cl[~in_fit])
        vkinds += [label] * int((~in_fit).sum())
        summary["attacks"][label] = {"fit": int(in_fit.sum()), "validation": int((~in_fit).sum())}
        log(f"train: {label}: {int(in_fit.sum())} cloaks to fit, {int((~in_fit).sum())} to validate")
    batch = int(cfg.train["batch_features"])
    samples = _featurise(det, torch.cat(parts), kinds, torch.cat(labels), batch, log, "fit")
    val = _featurise(det, torch.cat(vparts), vkinds, torch.ones(len(vkinds)), batch, log, "validation cloaks")
    summary["samples"] = samples.counts()
    return samples, val, summary


def _auc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    return float(roc_auc_score(y, np.r_[neg.numpy(), pos.numpy()]))


#: the net's training state after its last finished epoch, in the output folder (removed once the detector is written)
NET_STATE = ".net-state.pt"


def _net_state_key(net: ResidualNet, det: CloakDetector, samples: SampleSet, cfg: DetectorTrainConfig) -> str:
    """What a saved net state must have been trained on to be resumed: the recipe, the purifier and face models, the
    net's initial weights and every sample (pixels, purified pixels, labels)."""
    h = hashlib.sha256(json.dumps([cfg.as_dict(), det.fingerprints()], sort_keys=True, default=str).encode())
    for t in (*net.state_dict().values(), samples.images, samples.purified, samples.labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fit_net(net: ResidualNet, det: CloakDetector, samples: SampleSet, cfg: DetectorTrainConfig, *,
            progress: bool = True, log: Callable[[str], None] = print, state_path: Path | None = None) -> list[dict]:
    """Train `net` on the samples (see the module docstring); returns per-epoch metrics.

    state_path: after each epoch the training state (weights, optimiser, schedule, random states) is saved there
    (atomically); a later call with the same recipe, models, initial weights and samples continues after the last
    saved epoch and ends with the same weights, bit for bit, as one that was never interrupted."""
    from tqdm import tqdm

    t = cfg.train
    g = torch.Generator().manual_seed(stable_seed("detector-net", cfg.seed))
    torch.manual_seed(stable_seed("detector-init", cfg.seed))
    y = samples.labels.float()
    n_pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - n_pos) / max(n_pos, 1.0))
    scalars = det.net_scalars(samples.features)
    opt = torch.optim.AdamW(net.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"]))
    steps = int(t["epochs"]) * ((len(y) + int(t["batch_size"]) - 1) // int(t["batch_size"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t["lr"]), total_steps=max(1, steps), pct_start=0.1)
    crop, bs, size = int(t["crop"]), int(t["batch_size"]), samples.images.shape[-1]
    history: list[dict] = []
    first = 1
    key = _net_state_key(net, det, samples, cfg) if state_path is not None else ""
    if state_path is not None and state_path.is_file():
        try:
            saved = torch.load(state_path, weights_only=True)
            usable = saved.get("key") == key
        except Exception as e:  # a state file that cannot be read is ignored: the net is trained from its start
            saved, usable = {"error": f"{type(e).__name__}: {e}"}, False
        if usable:
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            g.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            history = list(saved["history"])
            first = int(saved["epoch"]) + 1
            log(f"detector net: resuming after epoch {saved['epoch']} ({state_path})")
        else:
            why = (
                f"cannot be read ({saved['error']})"
                if "error" in saved
                else "was saved by another recipe or on other samples"
            )
            log(f"detector net: {state_path} {why}; training from the start")
    for epoch in range(first, int(t["epochs"]) + 1):
        net.train()
        perm = torch.randperm(len(y), generator=g)
        total, t0 = 0.0, time.perf_counter()
        bar = tqdm(
            range(0, len(y), bs), desc=f"detector epoch {epoch}", unit="batch", disable=not progress, leave=False
        )
        for s in bar:
            idx = perm[s : s + bs]
            x, px = to_float(samples.images[idx]), to_float(samples.purified[idx])
            if crop and crop < size:
                i, j = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=g))
                x, px = x[..., i : i + crop, j : j + crop], px[..., i : i + crop, j : j + crop]
            if t["hflip"] and bool(torch.rand((), generator=g) < 0.5):
                x, px = x.flip(-1), px.flip(-1)
            drop = torch.rand(len(idx), generator=g) < float(t["map_dropout"])
            logit = net(x, px, None if scalars is None else scalars[idx], drop_maps=drop)
            loss = F.binary_cross_entropy_with_logits(logit, y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(
            {"epoch": epoch, "loss": round(total / len(y), 5), "seconds": round(time.perf_counter() - t0, 1)}
        )
        if state_path is not None:
            buf = io.BytesIO()
            torch.save({"key": key, "epoch": epoch, "net": net.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
                        "history": history}, buf)
            atomic_write_bytes(state_path, buf.getvalue())
        log(f"detector epoch {epoch}: loss {history[-1]['loss']} ({history[-1]['seconds']} s)")
    net.eval()
    return history


def calibration_paths(cfg: DetectorTrainConfig, root: Path, cal_ids: Sequence[str]) -> list[Path]:
    """The natural chips the threshold is calibrated on: the calibration identities' (`interleaved_chips`), the
    first data.max_calibration of them."""
    paths = interleaved_chips(root, cal_ids, f"detector-calibration-{cfg.seed}")
    return paths[: cfg.data["max_calibration"]] if cfg.data["max_calibration"] else paths


def calibration_samples(cfg: DetectorTrainConfig, det: CloakDetector, root: Path, cal_ids: Sequence[str],
                        log: Callable[[str], None] = print) -> SampleSet:
    """Natural chips of the calibration identities, as they are, in every natural variant and in every storage
    variant (kinds "natural:<spec>")."""
    paths = calibration_paths(cfg, root, cal_ids)
    if not paths:
        raise PufaceError(f"{root}: no images of the calibration identities found")
    x, _, errors = load_images(paths, size=int(cfg.detector["chip_size"]))
    for e in errors:
        log(f"warning: skipped {e.path}: {e.reason}")
    xs, kinds = _all_variants(x, list(cfg.augment["natural_variants"]) + list(cfg.augment["storage_variants"]))
    return _featurise(det, xs, kinds, torch.zeros(len(xs)), int(cfg.train["batch_features"]), log, "calibration")


def check_net_scalars(cfg: DetectorTrainConfig) -> None:
    """Refuse a recipe whose net (when its score has one) takes a scalar other than log_shift:<one of
    detector.embedders> (`ConfigError`), before any cloak is made."""
    if "net" not in cfg.detector["components"]:
        return
    for name in ResidualNetConfig.from_dict(cfg.net).scalars:
        kind, _, arg = name.partition(":")
        if kind != "log_shift" or arg not in cfg.detector["embedders"]:
            raise ConfigError(f"net scalar {name!r}: expected log_shift:<one of detector.embedders>")


def detector_identities(cfg: DetectorTrainConfig, root: Path) -> tuple[Purifier, list[str], list[str], list[str]]:
    """(the recipe's purifier, loaded; its training identities; the fit ones; the calibration ones: the rest of them
    and its validation identities), once every one has a folder under `root` (`require_identities`)."""
    purifier = Purifier.load(cfg.data["purifier"])
    summary = purifier.meta.get("data_summary") or {}
    train_ids, val_ids = list(summary.get("train_identities") or []), list(summary.get("val_identities") or [])
    if not train_ids:
        raise PufaceError("the purifier's checkpoint does not record its training identities; the detector trains "
                          "and calibrates on exactly those (the evaluation's identities must stay unseen)")
    cal_part, fit_ids = split_identities(train_ids, float(cfg.data["calibration_fraction"]), cfg.seed,
                                         tag="detector-calibration")
    cal_ids = sorted(cal_part + val_ids)
    if not fit_ids or not cal_ids:
        raise PufaceError(f"no identities left to fit ({len(fit_ids)}) or calibrate ({len(cal_ids)}); "
                          "change data.calibration_fraction")
    require_identities(root, sorted(set(train_ids) | set(val_ids)))
    return purifier, train_ids, fit_ids, cal_ids


def train_detector(cfg: DetectorTrainConfig, out: str | Path, *, device: str | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> CloakDetector:
    """Train and calibrate a detector as `cfg` says; writes OUT/detector.safetensors, config.toml, metrics.json."""
    t_start = time.perf_counter()
    if device:
        resolve_device(device)  # an unknown or unavailable device fails before any work
    out = Path(out)
    check_output_root(out)  # a file there: one line, not a traceback
    root = resolve_data_root(cfg.data["root"])  # data and purifier checked before the output folder is touched
    check_output_folder(root, out)  # not in the data (nor the data in it)
    purifier, train_ids, fit_ids, cal_ids = detector_identities(cfg, root)
    if cfg.attacks:  # a misspelt attack: said now, not after the other attacks' cloaks
        check_attacks(cfg.attacks, device=device, where=cfg.where)
    check_net_scalars(cfg)  # said now, not after the cloaks and their features
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PufaceError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    atomic_write_bytes(out / "config.toml", to_toml(cfg.as_dict()).encode("utf-8"))
    dc = cfg.detector
    net_cfg = ResidualNetConfig.from_dict(cfg.net) if "net" in dc["components"] else None
    base = DetectorConfig(embedders=tuple(dc["embedders"]), components=tuple(c for c in dc["components"] if c != "net"),
                          chip_size=int(dc["chip_size"]), shift_floor=float(dc["shift_floor"]))
    det0 = CloakDetector(base, purifier=purifier)
    if device:
        det0.to(device)
    samples: SampleSet | None = None
    val: SampleSet | None = None
    data_summary: dict[str, Any] = {}
    if cfg.attacks:
        samples, val, data_summary = build_samples(
            cfg, det0, root, train_ids, fit_ids, progress=progress, device=device, log=log
        )
    scalar_norm = {}
    if net_cfg is not None:
        assert samples is not None  # DetectorTrainConfig refuses a net without [[attacks]]
        for name in net_cfg.scalars:  # each log_shift:<one of base.embedders> (check_net_scalars)
            arg = name.partition(":")[2]
            v = det0.log_shift(samples.features[f"shift:{arg}"])
            scalar_norm[name] = (float(v.mean()), float(v.std().clamp_min(1e-6)))
    config = DetectorConfig(
        embedders=base.embedders,
        components=tuple(dc["components"]),
        chip_size=base.chip_size,
        shift_floor=base.shift_floor,
        net=net_cfg.as_dict() if net_cfg else None,
        scalar_norm=scalar_norm,
    )
    torch.manual_seed(stable_seed("detector-init", cfg.seed))  # the net's initial weights follow the seed alone
    det = CloakDetector(config, purifier=purifier, embedders={n: det0.embedder(n) for n in base.embedders})
    if device:
        det.to(device)
    history: list[dict] = []
    if det.net is not None:
        assert samples is not None
        history = fit_net(det.net, det, samples, cfg, progress=progress, log=log, state_path=out / NET_STATE)
    cal = calibration_samples(cfg, det0, root, cal_ids, log=log)
    cal_feats = det.features(to_float(cal.images), purified=to_float(cal.purified), known=cal.features)
    det.calibrate(cal_feats, fpr=float(dc["fpr"]), kinds=cal.kinds, confidence=float(dc["confidence"]),
                  storage_kinds=[f"natural:{v}" for v in cfg.augment["storage_variants"]],
                  calibration_chips=int((torch.tensor([k == "natural" for k in cal.kinds])).sum()),
                  calibration_samples=len(cal), calibration_kinds=sorted(set(cal.kinds)))
    cal_feats = det.scored(cal_feats)
    train_feats = val_feats = None
    if samples is not None and val is not None:
        train_feats = det.features(
            to_float(samples.images), purified=to_float(samples.purified), known=samples.features
        )
        val_feats = det.features(to_float(val.images), purified=to_float(val.purified), known=val.features)
    metrics = _metrics(det, samples, train_feats, cal, cal_feats, val, val_feats)
    det.meta = {
        "data_summary": {
            "root": cfg.data["root"],
            "fit_identities": sorted(fit_ids),
            "calibration_identities": cal_ids,
            **data_summary,
            "rule": "fit: the purifier's training identities less a seeded calibration_fraction; calibration "
            "(and validation cloaks): those and the purifier's validation identities; the purifier's "
            "held-out identities (the evaluation's pool) are never used",
        },
        "train_config": cfg.as_dict(),
        "metrics": metrics,
        "history": history,
    }
    det.save(out / "detector.safetensors")
    (out / NET_STATE).unlink(missing_ok=True)  # the net is in the detector file now
    atomic_write_bytes(
        out / "metrics.json",
        json.dumps(
            {"metrics": metrics, "history": history, "wall_s": round(time.perf_counter() - t_start, 1)}, indent=2
        ).encode("utf-8"),
    )
    log(f"detector written to {out / 'detector.safetensors'} (threshold {det.calibration['threshold']:.4f} at "
        f"{float(dc['fpr']):.1%} FPR on {len(cal)} natural calibration samples)")
    return det


def _metrics(det: CloakDetector, samples: SampleSet | None, train_feats: dict | None, cal: SampleSet, cal_feats: dict,
             val: SampleSet | None = None, val_feats: dict | None = None) -> dict:
    """Per attack: training AUC (fit cloaks vs fit natural samples; optimistic) and validation AUC and TPR
    (cloaks of calibration identities vs every natural calibration sample); calibration FPR per kind."""
    thr = det.threshold()
    out: dict[str, Any] = {"threshold": round(thr, 5), "train": {}, "validation": {}, "calibration_fpr": {}}
    if val is not None and val_feats is not None and len(val):
        nat_cal = cal_feats["score"]
        for kind in sorted(set(val.kinds)):
            m = torch.tensor([k == kind for k in val.kinds])
            sv = val_feats["score"][m]
            row = {
                "n": int(m.sum()),
                "auc": round(_auc(nat_cal, sv), 5),
                "tpr": round(float((sv > thr).float().mean()), 4),
            }
            for c in (k for k in val_feats if k.startswith("z:")):
                row[f"auc_{c[2:]}"] = round(_auc(cal_feats[c], val_feats[c][m]), 5)
            out["validation"][kind] = row
    kinds = samples.kinds if samples is not None else []
    score = train_feats["score"] if train_feats is not None else torch.zeros(0)
    nat = torch.tensor([k.startswith("natural") for k in kinds], dtype=torch.bool)
    for kind in sorted(set(k for k in kinds if not k.startswith("natural"))):
        m = torch.tensor([k == kind for k in kinds])
        out["train"][kind] = {"n": int(m.sum()), "auc": round(_auc(score[nat], score[m]), 5),
                              "tpr": round(float((score[m] > thr).float().mean()), 4)}
    for kind in sorted(set(cal.kinds)):
        m = torch.tensor([k == kind for k in cal.kinds])
        out["calibration_fpr"][kind] = round(float((cal_feats["score"][m] > thr).float().mean()), 4)
    return out
