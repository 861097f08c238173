"""Experiment configs: the schema, reading (with `extends`, see `puface.utils.tomlconfig`) and writing back.

A config (every key optional except the lists; the packaged ones are in `puface/configs/`)::

    name = "lfw"
    seeds = [0]
    protocol = "training"         # FaceCure's (cloaked training photos) or "query" (clean gallery, cloaked probes)

    [data]
    root = "lfw-chips150"         # a folder (relative: to the current folder, not the config's), a data set
                                  # name under $PUFACE_DATA, or "johns"
    min_images = 10               # identities with fewer images are left out
    max_per_identity = 20         # seeded cap per identity (absent: all)
    train_fraction = 0.7
    image_size = 150
    # photos = "lfw-photos"       # the photos the chips were cut from: train on published photos
                                  # (cloak pasted in, defense run on the photo, face cut again;
                                  # evaluation.photos), training protocol only
    # photos_jpeg = 75            # ... every published photo re-encoded as JPEG at this quality

    [users]
    count = 20                    # protected users drawn with the seed ...
    # names = ["Alice", "Bob"]    # ... or named
    min_train = 2
    min_test = 1
    allow_purifier_identities = false

    [[attacks]]                   # one table per attack (the spec grammar of puface.utils.specs);
    name = "fawkes"               # name = "none" is the clean reference ("clean"); name = "folder",
    mode = "high"                 # root = DIR: cloaks made elsewhere (attacks.folder.FolderCloaks)
    embedders = ["dlib-resnet29"] # the attacker's surrogates; other keys go to create_attack
    label = "fawkes-high"         # optional, defaults to name-mode

    [victims]
    embedders = ["dlib-resnet29", "sface"]

    [[trainers]]
    name = "nn"                   # nn | linear | e2e, other keys go to create_trainer;
                                  # victims = ["dlib-resnet29"] restricts a trainer to some victims
    [[defenses]]
    name = "puface"               # or a spec string: name = "blur:sigma=1+bitdepth:bits=5"
    weights = "default"

    [run]
    device = "cpu"                # absent: CUDA when available
    batch_size = 64               # images per batch for defenses and embeddings
    cloak_batch_size = 16         # images an attack optimises together (absent: the attack's default)
    cache = true                  # the content cache for embeddings and purified images
    output = "runs/lfw"

    [report]
    users = 3                     # users shown in the image grids
    images_per_user = 2
    # headline = ["mine"]         # the defenses beside "none" in the first table (default: those labelled puface...)

    [detection]                   # cloak detection per attack (AUC, TPR at the calibrated threshold, ROC)
    enabled = true
    detector = "default"          # the shipped detector, or a detector file (`puface train-detector`)
    # purifier = "mine.safetensors"  # the purifier the detector was calibrated with (default: the shipped one)
    # fpr = 0.01                  # false-positive rate of the threshold (default: the detector's)

A config may start from another (``extends = "lfw"``) and change only what differs; lists replace the
parent's, or are edited with ``drop_attacks = [labels]`` / ``[[add_attacks]]`` (any list key).
"""

from __future__ import annotations

import hashlib
import itertools
import dataclasses
import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..attacks import attack_label
from ..defenses import default_label
from ..evaluation.protocol import PROTOCOLS, run_id
from ..utils.errors import ConfigError, MissingDependencyError, PufaceError
from ..utils.tomlconfig import (
    apply_overrides,
    clear_optional,
    config_label,
    extends_chain,
    load_toml_config,
    packaged_config,
    refuse_unknown,
    resolve_chain,
    to_toml,
)

__all__ = ["ExperimentConfig", "AttackEntry", "TrainerEntry", "DefenseEntry", "load_config", "config_text", "LABELS",
           "MIN_IMAGE_SIZE", "config_files"]

