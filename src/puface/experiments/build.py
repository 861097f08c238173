"""From a config's entries to the objects the protocol runs: attacks, defenses, victims, trainers, users;
and the fingerprint that tells whether an output folder's results belong to this config and these weights."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..attacks import create_attack
from ..attacks.adaptive import through_defenses
from ..attacks.folder import FolderCloaks
from ..defenses import Defense, PuFaceDefense, create_defense, defense_training_identities
from ..evaluation.data import EvaluationData, choose_users
from ..evaluation.protocol import AttackSpec, TrainerSpec
from ..evaluation.trainers import TRAINERS, check_trainer
from ..models.base import FaceEmbedder
from ..models.registry import load_embedder
from ..utils.errors import ConfigError, MissingDependencyError, MissingFileError, PufaceError
from ..utils.tomlconfig import command_making, config_label, config_where
from .config import AttackEntry, DefenseEntry, ExperimentConfig, config_files

__all__ = [
    "build_attack",
    "build_defense",
    "build_victims",
    "recorded_surrogates",
    "build_trainers",
    "draw_users",
    "results_fingerprint",
    "excluded_identities",
    "cached_grid_cloaks",
    "entry_errors",
]


@contextmanager
def entry_errors(cfg: ExperimentConfig | None, where: str) -> Iterator[None]:
    """Head an error raised while building a part of `cfg` (`where`: "[[attacks]] 'lowkey'", "[victims] embedders")
    with its file and that part, as a ConfigError, so the one line says where the mistake is (an unknown name, a
    wrong option, a missing weights file: then also the command that makes it, when the comments of the config's
    files give one: `config_files`, `command_making`); a config not read from a file (`puface evaluate`'s options, a
    dict) and a missing package keep their message as it is (so does everything when `cfg` is None)."""
    try:
        yield
    except MissingDependencyError:
        raise
    except PufaceError as e:
        if cfg is None or cfg.source is None:
            raise
        made = command_making(e.named, config_files(cfg.source)) if isinstance(e, MissingFileError) else None
        hint = f"; it is made by `{made[0]}` (the comments of {config_label(made[1])})" if made else ""
        raise ConfigError(f"{config_where(cfg.source, cfg.overrides)} {where}: {e}{hint}") from e


def build_attack(entry: AttackEntry, seed: int, device: str | None, cloak_batch_size: int | None = None,
                 victims: dict[str, FaceEmbedder] | None = None) -> AttackSpec:
    """An `AttackSpec` for the protocol (the attack object is built here). `cloak_batch_size`: images
    optimised together when the entry does not set `batch_size` (None: the attack's own default).
    A folder of cloaks without `embedders` takes its surrogates from the record `puface cloak` left in it:
    the victims (name -> embedder) whose weights are a recorded surrogate's, so white-box runs are told apart."""
    if entry.is_clean:
        return AttackSpec(entry.label, None)
    if entry.name == "folder":
        params = dict(entry.params)
        if "root" not in params:
            raise ConfigError(f"attack {entry.label!r}: a folder attack needs root = \"<folder of cloaked images>\"")
        root, pats = params.pop("root"), params.pop("patterns", None)
        if params:
            raise ConfigError(
                f"attack {entry.label!r}: unknown option(s) {', '.join(sorted(params))} "
                "(known: root, patterns, embedders)"
            )
        folder = FolderCloaks(root, pats)
        if entry.embedders is not None:
            surrogates = tuple(entry.embedders)
        else:
            surrogates = recorded_surrogates(folder, victims or {})
        return AttackSpec(entry.label, folder, surrogates=surrogates)
    kw = dict(entry.params)
    if entry.mode is not None:
        kw["mode"] = entry.mode
    if entry.embedders is not None:
        kw["embedders"] = entry.embedders
    if cloak_batch_size and "batch_size" not in kw:
        kw["batch_size"] = int(cloak_batch_size)
    atk = create_attack(entry.name, seed=seed, device=device, **kw)
    surrogates = tuple(entry.embedders) if entry.embedders is not None else tuple(s.name for s in atk.surrogates)
    return AttackSpec(
        entry.label, atk, surrogates=surrogates, batch_size=getattr(atk, "batch_size", cloak_batch_size or 16)
    )


def build_defense(entry: DefenseEntry, device: str | None) -> Defense:
    """The defense of a config entry; a purifier runs on the experiment's device unless the entry says."""
    spec = entry.spec
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k != "label"}
        if spec.get("name") == "puface" and device and "device" not in spec:
            spec["device"] = device
    return create_defense(spec)


def recorded_surrogates(folder: FolderCloaks, victims: dict[str, FaceEmbedder]) -> tuple[str, ...]:
    """The names of the surrogates recorded in a folder of cloaks, and of the `victims` (name -> embedder)
    that are one of them (same weights fingerprint), so that a victim given as a file path matches too."""
    recorded = folder.recorded_surrogates
    prints = {s.get("weights_sha256_16") for s in recorded} - {None}
    names = [str(s["name"]) for s in recorded if "name" in s]
    if prints:
        names += [v for v, emb in victims.items() if v not in names and emb.fingerprint() in prints]
    return tuple(names)


def build_victims(cfg: ExperimentConfig, device: str | None) -> dict[str, FaceEmbedder]:
    with entry_errors(cfg, "[victims] embedders"):
        return {name: load_embedder(name, device=device) for name in cfg.victims}


def build_trainers(cfg: ExperimentConfig, device: str | None) -> list[TrainerSpec]:
    """The config's trainers, each checked (name and options) before any work; an end-to-end trainer
    fine-tunes on the experiment's device unless it says."""
    trainers = [
        TrainerSpec(t.label, t.name, dict(t.params), tuple(t.victims) if t.victims else None) for t in cfg.trainers
    ]
    for t in trainers:
        if t.name == "e2e" and device and "device" not in t.params:
            t.params["device"] = device
        with entry_errors(cfg, f"[[trainers]] {t.label!r}"):
            check_trainer(t.name, **t.params)
    return trainers


