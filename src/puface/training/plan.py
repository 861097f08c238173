"""Dry runs of the training commands (`--dry-run` of `puface train-purifier`, `train-detector`, `calibrate-detector`).

Each `plan_*` function makes the checks its run makes before any work (the config, the data folder, the face models
and weights it names, the output place) and counts the run's size, as `puface.plan_experiment` does for a grid: it
reads the inputs' names (and decodes the images to be cloaked, to look their cloaks up in the cache), loads the models,
and writes nothing (but a face model's converted weights on its first load, as any command): no output folder, no
cache entry, no cloak made, nothing trained. `str()` of a plan is a few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..attacks import attack_label, create_attack
from ..attacks.cache import CloakCache
from ..data.datasets import resolve_data_root
from ..data.loading import load_images
from ..data.layout import scan_identities
from ..io.files import check_output_folder, check_output_root
from ..io.jobs import env_int
from ..purifier.checkpoint import load_checkpoint
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from .config import PurifierTrainConfig
from .data import check_attacks, choose_images, folder_cloak_paths
from .detector import (DetectorTrainConfig, attack_chips, calibration_paths, check_cloak_size, check_net_scalars,
                       detector_identities, fit_paths)
from .train import _check_resumed_config, _check_run_folder, epoch_steps, identity_split, run_models

__all__ = ["CloakSet", "PurifierPlan", "DetectorPlan", "CalibrationPlan", "plan_purifier_training",
           "plan_detector_training", "plan_calibration"]

_NOTHING = "Dry run: nothing was cloaked, trained or written."


@dataclass
class CloakSet:
    """One attack's images for one part of a run (tag "train", "val", "fit" ...): `images` readable files, of which
    `to_make` have no cloak in the cache (None: read from a folder of cloaked images, `found` of them there)."""

    label: str
    images: int
    to_make: int | None = 0
    found: int | None = None


def _cloak_line(what: str, count: int, sets: list[CloakSet]) -> str:
    """"WHAT: COUNT over N attack(s) (label images, ...); cloaks: R read from the cache, M to make"."""
    made = [s for s in sets if s.to_make is not None]
    folder = [s for s in sets if s.to_make is None]
    total, make = sum(s.images for s in made), sum(s.to_make or 0 for s in made)
    per = ", ".join(f"{s.label} {s.images}" for s in sets)
    line = f"{what}: {count} over {len(sets)} attack(s) ({per})"
    if made:
        line += f"; cloaks: {total - make} read from the cache, {make} to make"
    if folder:
        line += f"; {sum(s.found or 0 for s in folder)} cloak(s) found in cloaked folders"
    return line


def _pairs(sets: list[CloakSet]) -> int:
    """Pairs the sets make: each image with a cloak (from a folder: those found there)."""
    return sum(s.images if s.to_make is not None else s.found or 0 for s in sets)


@dataclass
class PurifierPlan:
    """The size of a purifier training run (`plan_purifier_training`). Counts of identities (after
    data.max_per_identity), images of the training identities, the training and validation pairs per attack
    (`CloakSet`), epochs and optimiser steps (per process)."""

    root: Path
    identities: int
    train_identities: int
    val_identities: int
    heldout_identities: int
    train_images: int
    train: list[CloakSet]
    val: list[CloakSet]
    epochs: int
    batch_size: int
    processes: int
    steps_per_epoch: int
    device: str
    models: list[str] = field(default_factory=list)
    #: the run in OUT it resumes (its last.pt), and where that run stopped: epochs finished, steps into the next
    resumes: Path | None = None
    resumed_at: tuple[int, int] = (0, 0)
    #: without validation identities: how many training pairs validate (data.val_images at most)
    val_images: int = 0

    @property
    def train_pairs(self) -> int:
        return _pairs(self.train)

    @property
    def val_pairs(self) -> int:
        return _pairs(self.val) if self.val else min(self.train_pairs, self.val_images)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def steps_left(self) -> int:
        """Optimiser steps the run would take: all of them, or those after where the resumed run stopped."""
        epoch, step = self.resumed_at
        return max(self.total_steps - epoch * self.steps_per_epoch - step, 0) if self.resumes else self.total_steps

    def _resume_text(self) -> str:
        if self.resumes is None:
            return ""
        epoch, step = self.resumed_at
        if self.steps_left == 0:  # as `train` says it
            return (f"; {self.resumes}: the run is finished ({self.epochs} epochs), nothing to train (--no-resume "
                    "trains afresh)")
        return (f"; resumes {self.resumes} after epoch {epoch}{f', step {step}' if step else ''}: "
                f"{self.steps_left} step(s) left")

    def __str__(self) -> str:
        lines = [f"data: {self.root}: {self.identities} identities; {self.train_identities} training "
                 f"({self.train_images} images), {self.val_identities} validation, {self.heldout_identities} held out",
                 _cloak_line("training pairs", self.train_pairs, self.train),
                 _cloak_line("validation pairs", self.val_pairs, self.val) if self.val else
                 f"validation pairs: {self.val_pairs}, the first training pairs (no validation identities)"]
        if self.models:
            lines.append("face models: " + ", ".join(self.models))
        lines.append(f"training: {self.epochs} epoch(s) x {self.steps_per_epoch} optimizer step(s) of "
                     f"{self.batch_size} pairs = {self.total_steps} step(s); {self.processes} process(es), device "
                     f"{self.device}{self._resume_text()}. {_NOTHING}")
        return "\n".join(lines)


def _purifier_sets(cfg: PurifierTrainConfig, root: Path, identities: list[str], tag: str, specs: list[dict],
                   cache: CloakCache, attacks: dict) -> list[CloakSet]:
    """The images `build_pairs` would pair per attack for `identities` (same scan, choice and cloak keys)."""
    ds = scan_identities(root, identities=identities, max_per_identity=cfg.data.max_per_identity, seed=cfg.seed)
    out = []
    for spec in specs:
        label = attack_label(spec)
        paths = [im.path for im in choose_images(ds.images, spec.get("images"), cfg.seed, f"{tag}:{label}")]
        if spec["name"] == "folder":  # none there: the run's error
            out.append(CloakSet(label, len(paths), None, len(folder_cloak_paths(spec, root, paths)[0])))
        else:
            kept, missing = cache.uncached(attacks[label], paths)
            out.append(CloakSet(label, len(kept), len(missing)))
    return out


def plan_purifier_training(cfg: PurifierTrainConfig, out: str | Path | None = None, *, resume: bool = True,
                           device: str | None = None) -> PurifierPlan:
    """What `train(cfg, out)` would do, run nowhere (`puface train-purifier --dry-run`): the same checks before any
    work (the output folder `out`, when given, and a run there to resume; the loss's and validation's face models and
    `[train] init`; the attacks; the data and its identity split; with data.cached_only every cloak in the cache),
    then the size. Cloaks are looked up in the cache, not made. A `PufaceError` (one line) when the run could not
    start."""
    dev = resolve_device(device)
    root = resolve_data_root(cfg.data.root)
    resumes, at = None, (0, 0)
    if out is not None:
        out = Path(out)
        check_output_root(out)
        _check_run_folder(out, root)
        last = out / "last.pt"
        if resume and last.is_file():
            ck = load_checkpoint(last, map_location="cpu")
            _check_resumed_config(last, ck.get("config") or {}, cfg.as_dict())
            ts = ck.get("train_state")
            if ts is None:  # as `train` says it
                raise PufaceError(f"{last}: has no training state to resume from (delete it or pass --no-resume)")
            resumes, at = last, (int(ts.get("epoch", 0)), int(ts.get("step_in_epoch", 0)))
    loss_embs, val_embs, init = run_models(cfg, dev, init=resumes is None)
    attacks = check_attacks(cfg.attacks, device=str(dev), where=cfg.where)
    split = identity_split(cfg)
    counts = {k: len(v) for k, v in scan_identities(root, max_per_identity=cfg.data.max_per_identity,
                                                     seed=cfg.seed).by_identity().items()}
    cache = CloakCache.lookup(cfg.data.cache, cached_only=cfg.data.cached_only)
    specs = [dict(a) for a in cfg.attacks]
    train = _purifier_sets(cfg, root, split.train, "train", specs, cache, attacks)
    val = (_purifier_sets(cfg, root, split.val, "val", [{**a, "images": cfg.data.val_images} for a in specs], cache,
                          attacks) if split.val else [])
    world = env_int("WORLD_SIZE", 1)
    plan = PurifierPlan(root, len(counts), len(split.train), len(split.val), len(split.heldout),
                        sum(counts[i] for i in split.train), train, val, cfg.train.epochs, cfg.train.batch_size, world,
                        0, str(dev), resumes=resumes, resumed_at=at, val_images=cfg.data.val_images)
    plan.steps_per_epoch = epoch_steps(plan.train_pairs, world, cfg.train.batch_size, cfg.train.max_steps_per_epoch)
    if plan.steps_per_epoch == 0:  # as `train` says it
        raise PufaceError(f"too few training pairs ({plan.train_pairs}) for {world} process(es)")
    plan.models = ([f"loss {', '.join(loss_embs)}"] if loss_embs else []) + \
        ([f"validation {', '.join(val_embs)}"] if val_embs else []) + ([f"init {cfg.train.init}"] if init else [])
    return plan


@dataclass
class DetectorPlan:
    """The size of a detector training run (`plan_detector_training`): identities (the purifier's training ones
    split into fit and calibration), natural samples (chips and their variants), cloaks per attack (`CloakSet`, tag
    "fit": those of fit identities, plus `validation` of calibration identities), the net's epochs and steps,
    calibration chips and samples, and the false-positive rate the threshold targets."""

    root: Path
    purifier: str
    fit_identities: int
    calibration_identities: int
    natural_chips: int
    natural_samples: int
    cloaks: list[CloakSet]
    validation_cloaks: int
    cloaked_samples: int
    epochs: int
    batch_size: int
    calibration_chips: int
    calibration_samples: int
    fpr: float
    confidence: float
    device: str
    #: the score's components ("net": the CNN the run trains; "shift:<model>": computed, not trained)
    components: tuple[str, ...] = ("net",)

    @property
    def samples(self) -> int:
        """The net's training samples: natural and cloaked."""
        return self.natural_samples + self.cloaked_samples

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def __str__(self) -> str:
        conf = f" held with {self.confidence:.0%} confidence" if self.confidence else ""
        samples = (f"natural: {self.natural_chips} chip(s), {self.natural_samples} sample(s) with their variants; "
                   + _cloak_line("cloaked images", sum(c.images for c in self.cloaks), self.cloaks)
                   + f"; {self.validation_cloaks} cloak(s) validate") if self.cloaks else \
            "no [[attacks]]: no cloak made, no fit sample"
        net = (f"net: {self.epochs} epoch(s) x {self.steps_per_epoch} step(s) of {self.batch_size} samples = "
               f"{self.epochs * self.steps_per_epoch} step(s) on {self.samples} samples" if "net" in self.components
               else f"no net to train (score: {', '.join(self.components)})")
        return "\n".join([
            f"data: {self.root}: the purifier {self.purifier}'s training identities: {self.fit_identities} to fit, "
            f"{self.calibration_identities} to calibrate (with its validation identities)", samples,
            f"{net}; calibration: {self.calibration_chips} natural chip(s), {self.calibration_samples} sample(s) with "
            f"their variants, FPR target {self.fpr:.1%}{conf}; device {self.device}. {_NOTHING}"])