_TOP_KEYS = {
    "name",
    "description",
    "seeds",
    "protocol",
    "data",
    "users",
    "attacks",
    "victims",
    "trainers",
    "defenses",
    "run",
    "report",
    "detection",
}
_SECTION_KEYS = {
    "data": {"root", "min_images", "max_per_identity", "train_fraction", "image_size", "photos", "photos_jpeg"},
    "users": {"count", "names", "min_train", "min_test", "allow_purifier_identities"},
    "victims": {"embedders"},
    "run": {"device", "batch_size", "cache", "output", "cloak_batch_size"},
    "report": {"users", "images_per_user", "enabled", "headline"},
    "detection": {"enabled", "detector", "purifier", "fpr"},
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"root": "johns", "min_images": 2, "max_per_identity": None, "train_fraction": 0.7, "image_size": 150},
    "users": {"count": None, "names": None, "min_train": 2, "min_test": 1, "allow_purifier_identities": False},
    "run": {"device": None, "batch_size": 64, "cache": True, "output": None, "cloak_batch_size": None},
    "report": {"users": 3, "images_per_user": 2, "enabled": True, "headline": None},
    "detection": {"enabled": True, "detector": "default", "purifier": None, "fpr": None},
}


#: the smallest [data] image_size (and `puface evaluate --image-size`) in pixels
MIN_IMAGE_SIZE = 32

#: (section, key) -> the smallest value; the key must be an integer (or absent / None where its default is None)
_INT_MINIMUMS = {
    ("data", "min_images"): 1, ("data", "max_per_identity"): 1, ("data", "image_size"): MIN_IMAGE_SIZE,
    ("users", "count"): 1, ("users", "min_train"): 1, ("users", "min_test"): 1,
    ("run", "batch_size"): 1, ("run", "cloak_batch_size"): 1,
    ("report", "users"): 0, ("report", "images_per_user"): 0,
}


