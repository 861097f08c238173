"""`run_experiment`: a config's whole grid of FaceCure runs, resumable, written into one output folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..attacks.cache import CloakCache
from ..data.datasets import resolve_data_root
from ..defenses import PuFaceDefense
from ..evaluation.cache import ContentCache
from ..evaluation.data import EvaluationData
from ..evaluation.detection import detection_scores, summarise_detection
from ..evaluation.photos import PhotoPath, PhotoProtocol
from ..evaluation.protocol import GridPlan, protocol_class
from ..io.files import check_output_folder
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from .build import (
    build_attack,
    build_defense,
    build_trainers,
    build_victims,
    draw_users,
    entry_errors,
    excluded_identities,
    models_fingerprint,
    results_fingerprint,
)
from .config import ExperimentConfig, load_config
from .results import ResultsFolder, data_fingerprints

__all__ = ["ExperimentResult", "plan_experiment", "run_experiment"]


@dataclass
class ExperimentResult:
    """What `run_experiment` returns (the same is on disk in `output`). rows: one dict per run, results.csv's columns
    (seed, attack, victim, trainer, defense, user, setting; asr and normal_acc as shares in [0, 1]; ...); summary: one
    dict per cell over users and seeds, summary.csv's (asr_mean, asr_std, normal_acc_mean, ...: shares in [0, 1]);
    table_md: table.md (percentages); wall_s: seconds this call ran; report: report.html (None: [report] disabled)."""

    output: Path
    rows: list[dict]
    summary: list[dict]
    table_md: str
    wall_s: float
    report: Path | None


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def run_experiment(
    cfg: ExperimentConfig | str | Path,
    output: str | Path | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
    restart: bool = False,
    echo: Callable[[str], None] = _say,
) -> ExperimentResult:
    """Run the whole grid of `cfg` (a config, a TOML file or a packaged config's name), writing results
    into `output` (default: [run] output, else runs/<name>; see `results` for the files). Finished runs
    found in `output/runs.jsonl` are kept (resume) when the config and its weights are unchanged;
    `restart` discards them. `echo` receives the progress lines."""
    result = _run_grid(cfg, output, device=device, progress=progress, restart=restart, echo=echo)
    assert isinstance(result, ExperimentResult)
    return result


def plan_experiment(cfg: ExperimentConfig | str | Path, *, device: str | None = None, progress: bool = False,
                    echo: Callable[[str], None] = _say) -> GridPlan:
    """The size of `cfg`'s grid without running it or writing anything: checks every entry (the cloak detector too,
    unless [detection] is disabled), draws the first seed's users, and echoes the data, that draw, its `GridPlan` and
    the runs over all seeds (the images to cloak are the first seed's: each seed draws its own split). Returns the
    first seed's plan."""
    plan = _run_grid(cfg, None, device=device, progress=progress, restart=False, echo=echo, plan_only=True)
    assert isinstance(plan, GridPlan)
    return plan


def _seed_line(cfg: ExperimentConfig, seed: int, data: EvaluationData, users: list[str]) -> str:
    return (f"seed {seed} ({cfg.protocol}-time protocol): {len(data.identities)} identities, "
            f"{len(data.train)} training / {len(data.test)} test images; protected users: {', '.join(users)}")


def _run_grid(cfg: ExperimentConfig | str | Path, output: str | Path | None, *, device: str | None, progress: bool,
              restart: bool, echo: Callable[[str], None], plan_only: bool = False) -> ExperimentResult | GridPlan:
    """`run_experiment`, or with `plan_only` `plan_experiment` (stops before the output folder is touched)."""
    t_start = time.perf_counter()
    if not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg)
    out = Path(output or cfg.run.get("output") or Path("runs") / cfg.name)
    device = _device(device or cfg.run.get("device"))
    with entry_errors(cfg, "[data] root"):  # a missing folder: with the command the config's comments give for it
        root = resolve_data_root(cfg.data["root"])
    check_output_folder(root, out)  # inside the data, its own files would change the data a resume is checked against
    victims = build_victims(cfg, device)
    defenses = {}
    for d in cfg.defenses:
        with entry_errors(cfg, f"[[defenses]] {d.label!r}"):
            defenses[d.label] = build_defense(d, device)
    trainers = build_trainers(cfg, device)
    exclude = excluded_identities(defenses, echo, cfg)
    allow = bool(cfg.users.get("allow_purifier_identities"))
    # every spec and the first draw of users are checked before the output folder is touched (a typo must not
    # cost a --restart its earlier results)
    checked = []
    for a in cfg.attacks:
        with entry_errors(cfg, f"[[attacks]] {a.label!r}"):
            checked.append(build_attack(a, cfg.seeds[0], device, cfg.run["cloak_batch_size"], victims))
    t_load = time.perf_counter()
    first_draw: tuple[EvaluationData, list[str]] | None = draw_users(
        cfg, root, cfg.seeds[0], exclude=() if allow else exclude, progress=progress)
    first_load_s = time.perf_counter() - t_load
    proto_cls, extra = _protocol(cfg, root, echo)  # published photos need dlib: checked before the folder is touched
    detector = _detector(cfg, device)  # a wrong detector file is refused before a --restart sets earlier runs aside
    if plan_only:  # a dry run never reaches the output folder, whatever the draw
        assert first_draw is not None
        data, users = first_draw
        _check_users(users, exclude, allow, echo)
        echo(f"data: {root}")
        echo(_seed_line(cfg, cfg.seeds[0], data, users))
        # the shared cloak cache, looked up, never written
        plan = proto_cls(data, users, checked, victims, trainers, defenses, cache=None,
                         cloak_cache=CloakCache.lookup(), progress=False, **extra).plan()
        echo(str(plan))
        echo(f"{len(cfg.seeds)} seed(s) ({', '.join(map(str, cfg.seeds))}): {plan.runs * len(cfg.seeds)} run(s) in "
             f"all, each seed on its own draw of users and split; device: {resolve_device(device)}. "
             "Dry run: nothing was cloaked or run, and no output folder written.")
        return plan
    data_fp, data_content = data_fingerprints(root)
    folder = ResultsFolder(out, cfg, results_fingerprint(cfg, victims, defenses), restart=restart, data=data_fp,
                           data_content=data_content, models=models_fingerprint(checked, victims))
    if folder.done:
        echo(f"resuming: {len(folder.done)} finished run(s) found in {folder.runs_path}")
    echo(f"data: {root}")
    cache = ContentCache() if cfg.run.get("cache", True) else None
    timings: dict[str, float] = {}
    users_by_seed: dict[int, list[str]] = {}
    det_scores: dict[int, dict] = {}
    with folder:
        for seed in cfg.seeds:
            if first_draw is not None:
                (data, users), load_s, first_draw = first_draw, first_load_s, None
            else:
                t_load = time.perf_counter()
                data, users = draw_users(cfg, root, seed, exclude=() if allow else exclude, progress=progress)
                load_s = time.perf_counter() - t_load
            _check_users(users, exclude, allow, echo)
            users_by_seed[seed] = users
            echo(_seed_line(cfg, seed, data, users))
            proto = proto_cls(
                data,
                users,
                [build_attack(a, seed, device, cfg.run["cloak_batch_size"], victims) for a in cfg.attacks],
                victims,
                trainers,
                defenses,
                cache=cache,
                done=folder.done,
                on_result=folder.add_run,
                on_quality=lambda *q, seed=seed: folder.add_quality(seed, *q),
                on_example=lambda *e, seed=seed: folder.add_example(seed, *e),
                example_users=int(cfg.report["users"]) if cfg.report.get("enabled", True) else 0,
                examples_per_user=int(cfg.report["images_per_user"]),
                batch_size=int(cfg.run["batch_size"]),
                progress=progress,
                **extra,
            )
            echo(str(proto.plan()))
            proto.run()
            proto.timings["load_s"] += load_s
            if detector is not None:
                t_det = time.perf_counter()
                det_scores[seed] = detection_scores(proto, detector)
                proto.timings["detect_s"] = time.perf_counter() - t_det
            for k, v in proto.timings.items():
                timings[k] = timings.get(k, 0.0) + v
    detection = summarise_detection(det_scores, detector, cfg.detection.get("fpr")) if detector is not None else None
    wall = time.perf_counter() - t_start
    rows, summary, table_md, report = folder.write_tables(detection=detection,
        info={"data_root": str(root), "users": {str(k): v for k, v in users_by_seed.items()},
              "excluded_purifier_identities": len(exclude), "purifiers": _purifiers(defenses)},
        sessions=folder.end_session(wall, timings), wall_s=wall, amplification=_amplification(defenses), device=device)
    return ExperimentResult(out, rows, summary, table_md, wall, report)