def plan_detector_training(cfg: DetectorTrainConfig, out: str | Path | None = None, *,
                           device: str | None = None) -> DetectorPlan:
    """What `train_detector(cfg, out)` would do, run nowhere (`puface train-detector --dry-run`): the same checks
    before any work (the output folder, when given; the data; the purifier and the identities it records; the face
    models; the attacks; with data.cached_only every cloak in the cache), then the size. Cloaks are looked up in the
    cache, not made; no feature is computed. A `PufaceError` (one line) when the run could not start."""
    from ..detection.detector import CloakDetector, DetectorConfig

    dev = resolve_device(device)
    root = resolve_data_root(cfg.data["root"])
    if out is not None:
        check_output_root(out)
        check_output_folder(root, out)
    purifier, train_ids, fit_ids, cal_ids = detector_identities(cfg, root)
    if cfg.attacks:
        check_attacks(cfg.attacks, device=str(dev), where=cfg.where)
    dc, aug = cfg.detector, cfg.augment
    check_net_scalars(cfg)  # the net's config too
    # the face models of the features, loaded as the run loads them
    CloakDetector(DetectorConfig(embedders=tuple(dc["embedders"]),
                                 components=tuple(c for c in dc["components"] if c != "net"),
                                 chip_size=int(dc["chip_size"]), shift_floor=float(dc["shift_floor"])),
                  purifier=purifier)
    variants, per_chip = list(aug["natural_variants"]), int(aug["variants_per_chip"])
    nat_paths: list[Path] = []
    if cfg.attacks:  # no fit sample is made without cloaks (nor a net trained: the recipe refuses a net then)
        chips, nat_paths = fit_paths(cfg, root, train_ids, fit_ids)
    n_nat = len(nat_paths) * (1 + (min(per_chip, len(variants)) if variants and per_chip > 0 else 0))
    cache = CloakCache.lookup(cfg.data["cache"], cached_only=bool(cfg.data["cached_only"]))
    fit, sets, val, cloaked = set(fit_ids), [], 0, 0
    cv, cvpc = list(aug["cloak_variants"]), int(aug["cloak_variants_per_chip"])
    for spec in cfg.attacks:
        paths, seeded = attack_chips(cfg, spec, chips)
        kept, missing = cache.uncached(create_attack(seeded, device=str(dev)), paths)
        if kept:  # the cloaks keep their chips' size (one size: `uncached` decoded them all), which the run checks
            check_cloak_size(cfg, attack_label(spec), tuple(load_images([paths[kept[0]]])[0].shape[-2:]))
        in_fit = sum(paths[i].parent.name in fit for i in kept)
        sets.append(CloakSet(attack_label(spec), len(kept), len(missing)))
        val += len(kept) - in_fit
        cloaked += in_fit * len(aug["cloak_strengths"]) + (in_fit * min(cvpc, len(cv)) if cv and cvpc > 0 else 0)
    cal = calibration_paths(cfg, root, cal_ids)
    if not cal:
        raise PufaceError(f"{root}: no images of the calibration identities found")
    return DetectorPlan(root, str(cfg.data["purifier"]), len(fit_ids), len(cal_ids), len(nat_paths), n_nat, sets, val,
                        cloaked, int(cfg.train["epochs"]), int(cfg.train["batch_size"]), len(cal),
                        len(cal) * (1 + len(variants) + len(aug["storage_variants"])), float(dc["fpr"]),
                        float(dc["confidence"]), str(dev), tuple(dc["components"]))


