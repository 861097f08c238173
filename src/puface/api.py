"""The Python API for the three users, at the top of the package (`import puface`).

* an FR trainer purifies tensors in a training loop, or a folder tree: `load_purifier`;
* a privacy researcher makes cloaks and defenses and measures them: `create_attack`, `create_defense`,
  `create_embedder`, `create_trainer`, the `list_*` functions, `run_experiment`;
* anyone reproduces a table from a config: `run_experiment("lfw", data=...)` (`plan_experiment`: its size first).

Images are float RGB tensors in [0, 1], (N, 3, H, W). Every factory takes a name and options, or the
spec grammar of `puface.utils.specs` (``"jpeg:quality=75"``, ``"fawkes:mode=high"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# without torch (or another of puface's own dependencies) these raise the ImportError saying what to pip install
# (`utils.errors.install_missing_base_dependency_hints`, as for every puface module)
from .attacks import create_attack, list_attacks
from .defenses import create_defense, list_defenses
from .evaluation.protocol import GridPlan
from .evaluation.trainers import list_trainers
from .experiments import ExperimentConfig, ExperimentResult, load_config
from .experiments import plan_experiment as _plan_experiment
from .experiments import run_experiment as _run_experiment
from .models import FaceEmbedder
from .models.registry import list_embedders, load_embedder
from .purifier import Purifier, PurifyBatch
from .utils.errors import ConfigError

__all__ = [
    "load_purifier",
    "PurifyBatch",
    "load_detector",
    "create_attack",
    "list_attacks",
    "create_defense",
    "list_defenses",
    "create_embedder",
    "list_embedders",
    "create_trainer",
    "list_trainers",
    "load_config",
    "run_experiment",
    "plan_experiment",
    "ExperimentConfig",
    "ExperimentResult",
]


def load_purifier(path: str | Path | None = None, device: str | None = "cpu") -> Purifier:
    """A purifier: the one shipped with puface (`path=None`; "arcface112": the one for ArcFace 112 px crops) or a
    checkpoint (.safetensors or .pt).

    `purifier.purify(images)` purifies a tensor batch ((N, 3, H, W) float in [0, 1] or uint8, any size; no
    gradients, batched, returns float on the CPU);
    `purifier(images)` is the differentiable forward pass (not clamped: a purifier whose network runs at another face
    scale, as "arcface112", may step a little outside [0, 1]); `purifier.purify_folder(IN, OUT)` purifies a
    folder tree (streamed, resumable). `device`: "cpu", "cuda", "auto" (CUDA when available).
    """
    return Purifier.load(path, device=device)


def load_detector(path: str | Path | None = None, device: str | None = "cpu", purifier: str | Path | None = None):
    """The cloak detector shipped with puface (`path=None`), another shipped one by name ("sharpen": photos from
    sources that sharpen; "edits": edited or mixed sources, sharpened or with other contrast or gamma; both miss
    most Fawkes-low cloaks), or a detector file (`puface train-detector`).

    `detector.score(images)` gives (N,) cloak scores of (N, 3, H, W) images in [0, 1] (or uint8; any size, resized to
    150 px chips; higher = more likely cloaked), `detector.is_cloaked(scores, fpr=0.01)` the (N,) decisions at a
    false-positive rate calibrated on natural photos (None: the file's own, 1% for the shipped ones),
    `detector.detect_folder(IN, "scores.csv")` scores a folder tree (streamed, resumable).
    purifier: the purifier its features use (None: the shipped one, which the shipped detector is calibrated for).
    """
    from .detection import load_detector as load

    return load(path, device=device, purifier=purifier)


def create_embedder(name: str, device: str | None = None, **options: Any) -> FaceEmbedder:
    """A face model by registry name (`list_embedders()`) or the path of your ONNX / TorchScript model:
    (N, 3, H, W) float in [0, 1], any size -> (N, D) L2-normalised embeddings. device: None = the CPU, "cuda",
    "auto" (CUDA when available)."""
    return load_embedder(name, device=device, **options)


def create_trainer(name: str | dict, embedder: FaceEmbedder | str, **options: Any):
    """An FR trainer of the FaceCure protocol (`list_trainers()`: nn, linear, e2e; or a spec, "e2e:steps=300") on
    an embedder (or its name): `fit(images, labels)` on (N, 3, H, W) float images in [0, 1] and N identity labels,
    `predict(images)` -> an (N,) numpy array of those labels."""
    from .evaluation.trainers import create_trainer as make

    return make(name, create_embedder(embedder) if isinstance(embedder, str) else embedder, **options)


def run_experiment(config: ExperimentConfig | str | Path | dict, out: str | Path | None = None, *,
                   data: str | Path | None = None, seeds: int | list[int] | None = None, device: str | None = None,
                   progress: bool = False, restart: bool = False) -> ExperimentResult:
    """Run an experiment grid and write its results (CSV, Markdown, JSON, HTML report) into `out`.

    config: an `ExperimentConfig`, a config dict (TOML's form), a TOML file or a packaged config's name
    ("demo", "lfw", ...). out: default the config's [run] output, else runs/<name>; a folder holding this config's
    finished runs is resumed (`restart=True` discards them), one of another config is refused. data: the identity
    folders instead of the config's [data] root. seeds: other draws of users and splits (an integer or a list).
    Returns an `ExperimentResult`: `rows` and `summary` (lists of dicts), `table_md` (the Markdown table),
    `output` and `report` (paths), `wall_s`.
    """
    cfg = _experiment_config("run_experiment", config, data, seeds)
    return _run_experiment(cfg, out, device=device, progress=progress, restart=restart)


def plan_experiment(config: ExperimentConfig | str | Path | dict, *, data: str | Path | None = None,
                    seeds: int | list[int] | None = None, device: str | None = None) -> GridPlan:
    """The size of an experiment grid, without running it or writing anything (`puface reproduce --dry-run`).

    config, data, seeds: as `run_experiment`. Checks every entry and the data, draws the first seed's users and
    returns that seed's `GridPlan` (`str()` of it is one line): `runs` = users x attacks x defenses x (victim,
    trainer) cells, one result row each, the same for every seed; `cloaks`: images to cloak for that draw.
    """
    cfg = _experiment_config("plan_experiment", config, data, seeds)
    return _plan_experiment(cfg, device=device, echo=lambda _: None)


def _experiment_config(caller: str, config: ExperimentConfig | str | Path | dict, data: str | Path | None,
                       seeds: int | list[int] | None) -> ExperimentConfig:
    if isinstance(config, dict):
        cfg = ExperimentConfig.from_dict(config)
    elif isinstance(config, ExperimentConfig):
        cfg = config
    elif isinstance(config, (str, os.PathLike)):
        cfg = load_config(config)
    else:  # None, a number: pathlib's TypeError "expected str, bytes or os.PathLike object" said not what is taken
        raise ConfigError(f"{caller}: config must be a packaged config's name, a TOML file's path, a config "
                          f"dict or an ExperimentConfig, got {type(config).__name__}")
    if data is not None:
        cfg = cfg.with_data_root(data)
    if seeds is not None:
        cfg = cfg.with_seeds(seeds, where=f"{caller}(seeds=...)")
    return cfg
