"""`puface evaluate`, `puface reproduce` and `puface demo`: FaceCure-style evaluation of attacks and
defenses (ASR and normal accuracy), from options, from a TOML config, or the embedded demo."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .options import DEVICE_HELP, SHOW_HELP, device_option, list_packaged, parse_overrides, show_config


def _run(cfg, out, device, restart, progress, detect=True, quiet_table=False):
    from ..experiments import run_experiment

    if not detect:
        cfg = cfg.with_detection(enabled=False)

    t0 = time.perf_counter()
    res = run_experiment(cfg, out, device=device, progress=progress, restart=restart, echo=click.echo)
    wall = time.perf_counter() - t0
    if not quiet_table:
        click.echo("")
        click.echo(res.table_md)
    click.echo(f"results: {res.output}/results.csv, summary: {res.output}/summary.csv, table: {res.output}/table.md")
    if res.report:
        click.echo(f"report:  {res.report}")
    # table.md's wall time is the grid's, summed over every session of the folder: say which this one is
    click.echo(
        f"wall time: {wall:.0f} s ({wall / 60:.1f} min) for this command, writing the tables and report included"
    )
    return res


_COMMON = [
    click.option(
        "--out",
        "out",
        type=click.Path(path_type=Path),
        default=None,
        help="Output folder (default: the config's [run] output, else runs/<its name>: runs/evaluate for "
        "`puface evaluate`; relative paths from the current folder).",
    ),
    device_option(None, DEVICE_HELP + "; default: the config's [run] device, else auto."),
    click.option(
        "--restart",
        is_flag=True,
        help="Set aside the finished runs found in the output folder and every file they wrote "
        "(renamed <name>.<time>.discarded.<ext>) instead of resuming.",
    ),
    click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars."),
    click.option(
        "--detect/--no-detect",
        default=True,
        show_default=True,
        help="Report cloak detection per attack (AUC, TPR at the calibrated threshold, ROC curves; [detection] "
        "in a config). Purified images and embeddings come from the evaluation's cache.",
    ),
]


def common(f):
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


# the purifier a detector was calibrated with (one option, shared by the commands below)
_detector_purifier_option = click.option(
    "--detector-purifier", "detector_purifier", type=click.Path(path_type=Path), default=None,
    help="The purifier file --detector was calibrated with, for a detector trained for another purifier "
         "(`puface train-detector --purifier`; [detection] purifier). Default: the shipped purifier.")


@click.command("reproduce")
@click.argument("config", metavar="CONFIG", required=False)
@click.option("--list", "list_configs", is_flag=True, help="List the packaged configs and exit.")
@click.option("--show", is_flag=True, help=SHOW_HELP)
@click.option("--data", "data", type=click.Path(path_type=Path), default=None,
              help="Identity folders ROOT/<identity>/<image> to use instead of the config's [data] root "
                   "(which may name a data set found in $PUFACE_DATA).")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Run with this split/user/attack seed instead of the config's seeds (repeatable): the same grid "
                   "on another draw of protected users and train/test split.")
@click.option("--detector", "detector", type=click.Path(path_type=Path), default=None,
              help="The detector of the detection report instead of the config's [detection] detector: a detector "
                   "file or a shipped one (default, sharpen, edits).")
@_detector_purifier_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config setting, e.g. --set users.count=2 --set data.max_per_identity=10; an "
                   "[[attacks]] entry by its index: --set attacks.1.steps=10 (repeatable; VALUE is TOML, a bare word "
                   "is text; `none` clears an optional setting, e.g. data.max_per_identity=none). Recorded in "
                   "OUT/config.toml. A setting that an option given beside it also sets "
                   "(data.root and --data, seeds and --seed, run.output and --out, ...) is refused.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Check the config and the data, draw the first seed's users and print the grid's size (users x "
                   "attacks x defenses x (victim, trainer) cells = runs, per seed and in all; images to cloak, and how "
                   "many of them the cloak cache holds), then exit without running or writing anything (but a face "
                   "model's converted weights, cached in $PUFACE_HOME/weights on its first load, as by any command).")
@common
def reproduce(config: str | None, list_configs: bool, show: bool, data: Path | None, seeds: tuple[int, ...],
              detector: Path | None, detector_purifier: Path | None, overrides: tuple[str, ...], dry_run: bool,
              out: Path | None, device: str | None, restart: bool, progress: bool, detect: bool) -> None:
    """Run the experiment grid of CONFIG (a TOML file, or the name of a packaged config: see
    `puface reproduce --list`; `puface reproduce NAME --show > mine.toml` copies one to edit) and write
    results.csv, summary.csv, results.json, table.md and report.html. The data come from --data, else the
    config's [data] root: a folder (a relative one is read from the current folder, not from the config
    file's), or a data set name looked up in $PUFACE_DATA (the LFW configs name "lfw-chips150"). A config may
    start from another (extends = "lfw", a path read from the config file's folder) and write only what
    differs; OUT/config.toml is saved resolved.

    Finished runs are kept in OUT/runs.jsonl: re-running the same command resumes (only while the config,
    the data and the face models it names - the weights of victims, purifiers and attack surrogates, a model's
    input size and normalisation - are unchanged; otherwise it stops and asks for another --out or --restart).
    Cloaks, purified images and embeddings are cached by content ($PUFACE_HOME), so other experiments reuse them.
    """
    from ..experiments import load_config

    if list_configs:
        return list_packaged("experiment")
    if config is None:
        raise click.UsageError("give a CONFIG (a TOML file or a packaged config's name; --list shows them)")
    if show:
        return show_config(config, "experiment")
    cfg = load_config(config)
    if overrides:  # an option given beside a --set of its setting is refused, not silently preferred
        taken = (("data.root", "--data", data), ("seeds", "--seed", seeds), ("run.output", "--out", out),
                 ("run.device", "--device", device), ("detection.detector", "--detector", detector),
                 ("detection.purifier", "--detector-purifier", detector_purifier))
        cfg = cfg.with_overrides(parse_overrides(overrides, {k: opt for k, opt, given in taken if given}))
    if data is not None:
        cfg = cfg.with_data_root(data)
    if seeds:
        cfg = cfg.with_seeds(list(seeds))
    if detector is not None:
        cfg = cfg.with_detection(detector=str(detector))
    if detector_purifier is not None:
        cfg = cfg.with_detection(purifier=str(detector_purifier))
    if dry_run:
        from ..experiments import plan_experiment

        plan_experiment(cfg if detect else cfg.with_detection(enabled=False), device=device, progress=progress,
                        echo=click.echo)
        return
    _run(cfg, out, device, restart, progress, detect)


@click.command("demo")
@click.option("--data", "data", type=click.Path(path_type=Path), default=None,
              help="Identity folders to use instead of the embedded 'johns' set.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("puface-demo"), show_default=True,
              help="Output folder for the results and the report.")
@device_option()
@click.option("--restart", is_flag=True, help="Discard the results of an earlier demo in the output folder.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("--detect/--no-detect", default=True, show_default=True, help="Report cloak detection per attack.")
def demo(data: Path | None, out: Path, device: str | None, restart: bool, progress: bool, detect: bool) -> None:
    """End-to-end demo on the embedded default data (dlib's 'johns' set, fetched from Debian's
    libdlib19.1 on first use): cloak 3 protected users with Fawkes and LowKey, purify every
    training photo with the shipped purifier, train 1-NN and linear face recognisers, evaluate on
    clean photos, print the table and write an HTML report. A few minutes on a 2-core CPU.
    """
    from ..experiments import load_config

    cfg = load_config("demo")
    if data is not None:
        cfg = cfg.with_data_root(data)
    _run(cfg, out, device, restart, progress, detect)


def _check_image_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    from ..experiments.config import MIN_IMAGE_SIZE

    if value < MIN_IMAGE_SIZE:
        raise click.BadParameter(f"{value} is below the smallest image size, {MIN_IMAGE_SIZE} pixels")
    return value


@click.command("evaluate")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path),
    default=None,
    help="Identity folders ROOT/<identity>/<image> (default: the embedded 'johns' set).",
)
@click.option("--user", "users", multiple=True, help="A protected user (identity folder name); repeat for several.")
@click.option(
    "--users",
    "n_users",
    type=click.IntRange(min=1),
    default=None,
    help="Draw this many protected users with the seed (default 1 when no --user).",
)
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    help="Attack spec name[:key=value,...], e.g. fawkes:mode=high, 'lowkey:embedders=dlib-resnet29|sface,steps=20'; "
    "repeatable. "
    "The clean reference (no cloak) is always included. Default: fawkes:mode=high.",
)
@click.option(
    "--cloaked",
    "cloaked",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A folder of cloaked images made elsewhere (Fawkes/LowKey tools, `puface cloak`) mirroring --data "
    "(<identity>/<stem>_cloaked.png etc.); used as an attack; repeatable. A folder from `puface cloak` "
    "names its surrogates (cloak_config.json), so runs on those victims count as white-box; for other "
    "tools' folders, a config's folder attack with `embedders` says it.",
)
@click.option(
    "--victim",
    "victims",
    multiple=True,
    help="Face model the FR model is built on (registry name or model file); repeatable. Default: dlib-resnet29.",
)
@click.option(
    "--trainer",
    "trainers",
    multiple=True,
    help="nn, linear or e2e (with settings: e2e:steps=300); repeatable. Default: nn and linear.",
)
@click.option(
    "--defense",
    "defenses",
    multiple=True,
    help="Defense spec, e.g. none, puface, puface:weights=FILE, jpeg:quality=75, blur:sigma=1+bitdepth:bits=5; "
    "repeatable. Default: none and puface.",
)
@click.option("--seed", "seeds", type=int, multiple=True, help="Split/user seed; repeatable. Default: 0.")
@click.option(
    "--protocol",
    type=click.Choice(["training", "query"]),
    default="training",
    show_default=True,
    help="training: FaceCure's (the user's training photos cloaked, the FR model trained on them, clean test "
    "photos). query: the FR model built from everyone's clean gallery (training) photos, the user's probe "
    "(test) photos cloaked and the defense applied to every probe.",
)
@click.option(
    "--min-images",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Leave out identities with fewer images.",
)
@click.option(
    "--max-per-identity",
    type=click.IntRange(min=1),
    default=None,
    help="Seeded cap on images per identity (default: no cap).",
)
@click.option(
    "--image-size",
    type=int,
    default=150,
    show_default=True,
    callback=_check_image_size,
    help="Images are resized to this square size (pixels, at least 32).",
)
@click.option(
    "--photos",
    type=click.Path(path_type=Path),
    default=None,
    help="The photos the --data chips were cut from (same <identity>/<stem> names): train on published photos "
    "(each cloak pasted into its photo, the defense run on the whole photo as `purify --align`, the face "
    "cut again). Training protocol only.",
)
@click.option(
    "--photos-jpeg",
    type=click.IntRange(1, 95),
    default=None,
    help="With --photos: re-encode every published photo as JPEG at this quality, as photo sites do.",
)
@click.option(
    "--allow-purifier-identities",
    is_flag=True,
    help="Allow protected users the purifier was trained on (results are then optimistic).",
)
@click.option(
    "--save-config",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the equivalent TOML config here (for `puface reproduce`).",
)
@click.option(
    "--detector",
    "detector",
    type=click.Path(path_type=Path),
    default=None,
    help="A detector file for the detection report, or a shipped one (default, sharpen, edits). Default: default.",
)
@_detector_purifier_option
@common
def evaluate(
    data,
    users,
    n_users,
    attacks,
    cloaked,
    victims,
    trainers,
    defenses,
    seeds,
    protocol,
    min_images,
    max_per_identity,
    image_size,
    photos,
    photos_jpeg,
    allow_purifier_identities,
    save_config,
    detector,
    detector_purifier,
    out,
    device,
    restart,
    progress,
    detect,
) -> None:
    """Measure the attack success rate (ASR: share of a protected user's clean test photos not
    recognised as the user) and the normal accuracy (on everyone else) of cloaking attacks under
    defenses, with the FaceCure protocol: seeded 70/30 split per identity, the user's training
    photos cloaked, the defense applied to every training photo, an FR model trained, clean test.
    With --protocol query: the FR model is built from everyone's clean gallery photos, and the
    user's probe photos are cloaked (and defended) at matching time.
    """
    from ..experiments import ExperimentConfig
    from ..utils.errors import PufaceError
    from ..utils.specs import parse_spec

    raw: dict = {
        "name": "evaluate",
        "seeds": list(seeds) or [0],
        **({"protocol": protocol} if protocol != "training" else {}),
        "data": {"root": str(data) if data else "johns", "min_images": min_images, "image_size": image_size},
        "users": {"allow_purifier_identities": allow_purifier_identities},
        "attacks": [{"name": "none"}]
        + [parse_spec(a, "attack spec") for a in (attacks or ([] if cloaked else ["fawkes:mode=high"])) if a != "none"]
        + [{"name": "folder", "root": str(c)} for c in cloaked],
        "victims": {"embedders": list(victims) or ["dlib-resnet29"]},
        "trainers": [parse_spec(t, "trainer spec") for t in (trainers or ["nn", "linear"])],
        "defenses": [{"name": d} for d in (defenses or ["none", "puface"])],
        "detection": {"enabled": detect, "detector": str(detector) if detector else "default",
                      **({"purifier": str(detector_purifier)} if detector_purifier else {})},
    }
    if max_per_identity is not None:
        raw["data"]["max_per_identity"] = max_per_identity
    if photos is not None:
        raw["data"]["photos"] = str(photos)
    if photos_jpeg is not None:
        raw["data"]["photos_jpeg"] = photos_jpeg
    if users:
        if n_users is not None:
            raise PufaceError("--user names the protected users and --users draws them: give one or the other")
        raw["users"]["names"] = list(users)
    else:
        raw["users"]["count"] = n_users if n_users is not None else 1
    cfg = ExperimentConfig.from_dict(raw)
    if save_config is not None:
        from ..io.images import atomic_write_bytes
        from ..utils.tomlconfig import to_toml

        atomic_write_bytes(save_config, to_toml(raw).encode("utf-8"))  # a folder there: one line, not a traceback
        click.echo(f"config written to {save_config}")
    _run(cfg, out or Path("runs") / "evaluate", device, restart, progress, detect)