@dataclass
class CalibrationPlan:
    """The size of a calibration on natural photos (`plan_calibration`): the photos found, those of them the scores
    file already holds (a resume keeps them), the detector's threshold now, its false-positive rate and confidence,
    and the photos that can hold that rate."""

    natural: Path
    photos: int
    kind: str
    threshold: float
    fpr: float
    confidence: float | None
    needed: int
    scores: Path | None = None
    scored: int = 0

    def __str__(self) -> str:
        conf = f" held with {self.confidence:.0%} confidence" if self.confidence else ""
        short = f" (fewer than the {self.needed} that hold it)" if self.photos < self.needed else ""
        kept = f", {self.scored} of them already scored in {self.scores} (a resume keeps them)" if self.scored else ""
        return (f"calibration: {self.photos} natural photo(s) in {self.natural}{short} as kind {self.kind!r}{kept}; "
                f"threshold now {self.threshold:.4f}, FPR target {self.fpr:.1%} per kind{conf}. "
                "Dry run: nothing was scored or written.")


def plan_calibration(natural: str | Path, detector: str | Path | None = None, *, purifier: str | Path | None = None,
                     kind: str | None = None, scores_csv: str | Path | None = None, restart: bool = False,
                     align: bool = False) -> CalibrationPlan:
    """What `puface calibrate-detector NATURAL` would do, run nowhere (`--dry-run`): loads the detector (a file or a
    shipped one) with its purifier, lists the photos under `natural` (an error when there are none) and, given the
    scores file `scores_csv`, makes the scoring's checks of it (`detect_folder(dry_run=True)`: its run file, another
    detector's rows, `restart` and `align` as the run takes them); returns the size. Nothing is scored or written."""
    from ..detection.detector import load_detector, min_calibration_size
    from ..detection.folder import detect_folder
    from ..io.jobs import DryRun, iter_image_inputs

    det = load_detector(detector, device=None, purifier=purifier)
    nat = Path(natural)
    scored = 0
    if scores_csv is not None:
        dry = detect_folder(nat, scores_csv, detector=det, restart=restart, align=align, progress=False, dry_run=True)
        assert isinstance(dry, DryRun)
        photos, scored = dry.share, dry.done
    else:
        photos = sum(1 for _ in iter_image_inputs(nat))
    conf = det.default_confidence
    return CalibrationPlan(nat, photos, kind or f"user:{nat.resolve().name}", det.threshold(), det.default_fpr, conf,
                           min_calibration_size(det.default_fpr, conf), Path(scores_csv) if scores_csv else None,
                           scored)