def _protocol(cfg: ExperimentConfig, root: Path, echo: Callable[[str], None]) -> tuple[type, dict]:
    """The protocol class and its extra arguments: `PhotoProtocol` on the photos of [data] photos."""
    if not cfg.data.get("photos"):
        if cfg.data.get("photos_jpeg") is not None:
            raise PufaceError("[data] photos_jpeg re-encodes published photos: it needs [data] photos")
        return protocol_class(cfg.protocol), {}
    if cfg.protocol != "training":
        raise PufaceError(
            f"[data] photos: published photos are run with the training-time protocol only, not {cfg.protocol!r}"
        )
    from ..align import require_alignment

    require_alignment()  # every published photo is aligned: without dlib, one line before any work
    with entry_errors(cfg, "[data] photos"):
        photos_root = resolve_data_root(cfg.data["photos"])
    photos = PhotoPath(photos_root, root, size=int(cfg.data["image_size"]), jpeg=cfg.data.get("photos_jpeg"))
    again = f", re-encoded as JPEG q{photos.jpeg}" if photos.jpeg is not None else ""
    echo(
        f"published photos: {photos.photos} (every training image is pasted into its photo{again}, "
        "defended there and cut again)"
    )
    return PhotoProtocol, {"photos": photos}


def _device(device: str | None) -> str | None:
    """The run's device as given (None for "auto": each part picks CUDA when available), refused before any
    work when torch does not know it or CUDA is asked for where there is none (`resolve_device`)."""
    if device is None or str(device) == "auto":
        return None
    resolve_device(device)
    return str(device)


