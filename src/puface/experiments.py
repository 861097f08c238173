"""Experiments from a TOML config: data, users, attacks, victims, trainers, defenses and seeds -> the
grid of FaceCure runs -> results (runs.jsonl, results.csv, summary.csv, results.json, table.md,
report.html) in one output folder, next to a copy of the config.

A config (every key optional except the lists; see `configs/*.toml`)::

    name = "lfw"
    seeds = [0]

    [data]
    root = "/data/lfw-chips150"   # identity folders; "johns" = the embedded default set
    min_images = 10               # identities with fewer images are left out
    max_per_identity = 20         # seeded cap per identity (None/absent: all)
    train_fraction = 0.7
    image_size = 150

    [users]
    count = 20                    # protected users drawn with the seed ...
    # names = ["Alice", "Bob"]    # ... or named
    min_train = 2
    min_test = 1
    allow_purifier_identities = false

    [[attacks]]                   # one table per attack; name = "none" is the clean reference ("clean");
                                  # name = "folder", root = DIR: cloaks made elsewhere (see FolderCloaks)
    name = "fawkes"
    mode = "high"
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
    device = "cpu"                # null/absent: CUDA when available
    batch_size = 64
    cache = true                  # the content cache for embeddings and purified images
    output = "runs/lfw"

    [report]
    users = 3                     # users shown in the image grids
    images_per_user = 2

A config may start from another one and change only what differs::

    extends = "lfw.toml"          # a path relative to this file, or a packaged config's name
    name = "lfw-sface-mid"        # name and description are never inherited

    [users]
    count = 10                    # tables merge key by key (the rest of lfw.toml's [users] stays)

    [[attacks]]                   # lists and arrays of tables replace the parent's whole list
    name = "fawkes"
    mode = "mid"
    embedders = ["sface"]

Results are written as they arrive (runs.jsonl), so an interrupted experiment resumes where it
stopped when run again with the same config and output folder.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import click
import torch

from .defenses import Defense, as_defense
from .errors import ConfigError, PufaceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# ----------------------------------------------------------------------------------- config

_TOP_KEYS = {"name", "description", "seeds", "data", "users", "attacks", "victims", "trainers", "defenses", "run", "report"}
_SECTION_KEYS = {
    "data": {"root", "min_images", "max_per_identity", "train_fraction", "image_size"},
    "users": {"count", "names", "min_train", "min_test", "allow_purifier_identities"},
    "victims": {"embedders"},
    "run": {"device", "batch_size", "cache", "output", "cloak_batch_size"},
    "report": {"users", "images_per_user", "enabled"},
}


def _check_keys(where: str, d: dict, known: set[str]) -> None:
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown option(s) in {where}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")


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
    spec: Any  # a spec string or a table, resolved by `defenses.as_defense`


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
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    # -------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path | None = None) -> "ExperimentConfig":
        where = str(source) if source else "config"
        _check_keys(where, raw, _TOP_KEYS)
        for sec, known in _SECTION_KEYS.items():
            if sec in raw and not isinstance(raw[sec], dict):
                raise ConfigError(f"{where}: [{sec}] must be a table")
            _check_keys(f"{where} [{sec}]", raw.get(sec, {}), known)
        data = {"root": "johns", "min_images": 2, "max_per_identity": None, "train_fraction": 0.7, "image_size": 150, **raw.get("data", {})}
        users = {"count": None, "names": None, "min_train": 2, "min_test": 1, "allow_purifier_identities": False, **raw.get("users", {})}
        if users["count"] is None and not users["names"]:
            users["count"] = 1
        run = {"device": None, "batch_size": 64, "cache": True, "output": None, "cloak_batch_size": 16, **raw.get("run", {})}
        report = {"users": 3, "images_per_user": 2, "enabled": True, **raw.get("report", {})}
        seeds = raw.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = [seeds]
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"{where}: seeds must be a list of integers, got {seeds!r}")

        attacks = [cls._attack(a, where) for a in cls._tables(raw, "attacks", where)]
        trainers = [cls._trainer(t, where) for t in cls._tables(raw, "trainers", where)]
        defenses = [cls._defense(d, where) for d in cls._tables(raw, "defenses", where)]
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
                raise ConfigError(f"{where}: {what} labels must be unique, repeated: {', '.join(dup)} (set label = \"...\")")
        return cls(
            name=str(raw.get("name", source.stem if source else "experiment")), seeds=list(seeds), data=data, users=users,
            attacks=attacks, victims=victims, trainers=trainers, defenses=defenses, run=run, report=report,
            description=str(raw.get("description", "")), raw=raw, source=source,
        )

    @staticmethod
    def _tables(raw: dict, key: str, where: str) -> list:
        items = raw.get(key)
        if not items:
            raise ConfigError(f"{where}: needs at least one entry in [[{key}]]")
        if not isinstance(items, list):
            raise ConfigError(f"{where}: {key} must be an array of tables ([[{key}]])")
        return items

    @staticmethod
    def _attack(t: Any, where: str) -> AttackEntry:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, dict) or "name" not in t:
            raise ConfigError(f"{where}: every [[attacks]] entry needs a name, got {t!r}")
        t = dict(t)
        name = str(t.pop("name"))
        mode = t.pop("mode", None)
        emb = t.pop("embedders", None)
        default = "clean" if name == "none" else name if mode is None else f"{name}-{mode}"
        if name == "folder" and "root" in t:
            default = f"folder-{Path(str(t['root'])).name}"
        label = t.pop("label", None) or default
        if name == "none" and (mode or emb or t):
            raise ConfigError(f"{where}: attack 'none' (the clean reference) takes no settings")
        return AttackEntry(label=str(label), name=name, mode=mode, embedders=list(emb) if emb is not None else None, params=t)

    @staticmethod
    def _trainer(t: Any, where: str) -> TrainerEntry:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, dict) or "name" not in t:
            raise ConfigError(f"{where}: every [[trainers]] entry needs a name, got {t!r}")
        t = dict(t)
        name = str(t.pop("name"))
        label = str(t.pop("label", None) or name)
        victims = t.pop("victims", None)
        if victims is not None and (not isinstance(victims, list) or not victims):
            raise ConfigError(f"{where}: trainer {label!r}: victims must be a non-empty list of victim embedders")
        return TrainerEntry(label=label, name=name, params=t, victims=list(victims) if victims else None)

    @staticmethod
    def _defense(t: Any, where: str) -> DefenseEntry:
        if isinstance(t, dict) and "name" not in t:
            raise ConfigError(f"{where}: every [[defenses]] entry needs a name, got {t!r}")
        label = t.get("label") if isinstance(t, dict) else None
        if label is None:
            label = _default_defense_label(t)
        return DefenseEntry(label=str(label), spec=t)

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
        """Hash of everything that changes results (not the output folder or report settings)."""
        keep = {k: v for k, v in self.raw.items() if k not in ("run", "report", "description", "name")}
        keep["data"] = self.data
        keep["run"] = {k: v for k, v in self.run.items() if k not in ("output", "cache", "batch_size", "cloak_batch_size")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _edited(self, edit: Callable[[dict], None]) -> "ExperimentConfig":
        raw = json.loads(json.dumps(self.raw, default=str))
        edit(raw)
        return ExperimentConfig.from_dict(raw, self.source)

    def with_data_root(self, root: str | Path) -> "ExperimentConfig":
        return self._edited(lambda raw: raw.setdefault("data", {}).__setitem__("root", str(root)))

    def with_seeds(self, seeds: list[int]) -> "ExperimentConfig":
        """The same config with other split/user/attack seeds (a repeat of the grid on other data draws)."""
        return self._edited(lambda raw: raw.__setitem__("seeds", [int(s) for s in seeds]))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    return json.dumps(str(v))


def to_toml(raw: dict) -> str:
    """The TOML subset experiment configs use: scalars, lists, [tables], [[arrays of tables]] and inline tables."""
    lines = []
    for k, v in raw.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v)):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items() if vv is not None]
    return "\n".join(lines) + "\n"


def config_text(cfg: "ExperimentConfig") -> str:
    """TOML for the config as it runs: the source file's text (comments kept) when the run changed nothing in
    it, else the config written out (after --data / --seed overrides, or with its `extends` chain resolved,
    so the saved file stands alone), headed by the file it came from."""
    if cfg.source is not None and cfg.source.is_file():
        try:
            chain = _extends_chain(cfg.source)
        except ConfigError:
            chain = []
        same = bool(chain) and _plain(_resolve(chain)) == _plain(cfg.raw)
        if same and len(chain) == 1:
            return cfg.source.read_text(encoding="utf-8")
        names = " -> ".join(str(p) for p, _ in chain) or str(cfg.source)
        if same:
            return f"# {names}, resolved (extends applied)\n" + to_toml(cfg.raw)
        return f"# {names} with command-line overrides (data root, seeds)\n" + to_toml(cfg.raw)
    return to_toml(cfg.raw)


def _plain(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


def _default_defense_label(spec: Any) -> str:
    """The defense's own short name (jpeg-q75, blur-s1, puface, ...), computed without loading weights."""
    if isinstance(spec, dict) and spec.get("name") == "puface":
        w = spec.get("weights", "default")
        return "puface" if w in (None, "", "default") else f"puface-{Path(str(w)).stem}"
    if isinstance(spec, str) and spec.split(":")[0] == "puface" and "+" not in spec:
        return "puface" if ":" not in spec else f"puface-{Path(spec.split('weights=')[-1]).stem}"
    return as_defense(spec).name


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config (TOML). Errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        packaged = packaged_config(str(path))
        if packaged is None:
            raise ConfigError(f"{path}: config file not found (packaged configs: {', '.join(packaged_config_names())})")
        path = packaged
    return ExperimentConfig.from_dict(_resolve(_extends_chain(path)), path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def _parent_path(child: Path, ref: Any) -> Path:
    """The file `extends = ref` in `child` names: relative to child's folder, else a packaged config."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{child}: extends must be a config file name, got {ref!r}")
    p = Path(ref)
    p = p if p.is_absolute() else child.parent / p
    if p.is_file():
        return p
    packaged = packaged_config(ref)
    if packaged is None:
        raise ConfigError(f"{child}: extends {ref!r}, which is neither a file next to it ({p}) nor a packaged config "
                          f"({', '.join(packaged_config_names())})")
    return packaged


def _extends_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """[(path, its TOML), (its parent, ...), ...], each file read once; a cycle is a ConfigError."""
    chain = [(path, _read_toml(path))]
    while True:
        last, raw = chain[-1]
        if "extends" not in raw:
            return chain
        parent = _parent_path(last, raw["extends"])
        if any(parent.resolve() == c.resolve() for c, _ in chain):
            raise ConfigError(f"{path}: extends goes round in a circle: {' -> '.join(str(c) for c, _ in chain)} -> {parent}")
        chain.append((parent, _read_toml(parent)))


def merge_configs(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` on top of `parent`: tables merge key by key (recursively), anything else (scalars, lists,
    arrays of tables) in the child replaces the parent's; `name`, `description` and `extends` are the
    child's only."""
    out = {k: v for k, v in parent.items() if k not in ("name", "description", "extends")}
    return _merge_tables(out, {k: v for k, v in child.items() if k != "extends"})


def _merge_tables(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(parent)
    for k, v in child.items():
        out[k] = _merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(chain: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """An `_extends_chain` folded into one config dict (the one `from_dict` validates)."""
    raw = chain[-1][1]
    for _, child in reversed(chain[:-1]):
        raw = merge_configs(raw, child)
    return raw


def packaged_config_names() -> list[str]:
    from importlib import resources

    try:
        return sorted(p.name[:-5] for p in resources.files("puface").joinpath("configs").iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        return []


def packaged_config(name: str) -> Path | None:
    """A config shipped inside the package, by name ("demo") or file name ("demo.toml")."""
    from importlib import resources

    stem = Path(name).name
    stem = stem[:-5] if stem.endswith(".toml") else stem
    p = resources.files("puface").joinpath("configs", f"{stem}.toml")
    return Path(str(p)) if p.is_file() else None


# ----------------------------------------------------------------------------------- building


def resolve_data_root(root: str) -> Path:
    """ "johns" -> the embedded default set (fetched on first use); anything else is a folder."""
    if str(root) == "johns":
        from .data.johns import fetch_johns

        return fetch_johns()
    p = Path(root).expanduser()
    if not p.is_dir():
        raise PufaceError(f"{p}: data folder not found (set [data] root in the config or pass --data DIR)")
    return p


def build_attack(entry: AttackEntry, seed: int, device: str | None, cloak_batch_size: int):
    """An `AttackSpec` for the protocol (the attack object is built here)."""
    from .evaluation.protocol import AttackSpec

    if entry.is_clean:
        return AttackSpec(entry.label, None)
    if entry.name == "folder":
        from .evaluation.protocol import FolderCloaks

        params = dict(entry.params)
        if "root" not in params:
            raise ConfigError(f"attack {entry.label!r}: a folder attack needs root = \"<folder of cloaked images>\"")
        pats = params.pop("patterns", None)
        root = params.pop("root")
        if params:
            raise ConfigError(f"attack {entry.label!r}: unknown option(s) {', '.join(sorted(params))} (known: root, patterns, embedders)")
        return AttackSpec(entry.label, FolderCloaks(root, pats), surrogates=tuple(entry.embedders or ()))
    try:
        from .attacks import create_attack
    except ImportError as e:  # pragma: no cover - the attacks ship with puface
        raise PufaceError(f"the attacks are not available in this installation ({e})") from None
    from .attacks.adaptive import adaptive_options

    kw = dict(entry.params)
    if entry.mode is not None:
        kw["mode"] = entry.mode
    if entry.embedders is not None:
        kw["embedders"] = entry.embedders
    adaptive_options(kw, what=f"attack {entry.label!r}")  # through = ...: optimise through the defender's purifier
    try:
        atk = create_attack(entry.name, seed=seed, device=device, **kw)
    except TypeError as e:
        raise ConfigError(f"attack {entry.label!r}: {e}") from None
    surrogates = tuple(entry.embedders) if entry.embedders is not None else tuple(
        getattr(s, "name", str(s)) for s in getattr(atk, "surrogates", [])
    )
    return AttackSpec(entry.label, atk, surrogates=surrogates, batch_size=int(kw.get("batch_size", getattr(atk, "batch_size", cloak_batch_size))))


def results_fingerprint(cfg: ExperimentConfig, victims: dict[str, torch.nn.Module], defenses: dict[str, Defense]) -> str:
    """Hash of the config (`ExperimentConfig.fingerprint`) and of every weight file it names: victim
    models, purifier defenses and purifiers an adaptive attack goes through. A run folder resumes only
    when this matches, so retrained weights behind the same config text ("default") start afresh."""
    from .fingerprint import module_fingerprint

    models = {f"victim:{k}": module_fingerprint(v) for k, v in victims.items()}
    models.update({f"defense:{k}": f for k, d in defenses.items() if (f := d.fingerprint)})  # hashes weights: once each
    for a in cfg.attacks:
        through = a.params.get("through")
        if through is not None:
            from .purifier.apply import Purifier

            purifier = Purifier.load(None if through == "default" else str(through))
            models[f"attack:{a.label}"] = module_fingerprint(purifier)
    blob = json.dumps({"config": cfg.fingerprint(), "models": models}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_defense(entry: DefenseEntry, device: str | None) -> Defense:
    spec = entry.spec
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k != "label"}
        if spec.get("name") == "puface" and device and "device" not in spec:
            spec["device"] = device
    return as_defense(spec)


def protected_identity_conflicts(defenses: dict[str, Defense]) -> dict[str, set[str] | None]:
    """{defense label: identities its purifier saw (None: not recorded)} for the learned defenses."""
    out: dict[str, set[str] | None] = {}
    for label, d in defenses.items():
        for step in getattr(d, "steps", [d]):
            if step.kind != "puface":
                continue
            ids = step.training_identities
            if ids is None:
                out.setdefault(label, None)
            else:
                out[label] = (out.get(label) or set()) | ids
    return out


# ----------------------------------------------------------------------------------- running


@dataclass
class ExperimentResult:
    output: Path
    rows: list[dict]
    summary: list[dict]
    table_md: str
    wall_s: float
    report: Path | None


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
    return rows


def _write_text_atomic(path: Path, text: str) -> None:
    from .imageio import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def draw_users(cfg: ExperimentConfig, root: str | Path, seed: int, *, exclude: Iterable[str] = (),
               progress: bool = False) -> tuple[Any, list[str]]:
    """(EvaluationData, protected users) of one seed, as `run_experiment` draws them: the config's data
    settings, its `[users]` (count or names) and `exclude` (identities a purifier of the grid trained on)."""
    from .evaluation.protocol import EvaluationData, choose_users

    data = EvaluationData.prepare(
        root, seed=seed, train_fraction=cfg.data["train_fraction"], min_images=max(2, int(cfg.data["min_images"])),
        max_per_identity=cfg.data["max_per_identity"], image_size=int(cfg.data["image_size"]), progress=progress,
    )
    users = choose_users(
        data, count=cfg.users.get("count"), names=cfg.users.get("names"), seed=seed,
        exclude=exclude, min_train=int(cfg.users["min_train"]), min_test=int(cfg.users["min_test"]),
    )
    return data, users


def run_experiment(
    cfg: ExperimentConfig,
    output: str | Path | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
    restart: bool = False,
    echo: Callable[[str], None] = click.echo,
) -> ExperimentResult:
    """Run the whole grid of `cfg`, writing results into `output` (default: [run] output, else
    runs/<name>). Finished runs found in `output/runs.jsonl` are kept (resume) when the config is
    unchanged; `restart` discards them."""
    from .evaluation.cache import ContentCache
    from .evaluation.protocol import Protocol, TrainerSpec
    from .models.registry import load_embedder

    t_start = time.perf_counter()
    out = Path(output or cfg.run.get("output") or Path("runs") / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    device = device or cfg.run.get("device")
    root = resolve_data_root(cfg.data["root"])
    victims = {name: load_embedder(name, device=device) for name in cfg.victims}
    defenses = {d.label: build_defense(d, device) for d in cfg.defenses}
    fp = results_fingerprint(cfg, victims, defenses)
    state_path, runs_path = out / "state.json", out / "runs.jsonl"
    if state_path.is_file() and _jsonl_rows(runs_path) and not restart:
        old = json.loads(state_path.read_text())
        if old.get("fingerprint") != fp:
            raise PufaceError(
                f"{out} holds results of a different config or different model weights (fingerprint "
                f"{old.get('fingerprint')} != {fp}); use another --out folder or --restart to discard them"
            )
    if restart and runs_path.exists():
        runs_path.replace(out / f"runs.{int(time.time())}.discarded.jsonl")
    _write_text_atomic(state_path, json.dumps({"fingerprint": fp, "config": cfg.source and str(cfg.source)}, indent=2))
    _write_text_atomic(out / "config.toml", config_text(cfg))
    _write_text_atomic(out / "config.resolved.json", json.dumps(_resolved(cfg), indent=2, default=str))

    previous = [r for r in _jsonl_rows(runs_path)]
    done = {r["run_id"] for r in previous}
    if done:
        echo(f"resuming: {len(done)} finished run(s) found in {runs_path}")

    echo(f"data: {root}")
    seen = protected_identity_conflicts(defenses)
    exclude: set[str] = set()
    for label, ids in seen.items():
        if ids is None:
            echo(f"warning: defense {label!r}: the purifier does not record its training identities; "
                 "make sure no protected user was in its training set")
        else:
            exclude |= ids
    cache = ContentCache() if cfg.run.get("cache", True) else None
    trainers = [TrainerSpec(t.label, t.name, dict(t.params), tuple(t.victims) if t.victims else None) for t in cfg.trainers]
    for t in trainers:
        if t.name == "e2e" and device and "device" not in t.params:
            t.params["device"] = device

    timings: dict[str, float] = {}
    users_by_seed: dict[int, list[str]] = {}
    n_new = 0
    runs_file = open(runs_path, "a", encoding="utf-8")
    side_file = open(out / "details.jsonl", "a", encoding="utf-8")  # image quality and example images, per unit

    def write_side(record: dict) -> None:
        side_file.write(json.dumps({**record, "config_fingerprint": fp}) + "\n")
        side_file.flush()

    try:
        for seed in cfg.seeds:
            t_load = time.perf_counter()
            allow = bool(cfg.users.get("allow_purifier_identities"))
            data, users = draw_users(cfg, root, seed, exclude=() if allow else exclude, progress=progress)
            load_s = time.perf_counter() - t_load
            bad = sorted(set(users) & exclude)
            if bad and not allow:
                raise PufaceError(
                    f"protected user(s) {', '.join(bad)} were in the purifier's training data: the evaluation would be "
                    "meaningless; pick other users or set [users] allow_purifier_identities = true"
                )
            if bad:
                echo(f"WARNING: protected user(s) {', '.join(bad)} were in the purifier's training data (allowed by the config)")
            users_by_seed[seed] = users
            echo(f"seed {seed}: {len(data.identities)} identities, {len(data.train)} training / {len(data.test)} test images; "
                 f"protected users: {', '.join(users)}")
            attacks = [build_attack(a, seed, device, int(cfg.run["cloak_batch_size"])) for a in cfg.attacks]

            def write_row(row: dict) -> None:
                nonlocal n_new
                runs_file.write(json.dumps({**row, "config_fingerprint": fp}) + "\n")
                runs_file.flush()
                n_new += 1

            def write_quality(attack: str, defense: str, user: str, q: dict, seed: int = seed) -> None:
                write_side({"type": "quality", "seed": seed, "attack": attack, "defense": defense, "user": user, **q})

            def write_example(user: str, attack: str, kind: str, images: torch.Tensor, seed: int = seed) -> None:
                paths = write_example_images(out, seed, user, attack, kind, images)
                write_side({"type": "example", "seed": seed, "user": user, "attack": attack, "kind": kind, "paths": paths})

            proto = Protocol(
                data, users, attacks, victims, trainers, defenses, cache=cache, on_result=write_row, done=done,
                on_quality=write_quality, on_example=write_example,
                example_users=int(cfg.report["users"]) if cfg.report.get("enabled", True) else 0,
                examples_per_user=int(cfg.report["images_per_user"]), batch_size=int(cfg.run["batch_size"]), progress=progress,
            )
            proto.run()
            proto.timings["load_s"] += load_s
            for k, v in proto.timings.items():
                timings[k] = timings.get(k, 0.0) + v
    finally:
        runs_file.close()
        side_file.close()

    rows = _latest_rows(_jsonl_rows(runs_path), fp)
    details = [r for r in _jsonl_rows(out / "details.jsonl") if r.get("config_fingerprint") == fp]
    quality: dict[str, dict[str, list[float]]] = {}
    for r in {(r["seed"], r["attack"], r["defense"], r["user"]): r for r in details if r["type"] == "quality"}.values():
        agg = quality.setdefault(f"{r['attack']}|{r['defense']}", {"psnr": [], "ssim": []})
        agg["psnr"].extend(r["psnr"])
        agg["ssim"].extend(r["ssim"])
    examples_written: dict[str, Any] = {}
    for r in details:
        if r["type"] == "example":
            examples_written.setdefault(f"{r['seed']}/{r['user']}/{r['attack']}", {})[r["kind"]] = r["paths"]
    wall = time.perf_counter() - t_start
    sessions = _jsonl_rows(out / "sessions.jsonl") + [{"wall_s": round(wall, 2), "new_runs": n_new, "timings_s": timings}]
    with open(out / "sessions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(sessions[-1]) + "\n")
    wall_total = sum(float(x.get("wall_s", 0.0)) for x in sessions)
    from .evaluation.tables import render_tables, summarise_rows, write_csv

    summary = summarise_rows(rows)
    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", summary)
    quality_summary = _quality_summary(quality)
    table_md = render_tables(cfg, summary, quality_summary, wall_s=wall_total, sessions=len(sessions))
    _write_text_atomic(out / "table.md", table_md)
    amplification = 3.0
    from .defenses import purifier_amplification

    for d in defenses.values():
        for s in getattr(d, "steps", [d]):
            if s.kind == "puface" and getattr(s, "_purifier", None) is not None:
                amplification = purifier_amplification(s._purifier)
    results = {
        "name": cfg.name,
        "description": cfg.description,
        "config_fingerprint": fp,
        "config": _resolved(cfg),
        "data_root": str(root),
        "users": {str(k): v for k, v in users_by_seed.items()},
        "excluded_purifier_identities": len(exclude),
        "wall_s": round(wall_total, 2),
        "wall_s_this_session": round(wall, 2),
        "sessions": len(sessions),
        "timings_s": {k: round(sum(float(x.get("timings_s", {}).get(k, 0.0)) for x in sessions), 2) for k in timings},
        "n_runs": len(rows),
        "summary": summary,
        "image_quality": quality_summary,
        "examples": examples_written,
        "amplification": amplification,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        },
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_text_atomic(out / "results.json", json.dumps(_json_safe(results), indent=2, default=_json_default))
    report_path = None
    if cfg.report.get("enabled", True):
        from .evaluation.report import write_report

        report_path = write_report(out, results, table_md)
    return ExperimentResult(out, rows, summary, table_md, wall, report_path)


def _json_safe(o: Any) -> Any:
    """NaN and infinities -> None (strict JSON), recursively."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _latest_rows(rows: Iterable[dict], fingerprint: str) -> list[dict]:
    """One row per run id (the last one written), of this config only."""
    latest: dict[str, dict] = {}
    for r in rows:
        if r.get("config_fingerprint", fingerprint) == fingerprint:
            latest[r["run_id"]] = r
    return list(latest.values())


def _quality_summary(quality: dict[str, dict[str, list[float]]]) -> list[dict]:
    from .evaluation.metrics import summarise

    out = []
    for key, q in sorted(quality.items()):
        a, d = key.split("|", 1)
        p, s = summarise(q["psnr"]), summarise(q["ssim"])
        out.append({"attack": a, "defense": d, "psnr_mean": p.mean, "psnr_std": p.std, "ssim_mean": s.mean, "ssim_std": s.std, "n": p.n})
    return out


def write_example_images(out: Path, seed: int, user: str, attack: str, kind: str, images: torch.Tensor) -> list[str]:
    """Save example images (uint8 (k, 3, H, W)) as out/examples/<seed>/<user>/<attack>/<kind>_<i>.png;
    returns their paths relative to `out`."""
    from .imageio import to_uint8 as chw_to_hwc, write_image

    safe = kind.replace(":", "-").replace("/", "_")
    paths = []
    for i, im in enumerate(images):
        rel = Path("examples") / str(seed) / user / attack / f"{safe}_{i}.png"
        write_image(out / rel, chw_to_hwc(im.float() / 255.0))
        paths.append(rel.as_posix())
    return paths


def _resolved(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        "name": cfg.name, "seeds": cfg.seeds, "data": cfg.data, "users": cfg.users,
        "attacks": [a.__dict__ for a in cfg.attacks], "victims": cfg.victims,
        "trainers": [t.__dict__ for t in cfg.trainers], "defenses": [{"label": d.label, "spec": d.spec} for d in cfg.defenses],
        "run": cfg.run, "report": cfg.report, "source": str(cfg.source) if cfg.source else None,
    }


__all__ = [
    "ExperimentConfig", "AttackEntry", "TrainerEntry", "DefenseEntry", "load_config", "merge_configs", "run_experiment",
    "ExperimentResult", "draw_users", "packaged_config", "packaged_config_names", "resolve_data_root", "write_example_images",
]
