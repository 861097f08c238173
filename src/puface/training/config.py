"""The purifier training config: one TOML file with sections [data], [[attacks]], [model], [amplify],
[loss], [train], [val] (the packaged recipe `default`, puface/configs/purifier/default.toml, comments every option).

`load_config(path)` reads and validates it; unknown keys are errors (a typo must not silently fall
back to a default). `PurifierTrainConfig.as_dict()` is what is saved next to the results and inside
every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints

from ..attacks import attack_label
from ..purifier.rednet import RedNetConfig
from ..utils.errors import ConfigError
from ..utils.tomlconfig import (apply_overrides, clear_optional, config_where, load_toml_config, merge_configs,
                                read_json_object, refuse_unknown)
from .amplify import AmplifyConfig

#: how [[attacks]] entries are named for drop_attacks (the labels their cloaks and metrics carry)
LABELS = {"attacks": attack_label}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}


def _expected_type(cls: type, key: str, value: Any) -> str | None:
    """None when `value` fits field `key` of dataclass `cls` (an int where a float is asked for, a string
    for a list of names), else what the field takes ("an integer", "a number", ...)."""
    hint = get_type_hints(cls).get(key)
    if hint is None:
        return None
    kinds = [get_origin(a) or a for a in (get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,))]
    for k in kinds:
        if (
            (value is None and k is type(None))
            or (k is bool and isinstance(value, bool))
            or (
                k in (int, float)
                and isinstance(value, (int, float if k is float else int))
                and not isinstance(value, bool)
            )
            or (k is tuple and isinstance(value, (list, tuple, str)))
            or (k is str and isinstance(value, str))
        ):
            return None
    return " or ".join(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds if k is not type(None))


def _check_types(section: str, d: dict, cls: type) -> None:
    for key, value in d.items():
        want = _expected_type(cls, key, value)
        if want:
            raise ConfigError(f"{section}.{key} must be {want}, got {value!r}")


def _check_keys(section: str, d: dict, cls: type) -> None:
    refuse_unknown(d, (f.name for f in fields(cls)), f"[{section}]")


@dataclass(frozen=True)
class DataConfig:
    """root: identity folders. Identity split: see `data.purifier_identities`.
    max_per_identity: cap per identity (seeded), None = all. val_images: images per attack for
    validation (seeded choice among the validation identities). cache: cloak cache folder ("" = default).
    cached_only: never make a cloak; one missing from the cache stops the run (`CloakNotCachedError`).
    template: the face layout of the chips under `root` ("dlib150", "arcface112"); the trained purifier records
    it, and `puface purify --template auto` serves other layouts by resampling to it."""

    root: str = ""
    template: str = "dlib150"
    heldout_min_images: int | None = 10
    heldout_fraction: float = 0.0
    val_fraction: float = 0.1
    max_per_identity: int | None = None
    val_images: int = 40
    cache: str = ""
    cloak_batch_size: int = 8
    cached_only: bool = False


@dataclass(frozen=True)
class LossConfig:
    """image: "mse" | "l1". feature_weight: lambda (0 = image loss only). distance: "cosine" | "l2".
    embedders: frozen face models of the feature loss (registry names or model files)."""

    image: str = "mse"
    feature_weight: float = 0.05
    distance: str = "cosine"
    embedders: tuple[str, ...] = ("dlib-resnet29",)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. batch_size is per process; lr decays with a cosine to lr * final_lr_fraction
    after `warmup_steps` of linear warm-up. save_every_steps: mid-epoch checkpoints for resuming.
    seed: initialisation, batch order and augmentation (default: the top-level `seed`, which also draws
    the data split and the cloaked images); set it alone to repeat a run on the same data.
    init: start from these purifier weights instead of a random initialisation ("" = random, "default" = the
    shipped purifier, or a checkpoint path); the model config must match theirs. For fine-tuning a recipe.
    tf32: let CUDA use TF32 in convolutions and matrix products (faster on Ampere and later). Off by
    default: purifiers trained with it on (PyTorch's default for convolutions) removed less LowKey on
    held-out faces than CPU-trained ones of the same recipe (CHANGELOG.md, 2026-11-27 03:26).
    face_scale: run the network at this layout's face scale ("dlib150", "arcface112"; "" = the data's own
    `data.template`): images are resized to it and only the change is resized back (`AtFaceScale`), in
    training and in use. To fine-tune a dlib150 purifier on ArcFace crops without changing its scale."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    hflip: bool = True
    channels_last: bool = True
    save_every_steps: int = 100
    max_steps_per_epoch: int | None = None
    seed: int | None = None
    tf32: bool = False
    init: str = ""
    face_scale: str = ""


@dataclass(frozen=True)
class ValConfig:
    """embedders: models for the validation cosines (default: the loss embedders). Best checkpoint =
    highest `score` = mean over embedders of (cos(E(P(x_c)), E(x)) + cos(E(P(x)), E(x))) / 2."""

    embedders: tuple[str, ...] = ()
    batch_size: int = 32
    every: int = 1  # validate every this many epochs (and always after the last)


@dataclass(frozen=True)
class PurifierTrainConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    attacks: tuple[dict, ...] = ()
    model: RedNetConfig = field(default_factory=RedNetConfig)
    amplify: AmplifyConfig = field(default_factory=AmplifyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val: ValConfig = field(default_factory=ValConfig)
    #: the file it was read from (with its --set overrides, `config_where`), for errors found later; not saved
    where: str = field(default="", compare=False)

    @property
    def val_embedders(self) -> tuple[str, ...]:
        return self.val.embedders or self.loss.embedders

    def as_dict(self) -> dict[str, Any]:
        d = {
            "seed": self.seed,
            "data": asdict(self.data),
            "attacks": [dict(a) for a in self.attacks],
            "model": self.model.as_dict(),
            "amplify": self.amplify.as_dict(),
            "loss": {**asdict(self.loss), "embedders": list(self.loss.embedders)},
            "train": asdict(self.train),
            "val": {**asdict(self.val), "embedders": list(self.val.embedders)},
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PurifierTrainConfig":
        d = dict(d)
        refuse_unknown(d, {"seed", "attacks", *SECTIONS})

        def section(name: str, klass: type, tuples: tuple[str, ...] = ()):
            s = dict(d.get(name) or {})
            if not isinstance(s, dict):
                raise ConfigError(f"[{name}] must be a table")
            _check_keys(name, s, klass)
            _check_types(name, s, klass)
            for t in tuples:
                if t in s:
                    v = s[t]
                    s[t] = (v,) if isinstance(v, str) else tuple(v)
            return klass(**s)

        _check_types("config", {k: d[k] for k in ("seed",) if k in d}, cls)
        for name in ("model", "amplify"):
            klass = SECTIONS[name]
            if isinstance(d.get(name), dict):
                _check_types(name, {k: v for k, v in d[name].items() if k in {f.name for f in fields(klass)}}, klass)
        attacks = d.get("attacks") or []
        if not isinstance(attacks, list) or not all(isinstance(a, dict) for a in attacks):
            raise ConfigError("attacks must be a list of tables ([[attacks]] name = ..., mode = ...)")
        cfg = cls(
            seed=int(d.get("seed", 0)),
            data=section("data", SECTIONS["data"]),
            attacks=tuple(dict(a) for a in attacks),
            model=SECTIONS["model"].from_dict(dict(d.get("model") or {})),
            amplify=SECTIONS["amplify"].from_dict(dict(d.get("amplify") or {})),
            loss=section("loss", SECTIONS["loss"], ("embedders",)),
            train=section("train", SECTIONS["train"]),
            val=section("val", SECTIONS["val"], ("embedders",)),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .losses import FEATURE_DISTANCES, IMAGE_LOSSES

        if self.loss.image not in IMAGE_LOSSES:
            raise ConfigError(f"loss.image must be one of {IMAGE_LOSSES.names()}, got {self.loss.image!r}")
        if self.loss.distance not in FEATURE_DISTANCES:
            raise ConfigError(f"loss.distance must be one of {FEATURE_DISTANCES.names()}, got {self.loss.distance!r}")
        if self.loss.feature_weight < 0:
            raise ConfigError(f"loss.feature_weight must be >= 0, got {self.loss.feature_weight}")
        if self.loss.feature_weight > 0 and not self.loss.embedders:
            raise ConfigError("loss.feature_weight > 0 needs loss.embedders")
        from ..purifier.model import TEMPLATES

        if self.data.template not in TEMPLATES:
            raise ConfigError(f"data.template must be one of {', '.join(TEMPLATES)}, got {self.data.template!r}")
        if self.train.face_scale and self.train.face_scale not in TEMPLATES:
            raise ConfigError(
                f"train.face_scale must be one of {', '.join(TEMPLATES)} or \"\", got {self.train.face_scale!r}"
            )
        t = self.train
        if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
            raise ConfigError(
                f"train needs epochs >= 1, batch_size >= 1 and lr > 0 (got {t.epochs}, {t.batch_size}, {t.lr})"
            )


# Each config section's dataclass: the one mapping `from_dict` and `_check_override_types` read.
SECTIONS: dict[str, Any] = {"data": DataConfig, "model": RedNetConfig, "amplify": AmplifyConfig, "loss": LossConfig,
                             "train": TrainConfig, "val": ValConfig}


def _field_class(key: str) -> tuple[type | None, str]:
    """(the dataclass holding the setting "section.name" or "seed", the field's name); None for a key of no section
    (an [[attacks]] entry's: "attacks.0.images")."""
    section, _, name = key.rpartition(".")
    return (SECTIONS.get(section) if section else PurifierTrainConfig), name


def _takes_none(key: str) -> bool:
    """Whether the setting `key` is optional (its type admits None: train.seed, data.max_per_identity, ...)."""
    cls, name = _field_class(key)
    hint = get_type_hints(cls).get(name) if cls is not None else None
    return hint is not None and get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint)


def _check_override_types(overrides: dict[str, Any]) -> None:
    """An override ("train.epochs" -> "abc") of the wrong type is an error naming it, not the config file."""
    for key, value in overrides.items():
        cls, name = _field_class(key)
        want = _expected_type(cls, name, value) if cls is not None else None
        if want:
            raise ConfigError(f"--set {key}: expected {want}, got {value!r}")


def load_config(ref: str | Path, overrides: dict[str, Any] | None = None, *, drop_attacks: Sequence[str] = (),
                add_attacks: Sequence[dict[str, Any]] = (), data_root: str | Path | None = None) -> PurifierTrainConfig:
    """Read a purifier training config: a TOML file or a packaged recipe's name ("default", "v5", ...),
    with `extends` resolved (`puface.utils.tomlconfig`), or a run's saved `config.json`.

    overrides: "section.key" (or "seed") -> value, set on top; the text "none" clears an optional setting
    (`tomlconfig.clear_optional`: `train.max_steps_per_epoch`, `data.max_per_identity`, ...).
    drop_attacks / add_attacks: edit the `[[attacks]]` list like a config's ``drop_attacks`` /
    ``[[add_attacks]]`` (labels as `attack_label` names them, e.g. "fawkes-high", "lowkey-ensemble"; an unknown
    label is an error). data_root: instead of `[data] root`. Both serve ablations without copying a config.
    """
    if Path(ref).suffix == ".json" and Path(ref).is_file():  # a run's own config.json (`as_dict`), as it ran
        path = Path(ref)
        d = read_json_object(path, "a config (a JSON object, as a run's config.json holds)")
    else:
        path, d, _ = load_toml_config(ref, "purifier", LABELS)
    if drop_attacks or add_attacks:
        d = merge_configs(d, {"drop_attacks": list(drop_attacks), "add_attacks": [dict(a) for a in add_attacks]},
                          LABELS, f"{path} (--drop-attack / --add-attack)")
    overrides = clear_optional(overrides, _takes_none)
    _check_override_types(overrides)
    apply_overrides(d, overrides, data_root)
    try:
        return replace(PurifierTrainConfig.from_dict(d), where=config_where(path, overrides))
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{config_where(path, overrides)}: {e}") from None