def _check_numbers(where: str, sections: dict[str, dict]) -> None:
    """Integer settings are integers at or above their minimum (`_INT_MINIMUMS`); train_fraction in (0, 1)."""
    for (sec, key), low in _INT_MINIMUMS.items():
        v = sections[sec][key]
        if v is None and _DEFAULTS[sec][key] is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{where}: [{sec}] {key} must be an integer >= {low}, got {v!r}")
    frac = sections["data"]["train_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
        raise ConfigError(f"{where}: [data] train_fraction must be a number between 0 and 1, got {frac!r}")


def _as_table(t: Any) -> Any:
    return {"name": t} if isinstance(t, str) else t


def _trainer_label(t: dict) -> str:
    return str(t.get("label") or t.get("name", "?"))


def _defense_label(t: Any) -> str:
    t = _as_table(t)
    return str(t.get("label") or default_label({k: v for k, v in t.items() if k != "label"}))


#: how list entries are named, for `drop_<key>` edits and the labels in result tables
LABELS: dict[str, Callable[[dict], str]] = {
    "attacks": lambda t: attack_label(_as_table(t)),
    "trainers": lambda t: _trainer_label(_as_table(t)),
    "defenses": _defense_label,
}


@dataclass
class AttackEntry:
    """One attack of the grid: `create_attack(name, mode=..., embedders=..., **params)`."""

    label: str
    name: str
    mode: str | None = None
    embedders: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_clean(self) -> bool:
        return self.name == "none"


@dataclass
class TrainerEntry:
    """One trainer: `create_trainer(name, victim, **params)`, on `victims` only when given."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    victims: list[str] | None = None


@dataclass
class DefenseEntry:
    label: str
    spec: Any  # a spec string or a table, resolved by `defenses.create_defense`


@dataclass
class ExperimentConfig:
    """A parsed, validated experiment config. `raw` is the TOML as read (saved with the results)."""

    name: str
    seeds: list[int]
    data: dict[str, Any]
    users: dict[str, Any]
    attacks: list[AttackEntry]
    victims: list[str]
    trainers: list[TrainerEntry]
    defenses: list[DefenseEntry]
    run: dict[str, Any]
    report: dict[str, Any]
    detection: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS["detection"]))
    description: str = ""
    protocol: str = "training"
    raw: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    #: the `--set` overrides put on top of `source` ({"users.count": 2}): errors name them with it
    overrides: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path | None = None) -> "ExperimentConfig":
        where = str(source) if source else "config"
        refuse_unknown(raw, _TOP_KEYS, where)
        for sec, known in _SECTION_KEYS.items():
            if sec in raw and not isinstance(raw[sec], dict):
                raise ConfigError(f"{where}: [{sec}] must be a table")
            refuse_unknown(raw.get(sec, {}), known, f"{where} [{sec}]")
        data, users, run, report, detection = ({**_DEFAULTS[s], **raw.get(s, {})}
                                               for s in ("data", "users", "run", "report", "detection"))
        _check_numbers(where, {"data": data, "users": users, "run": run, "report": report})
        if detection["fpr"] is not None and not 0.0 <= float(detection["fpr"]) < 1.0:
            raise ConfigError(f"{where}: [detection] fpr must be in [0, 1), got {detection['fpr']}")
        if users["count"] is None and not users["names"]:
            users["count"] = 1
        seeds = _seed_list(raw.get("seeds", [0]), where)
        attacks = [cls._attack(a, where) for a in cls._tables(raw, "attacks", where)]
        trainers = [cls._trainer(t, where) for t in cls._tables(raw, "trainers", where)]
        defenses = [cls._defense(d, where, source) for d in cls._tables(raw, "defenses", where)]
        victims = list(raw.get("victims", {}).get("embedders", ["dlib-resnet29"]))
        if not victims:
            raise ConfigError(f"{where}: [victims] embedders is empty")
        for t in trainers:
            unknown = sorted(set(t.victims or ()) - set(victims))
            if unknown:
                raise ConfigError(f"{where}: trainer {t.label!r} names victims not in [victims]: {', '.join(unknown)}")
        for what, labels in (("attack", [a.label for a in attacks]), ("trainer", [t.label for t in trainers]),
                             ("defense", [d.label for d in defenses]), ("victim", victims)):
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ConfigError(
                    f"{where}: {what} labels must be unique, repeated: {', '.join(dup)} (set label = \"...\")"
                )
        headline = report["headline"]
        if headline is not None:
            labels = [d.label for d in defenses]
            if not isinstance(headline, list) or not all(isinstance(x, str) for x in headline):
                raise ConfigError(f"{where} [report]: headline must be a list of defense labels, got {headline!r}")
            unknown = [x for x in headline if x not in labels]
            if unknown:
                raise ConfigError(f"{where} [report]: headline names no defense of the grid: {', '.join(unknown)} "
                                  f"(defenses: {', '.join(labels)})")
        protocol = str(raw.get("protocol", "training"))
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
        cfg = cls(
            name=str(raw.get("name", source.stem if source else "experiment")),
            seeds=list(seeds),
            data=data,
            users=users,
            attacks=attacks,
            victims=victims,
            trainers=trainers,
            defenses=defenses,
            run=run,
            report=report,
            detection=detection,
            description=str(raw.get("description", "")),
            protocol=protocol,
            raw=raw,
            source=source,
        )
        # a run is known by its `|`-joined run id (resume skips the ids in runs.jsonl): labels holding `|` may make two
        # cells one id, and the second would be taken as done; such a grid is refused (no other label changes)
        ids: dict[str, dict] = {}
        for c in cfg.grid():
            other = ids.setdefault(run_id(c["seed"], c["attack"], c["victim"], c["trainer"], c["defense"], ""), c)
            if other is not c:
                raise ConfigError(
                    f"{where}: the runs of two cells would share one id, as labels holding '|' are joined "
                    f"with '|': {other} and {c}; change a label"
                )
        return cfg

    @staticmethod
    def _tables(raw: dict, key: str, where: str) -> list:
        items = raw.get(key)
        if not items:
            raise ConfigError(f"{where}: needs at least one entry in [[{key}]]")
        if not isinstance(items, list):
            raise ConfigError(f"{where}: {key} must be an array of tables ([[{key}]])")
        return items

    @staticmethod
    def _entry(t: Any, key: str, where: str) -> tuple[str, str, dict[str, Any]]:
        """(label, name, the other settings) of one [[key]] entry (a table or a spec name)."""
        t = _as_table(t)
        if not isinstance(t, dict) or "name" not in t:
            raise ConfigError(f"{where}: every [[{key}]] entry needs a name, got {t!r}")
        rest = {k: v for k, v in t.items() if k not in ("label", "name")}
        return LABELS[key](t), str(t["name"]), rest

    @classmethod
    def _attack(cls, t: Any, where: str) -> AttackEntry:
        label, name, t = cls._entry(t, "attacks", where)
        mode = t.pop("mode", None)
        emb = t.pop("embedders", None)
        if name == "none" and (mode or emb or t):
            raise ConfigError(f"{where}: attack 'none' (the clean reference) takes no settings")
        run_wide = sorted(k for k in ("seed", "device") if k in t)  # the run sets these for every attack
        if run_wide:
            raise ConfigError(f"{where}: attack {label!r} sets {', '.join(run_wide)}; an experiment seeds each attack "
                              "with its run's seed (`seeds = [...]`) and runs it on [run] device (--device)")
        emb = [emb] if isinstance(emb, str) else emb
        return AttackEntry(
            label=label, name=name, mode=mode, embedders=list(emb) if emb is not None else None, params=t
        )

    @classmethod
    def _trainer(cls, t: Any, where: str) -> TrainerEntry:
        label, name, t = cls._entry(t, "trainers", where)
        victims = t.pop("victims", None)
        if victims is not None and (not isinstance(victims, list) or not victims):
            raise ConfigError(f"{where}: trainer {label!r}: victims must be a non-empty list of victim embedders")
        return TrainerEntry(label=label, name=name, params=t, victims=list(victims) if victims else None)

    @staticmethod
    def _defense(t: Any, where: str, source: Path | None = None) -> DefenseEntry:
        """One [[defenses]] entry; its default label builds the defense, so a mistake in a file's entry (an unknown
        name or option) is a ConfigError naming the file and the entry (`build.entry_errors` does the others)."""
        if isinstance(t, dict) and "name" not in t:
            raise ConfigError(f"{where}: every [[defenses]] entry needs a name, got {t!r}")
        try:
            label = _defense_label(t)
        except MissingDependencyError:
            raise
        except PufaceError as e:
            if source is None:
                raise
            entry = t.get("label") or t["name"] if isinstance(t, dict) else t
            raise ConfigError(f"{where} [[defenses]] {str(entry)!r}: {e}") from e
        return DefenseEntry(label=label, spec=t)

    # -------------------------------------------------------------- the grid

    def grid(self) -> list[dict[str, Any]]:
        """Every (seed, attack, victim, trainer, defense) combination, in run order; each is run for
        every protected user."""
        return [
            {"seed": s, "attack": a.label, "victim": v, "trainer": t.label, "defense": d.label}
            for s, d, a, v, t in itertools.product(self.seeds, self.defenses, self.attacks, self.victims, self.trainers)
            if t.victims is None or v in t.victims
        ]

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not the output folder, report or detection settings:
        detection is recomputed from the caches at the end of every session)."""
        keep = {k: v for k, v in self.raw.items() if k not in ("run", "report", "description", "name", "detection")}
        keep["data"] = self.data
        keep["run"] = {
            k: v for k, v in self.run.items() if k not in ("output", "cache", "batch_size", "cloak_batch_size")
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _edited(self, edit: Callable[[dict], None]) -> "ExperimentConfig":
        raw = json.loads(json.dumps(self.raw, default=str))
        edit(raw)
        return dataclasses.replace(ExperimentConfig.from_dict(raw, self.source), overrides=dict(self.overrides))

    def with_data_root(self, root: str | Path) -> "ExperimentConfig":
        return self._edited(lambda raw: raw.setdefault("data", {}).__setitem__("root", str(root)))

    def with_seeds(self, seeds: int | Sequence[int], where: str = "with_seeds") -> "ExperimentConfig":
        """The same config with other split/user/attack seeds (a repeat of the grid on other data draws): a list of
        integers (numpy's too) or one; anything else is the ConfigError of a config's `seeds` (no int(1.5) = 1),
        headed by `where` (the caller that was given them: not the config file, which had other seeds)."""
        given: Any = [seeds] if isinstance(seeds, numbers.Integral) else seeds
        if isinstance(given, (list, tuple, range)):
            given = [int(s) if isinstance(s, numbers.Integral) and not isinstance(s, bool) else s for s in given]
        given = _seed_list(given, where)
        return self._edited(lambda raw: raw.__setitem__("seeds", given))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "ExperimentConfig":
        """The same config with "section.key" -> value set on top (`reproduce --set users.count=2`; a number picks an
        array of tables' entry: "attacks.1.steps"; `tomlconfig.apply_overrides`); errors name the config and them."""
        raw = json.loads(json.dumps(self.raw, default=str))
        overrides = clear_optional(overrides, _takes_none)  # `--set data.max_per_identity=none`: every image
        apply_overrides(raw, overrides)  # (its errors name the --set key)
        for key in (k for k, v in overrides.items() if v is None):  # cleared = absent, as the saved config.toml has it
            section, _, name = key.partition(".")
            raw.get(section, {}).pop(name, None)
        sets = ", ".join(f"{k}={v}" for k, v in overrides.items())
        if raw.get("description") and "description" not in overrides:  # table.md heads its tables with it
            raw["description"] = f"{raw['description']} Changed by --set {sets}."
        try:
            cfg = ExperimentConfig.from_dict(raw, self.source)
        except ConfigError as e:
            raise ConfigError(f"--set {sets}: {e}") from None
        return dataclasses.replace(cfg, overrides={**self.overrides, **overrides})

    def with_detection(self, **changes: Any) -> "ExperimentConfig":
        """The same config with [detection] settings changed (recorded in the config saved with the results)."""
        return self._edited(lambda raw: raw.setdefault("detection", {}).update(changes))

    def resolved(self) -> dict[str, Any]:
        """Every setting after defaults and labels (JSON-serialisable; saved with the results)."""
        return {
            "name": self.name,
            "seeds": self.seeds,
            "protocol": self.protocol,
            "data": self.data,
            "users": self.users,
            "attacks": [a.__dict__ for a in self.attacks],
            "victims": self.victims,
            "trainers": [t.__dict__ for t in self.trainers],
            "defenses": [{"label": d.label, "spec": d.spec} for d in self.defenses],
            "run": self.run,
            "report": self.report,
            "detection": self.detection,
            "source": str(self.source) if self.source else None,
        }


def _seed_list(seeds: Any, where: str) -> list[int]:
    """A config's `seeds` (one integer or a non-empty list of them) as a list; anything else a ConfigError headed by
    `where` (`seeds = 1.5` was a TypeError)."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                    for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of integers, got {seeds!r}")
    return list(seeds)  # a tuple from Python code, as before audit AG


def load_config(ref: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config: a TOML file, or a packaged config's name ("lfw").
    Errors name the file and the problem."""
    path, raw, _ = load_toml_config(ref, "experiment", LABELS)
    return ExperimentConfig.from_dict(raw, path)


def config_text(cfg: ExperimentConfig) -> str:
    """TOML for the config as it runs: the source file's text (comments kept) when the run changed nothing in
    it, else the config written out (after --data / --seed overrides, or with its `extends` chain resolved,
    so the saved file stands alone), headed by the files it came from (`config_label`: a packaged config by its
    place in the package, not this install's path)."""
    if cfg.source is not None and cfg.source.is_file():
        try:
            chain = extends_chain(cfg.source)
        except ConfigError:
            chain = []
        same = bool(chain) and _plain(resolve_chain(chain, LABELS)) == _plain(cfg.raw)
        if same and len(chain) == 1:
            return cfg.source.read_text(encoding="utf-8")
        names = " -> ".join(config_label(p) for p, _ in chain) or config_label(cfg.source)
        if same:
            return f"# {names}, resolved (extends applied)\n" + to_toml(cfg.raw)
        sets = "".join(f"--set {k}={v}; " for k, v in cfg.overrides.items())  # only those given: the header names them
        return f"# {names} with command-line overrides ({sets}data root, seeds, detection)\n" + to_toml(cfg.raw)
    return to_toml(cfg.raw)


def _takes_none(key: str) -> bool:
    """Whether the setting "section.key" is optional, None its "not set" (`_DEFAULTS` gives it None:
    data.max_per_identity, users.count, run.device, ...), so `--set KEY=none` clears it."""
    section, _, name = key.partition(".")
    return section in _DEFAULTS and name in _DEFAULTS[section] and _DEFAULTS[section][name] is None


def config_files(source: Path) -> list[Path]:
    """The files config `source` came from: its `extends` chain and, for a saved config (OUT/config.toml, whose first
    line `config_text` writes as "# a.toml -> b.toml with ..."), the files that line names (a packaged config by its
    name, another file from the current folder), each file's own chain after it. Files that are gone are left out."""
    out: list[Path] = []

    def add(path: Path) -> None:
        try:
            chain = [p for p, _ in extends_chain(path)]
        except PufaceError:
            chain = [path]
        out.extend(p for p in chain if p not in out)

    add(source)
    try:
        first = source.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return out
    if first.startswith("# ") and (" with command-line overrides" in first or ", resolved" in first):
        names = re.split(r" with command-line overrides|, resolved", first[2:])[0].split(" -> ")
        for name in (n.split()[0] for n in names if n.strip()):
            found = packaged_config(Path(name).name) if name.endswith(".toml") else None
            if found is None and name.endswith(".toml") and Path(name).is_file():
                found = Path(name)
            if found is not None:
                add(found)
    return out


def _plain(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))