def excluded_identities(defenses: dict[str, Defense], warn: Callable[[str], None],
                        cfg: ExperimentConfig | None = None) -> set[str]:
    """Identities any purifier of the grid was trained on (protected users must not be among them);
    `warn` is told about purifiers that do not record theirs. A purifier that does not load is an error naming the
    defense's entry of `cfg` (`entry_errors`)."""
    out: set[str] = set()
    for label, d in defenses.items():
        if not any(isinstance(s, PuFaceDefense) for s in d.parts):
            continue
        with entry_errors(cfg, f"[[defenses]] {label!r}"):
            ids = defense_training_identities(d)
        if ids is None:
            warn(f"warning: defense {label!r}: the purifier does not record its training identities; "
                 "make sure no protected user was in its training set")
        else:
            out |= ids
    return out


def draw_users(cfg: ExperimentConfig, root: str | Path, seed: int, *, exclude: Iterable[str] = (),
               progress: bool = False) -> tuple[EvaluationData, list[str]]:
    """(EvaluationData, protected users) of one seed, as `run_experiment` draws them: the config's data
    settings, its `[users]` (count or names) and `exclude` (identities a purifier of the grid trained on)."""
    data = EvaluationData.prepare(
        root, seed=seed, train_fraction=cfg.data["train_fraction"], min_images=max(2, int(cfg.data["min_images"])),
        max_per_identity=cfg.data["max_per_identity"], image_size=int(cfg.data["image_size"]), progress=progress,
    )
    users = choose_users(
        data, count=cfg.users.get("count"), names=cfg.users.get("names"), seed=seed,
        exclude=exclude, min_train=int(cfg.users["min_train"]), min_test=int(cfg.users["min_test"]),
        excluded_as="the identities a purifier of the grid was trained on (its checkpoint records them); evaluate on "
        "other people, or allow them: [users] allow_purifier_identities = true (evaluate --allow-purifier-identities)",
    )
    return data, users


def cached_grid_cloaks(cfg: ExperimentConfig, root: str | Path, seed: int, victim: FaceEmbedder
                       ) -> tuple[EvaluationData, list[str], dict[str, list[tuple[Any, Any]]]]:
    """The cloaks of a config's grid (seed `seed`) that are in the cloak cache, for analyses that must not cloak:
    (data, protected users, {attack label: [(natural, cloaked) uint8 training images of one user, ...]}), users
    without a cached cloak left out. `victim` only completes the protocol that makes the cloak requests."""
    from ..attacks.cache import CloakCache
    from ..evaluation.protocol import Protocol
    from ..utils.errors import CloakNotCachedError

    grid_defenses = {d.label: build_defense(d, None) for d in cfg.defenses}
    data, users = draw_users(cfg, root, seed, exclude=excluded_identities(grid_defenses, print))
    proto = Protocol(
        data,
        users,
        [build_attack(a, seed, None, cfg.run["cloak_batch_size"]) for a in cfg.attacks],
        {"v": victim},
        [t for t in build_trainers(cfg, None) if not t.victims],
        {"none": create_defense("none")},
        cloak_cache=CloakCache(cached_only=True),
        progress=False,
    )
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for spec in proto.attacks:
        if spec.attack is None:
            continue
        for user in users:
            try:
                cloaked = proto.cloak(spec, user)
            except CloakNotCachedError:
                continue
            groups.setdefault(spec.label, []).append((data.train.images[data.train.rows_of(user)], cloaked))
    return data, users, groups


def models_fingerprint(attacks: list[AttackSpec], victims: dict[str, FaceEmbedder]) -> str:
    """Hash of what the models of a grid compute beyond `results_fingerprint`'s weights: every attack's surrogates
    (their weights, input size and normalisation, as the attack's config records them: a model file an attack names
    but no victim is, replaced by other weights, made other cloaks) and each victim's `embedding_key` (a sidecar's
    input size or normalisation changed). Recorded beside the results fingerprint; a resume compares it."""
    blob = {f"victim:{k}": v.embedding_key() for k, v in victims.items()}
    for a in attacks:
        config = getattr(a.attack, "config", None)
        if isinstance(config, dict) and "surrogates" in config:
            blob[f"attack:{a.label}"] = config["surrogates"]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def results_fingerprint(cfg: ExperimentConfig, victims: dict[str, FaceEmbedder], defenses: dict[str, Defense]) -> str:
    """Hash of the config (`ExperimentConfig.fingerprint`), of every weight file it names (victim models, purifier
    defenses and the defenses an adaptive attack goes through) and of its trainers' versions above 1
    (`Trainer.algorithm`). A run folder resumes only when this matches, so retrained weights behind the same config
    text ("default"), or a trainer whose fits changed, start afresh."""
    models: dict[str, Any] = {f"victim:{k}": v.fingerprint() for k, v in victims.items()}
    for t in cfg.trainers:  # version 1 left out: the fingerprints of folders written before versions existed stay
        if (version := getattr(TRAINERS.get(t.name).factory, "algorithm", 1)) > 1:
            models[f"trainer:{t.name}"] = version
    models.update({f"defense:{k}": f for k, d in defenses.items() if (f := d.fingerprint)})  # hashes weights: once each
    for a in cfg.attacks:
        through = a.params.get("through")
        if through is not None:
            models[f"attack:{a.label}"] = "|".join(d.fingerprint for d in through_defenses(through))
    blob = json.dumps({"config": cfg.fingerprint(), "models": models}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