def _detector(cfg: ExperimentConfig, device: str | None):
    """The cloak detector of the [detection] section (None when disabled)."""
    if not cfg.detection.get("enabled", True):
        return None
    from ..detection import load_detector

    ref = cfg.detection.get("detector") or "default"
    purifier = cfg.detection.get("purifier") or "default"
    return load_detector(None if ref == "default" else ref, device=device or "cpu",
                         purifier=None if purifier == "default" else purifier)


def _check_users(users: list[str], exclude: set[str], allow: bool, echo: Callable[[str], None]) -> None:
    """Named protected users a purifier of the grid was trained on: an error, or a warning when allowed."""
    bad = sorted(set(users) & exclude)
    if bad and not allow:
        raise PufaceError(
            f"protected user(s) {', '.join(bad)} were in the purifier's training data: the evaluation would be "
            "meaningless; pick other users or set [users] allow_purifier_identities = true")
    if bad:
        echo(
            f"WARNING: protected user(s) {', '.join(bad)} were in the purifier's training data (allowed by the config)"
        )


def _purifiers(defenses: dict) -> list[dict]:
    """The purifiers the grid's defenses hold, for the report: [{defense (label), weights (as configured), step,
    fingerprint (of the weights: `utils.fingerprint.module_fingerprint`)}]."""
    return [{"defense": label, "weights": str(s.params["weights"]), "step": s.step, "fingerprint": s.fingerprint}
            for label, d in defenses.items() for s in d.parts if isinstance(s, PuFaceDefense)]


def _amplification(defenses: dict) -> float:
    """The amplification factor the report's image grids show: that of the (last) loaded purifier."""
    amplification = 3.0
    for d in defenses.values():
        for s in d.parts:
            if isinstance(s, PuFaceDefense) and s.loaded:
                amplification = s.purifier.amplification
    return amplification
