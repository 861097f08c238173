"""`puface detect IN --out scores.csv`, `puface calibrate-detector NATURAL --out FILE` and `puface train-detector`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import (SHOW_HELP, check_engine, check_rotations, device_option, dry_run_option, engine_options,
                      WEIGHTS_FIRST_LOAD, list_packaged, parse_overrides, rank_options, rotations_option, show_config,
                      threads_option)


# the purifier a detector was calibrated with (one option, shared by the commands below)
_detector_purifier_option = click.option(
    "--purifier", type=click.Path(path_type=Path), default=None,
    help="The purifier file the detector was calibrated with, for a detector trained with another purifier than the "
         "shipped one (`puface train-detector --purifier FILE`). Default: the shipped purifier.")


@click.command("detect")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_csv",
    type=click.Path(path_type=Path),
    default=None,
    help="The scores CSV to write (a row per image: its path relative to IN, score, cloaked 1/0, the features); "
    "beside it <name>-identities.csv (share flagged per identity) and <name>-run.json (the detector and settings, "
    "for resuming). Default: scores.csv in the current folder; with --world-size above 1, scores.rank<r>.csv "
    "per rank r (give one --out to every rank to share one file).",
)
@click.option(
    "--fpr",
    type=float,
    default=None,
    help="False-positive rate of the decision on natural photos (default: the detector's, 0.01). Lower flags "
    "fewer natural photos and misses more cloaks.",
)
@click.option(
    "--one-threshold",
    is_flag=True,
    help="Judge every image by the default threshold. Without it, a chip stored in a way that makes natural "
    "photos score high (JPEG with full-resolution colour below quality 90, a palette) gets the higher "
    "threshold calibrated on natural photos stored the same way (the 'storage' column).",
)
@click.option(
    "--detector",
    "weights",
    type=click.Path(path_type=Path),
    default=None,
    help="A detector file (`puface train-detector`) or a shipped one: default (every cloak family measured), "
    "sharpen (photos from sources that sharpen: phone cameras, photo editors; misses most Fawkes low cloaks), "
    "edits (edited or mixed sources: sharpened, contrast or gamma changed, re-encoded; misses Fawkes low "
    "cloaks and most adaptive ones).",
)
@_detector_purifier_option
@device_option()
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option(
    "--align",
    is_flag=True,
    help="Photos, not chips: detect and align every face first (a photo's score is its highest face score).",
)
@click.option("--largest-face", is_flag=True, help="With --align: score only the largest face of each photo.")
@rotations_option("scored upright (the note and the column turned say so)")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Keep the rows an earlier run wrote to --out and score only the other images (refused when that run "
    "scored another IN, with another detector or other --align options); rows of files no longer under IN "
    "are dropped.",
)
@click.option("--restart", is_flag=True, help="Discard an earlier run's --out and score everything (with "
              "--world-size above 1 and one shared --out: this rank's rows only; give it to every rank).")
@click.option(
    "--io-workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Threads that decode images while the models run.",
)
@threads_option()
@rank_options
@engine_options("detector", "Same CSV rows either way.")
@dry_run_option("score", "--out", "no scores CSV, run file or lock",
                "--out scored with another detector, input or --align")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def detect(
    in_path: Path,
    out_csv: Path | None,
    fpr: float | None,
    one_threshold: bool,
    weights: Path | None,
    purifier: Path | None,
    device: str,
    batch_size: int,
    align: bool,
    largest_face: bool,
    rotations: str | None,
    resume: bool,
    restart: bool,
    io_workers: int,
    threads: int | None,
    rank: int | None,
    world_size: int | None,
    engine: str,
    address: str | None,
    workers: int | None,
    dry_run: bool,
    progress: bool,
) -> None:
    """Score every image under IN for a cloak (Fawkes, LowKey, ...) and say which look cloaked.

    A score per image (higher = more likely cloaked) from what the purifier (the shipped one, or --purifier)
    does to it: how far it moves the face embedding, and what it takes out (a small CNN on the purifier's
    residual). An image is called cloaked when its score exceeds the threshold at which --fpr of natural
    calibration photos score higher (held on each kind of calibration photo with the detector's confidence,
    0.9 for the shipped ones, so that new natural photos of those kinds stay under --fpr); a chip whose file is
    stored in a way that makes natural photos score high (JPEG with full-resolution colour below quality 90, a
    palette) gets the higher threshold of natural photos stored the same way (--one-threshold: not). The default
    detector expects aligned face chips (like the LFW/dlib 150x150 chips); for ordinary photos use --align. An
    image of another size is scored resized to a chip, and the summary warns once with their count (their
    note says so): its decision holds only if it is an aligned face chip at another size.
    Streams in batches, resumes, prints a summary; exit code 1 if some images could not be read (they
    are listed and skipped).
    """
    import torch

    from ..detection.folder import detect_folder, run_file_of
    from ..utils.errors import PufaceError

    if batch_size < 1:
        raise PufaceError("--batch-size must be >= 1")
    if fpr is not None and not 0.0 <= fpr < 1.0:
        raise PufaceError(f"--fpr must be in [0, 1), got {fpr}")
    if largest_face and not align:
        raise PufaceError("--largest-face needs --align")
    check_engine(engine, address, workers)
    if threads:
        torch.set_num_threads(threads)
    from ..io.jobs import resolve_rank

    rank, world_size = resolve_rank(rank, world_size)
    shared = out_csv is not None  # one --out given to every rank; the default scores.rank<r>.csv is this rank's alone
    if out_csv is None:
        out_csv = Path(f"scores.rank{rank}.csv" if world_size > 1 else "scores.csv")
    rotations = check_rotations(rotations, align, run_file_of(out_csv) if out_csv.exists() else None,
                                resume and not restart, section=None, redo="--restart")
    report = detect_folder(
        in_path,
        out_csv,
        weights=weights,
        device=None if device == "auto" else device,
        fpr=fpr,
        batch_size=batch_size,
        resume=resume,
        restart=restart,
        io_workers=io_workers,
        progress=progress,
        align=align,
        largest_face=largest_face,
        rank=rank,
        world_size=world_size,
        engine=engine,
        address=address,
        workers=workers,
        purifier=purifier,
        one_threshold=one_threshold,
        shared=shared,
        rotations=rotations,
        dry_run=dry_run,
    )
    from ..io.jobs import DryRun

    if isinstance(report, DryRun):
        return click.echo(report.summary("score"))
    click.echo(report.summary())
    if report.exit_code:
        raise click.exceptions.Exit(report.exit_code)


@click.command("calibrate-detector")
@click.argument("natural", metavar="NATURAL", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The calibrated detector file to write (.safetensors); use it with `puface detect --detector`.",
)
@click.option(
    "--detector",
    "weights",
    type=click.Path(path_type=Path),
    default=None,
    help="The detector to start from: a file, or a shipped one (default, sharpen, edits). Default: default.",
)
@_detector_purifier_option
@click.option(
    "--kind",
    default=None,
    help="A name for this kind of photo in the calibration record (default: user:<NATURAL's folder name>).",
)
@click.option(
    "--scores",
    "scores_csv",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the scores of NATURAL go (default: next to --out, <name>-calibration.csv, with "
    "<name>-calibration-identities.csv and <name>-calibration-run.json beside it); resumable.",
)
@click.option("--restart", is_flag=True, help="Score NATURAL afresh, discarding the scores file of an earlier run.")
@device_option()
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--align", is_flag=True, help="NATURAL holds photos, not chips: detect and align every face first.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Check the detector and purifier files, --out, NATURAL and the scores file (as the scoring does: "
                   "another detector's or input's scores are refused without --restart), and print the photos found "
                   "(and how many the scores file holds), the threshold now and the false-positive rate it targets, "
                   "then exit without scoring or writing (" + WEIGHTS_FIRST_LOAD + ").")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def calibrate_detector(
    natural: Path,
    out_path: Path,
    weights: Path | None,
    purifier: Path | None,
    kind: str | None,
    scores_csv: Path | None,
    restart: bool,
    device: str,
    batch_size: int,
    align: bool,
    dry_run: bool,
    progress: bool,
) -> None:
    """Calibrate the cloak detector on your own natural photos, so that its false-positive rate holds on them.

    NATURAL: a folder of photos you know carry no cloak, from the same source as the photos you will
    screen (the shipped threshold is set on LFW-like news photos; grainier or differently processed
    sources can score higher). They join the detector's calibration as one more kind of natural photo:
    the threshold becomes the highest of the per-kind thresholds at the detector's false-positive rate,
    so it never falls; a higher threshold also misses more weak cloaks. Each kind's threshold holds the
    rate with the detector's confidence (0.9 for the shipped ones), which takes at least 230 photos at 1%;
    a few hundred give a usable threshold. The summary prints the threshold before and after.
    """
    from ..detection.detector import detector_path, load_detector, min_calibration_size
    from ..detection.folder import calibrate_on_folder
    from ..io.files import check_output_file
    from ..utils.errors import PufaceError

    if out_path.suffix.lower() != ".safetensors":
        raise PufaceError(f"{out_path}: the detector file must end in .safetensors")
    if batch_size < 1:
        raise PufaceError("--batch-size must be >= 1")
    check_output_file(out_path, "--out", inputs=[detector_path(weights), *([purifier] if purifier else [])])
    kind = kind or f"user:{natural.resolve().name}"
    scores = scores_csv or out_path.with_name(out_path.stem + "-calibration.csv")
    if dry_run:
        from ..training.plan import plan_calibration

        click.echo(str(plan_calibration(natural, weights, purifier=purifier, kind=kind, scores_csv=scores,
                                        restart=restart, align=align)))
        return
    det = load_detector(weights, device=None, purifier=purifier)
    replaced = (det.calibration.get("added_kinds") or {}).get(kind)
    before, after, rep = calibrate_on_folder(det, natural, kind, scores_csv=scores,
                                             device=None if device == "auto" else device, batch_size=batch_size,
                                             align=align, progress=progress, restart=restart)
    n = rep.scored
    if replaced:
        click.echo(f"warning: the detector already held a calibration kind {kind!r} ({replaced} photos): these photos "
                   "replace it (pass --kind NAME to keep both)", err=True)
    if n and rep.flagged > n / 2:
        click.echo(f"warning: {rep.flagged} of the {n} photos scored as cloaked before this calibration: are they "
                   f"natural? The new threshold ({after:.4f}) lets photos like them through", err=True)
    det.cpu().save(out_path)
    conf = det.default_confidence
    held = f" (held with {conf:.0%} confidence)" if conf else ""
    click.echo(
        f"calibrated on {n} natural photo(s) of {natural} (kind {kind!r}): {rep.flagged} scored above the old "
        f"threshold {before:.4f}; threshold now {after:.4f} at {det.default_fpr:.1%} false positives per kind{held}"
    )
    need = min_calibration_size(det.default_fpr, conf)
    if n < max(need, 100):
        why = (
            f"fewer than the {need} that can hold {det.default_fpr:.1%} with {conf:.0%} confidence: the threshold is "
            f"their highest score"
            if n < need
            else "a coarse threshold"
        )
        click.echo(f"warning: {n} photos give {why}; a few hundred are better", err=True)
    click.echo(f"detector: {out_path} (use: puface detect --detector {out_path} ...)")
    if rep.exit_code:
        raise click.exceptions.Exit(rep.exit_code)


@click.command("train-detector")
@click.option("--config", "config_path", default="default", show_default=True,
              help="A TOML detector recipe, or a packaged recipe's name ('default': the shipped detector's, every "
                   "option commented).")
@click.option("--list", "list_recipes", is_flag=True, help="List the packaged detector recipes and exit.")
@click.option("--show", is_flag=True, help=SHOW_HELP)
@click.option("--data", "data", type=click.Path(path_type=Path), default=None,
              help="Identity folders instead of the config's [data] root (the packaged recipe names \"lfw-chips150\", "
                   "found through $PUFACE_DATA).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder for detector.safetensors, config.toml (the recipe as it ran) and metrics.json (AUCs, "
                   "calibration, the net's epochs); not inside the data. Default: runs/detector-<config>.")
@click.option("--purifier", type=click.Path(path_type=Path), default=None,
              help="The purifier whose features the detector uses (a checkpoint of `puface train-purifier`) instead "
                   "of the config's [data] purifier (the shipped one); it must record its identity split. Use the "
                   "detector with the same --purifier.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config option, e.g. --set train.epochs=2 --set data.max_natural=200 (repeatable); "
                   "none clears an optional one (TOML has no null): --set data.max_natural=none.")
@device_option()
@threads_option()
@click.option("--export", "export_path", type=click.Path(path_type=Path), default=None,
              help="Also copy the detector to this file when training ends.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Check the config (with --set), the data, the purifier and face models it names and OUT, and print "
                   "the run's size (identities, natural and cloaked samples, cloaks in the cache or to make, the net's "
                   "epochs and steps, calibration chips, the FPR target), then exit without training or writing ("
                   + WEIGHTS_FIRST_LOAD + ").")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def train_detector(config_path: str, list_recipes: bool, show: bool, data: Path | None, out_dir: Path | None,
                   purifier: Path | None, overrides: tuple[str, ...], device: str, threads: int | None,
                   export_path: Path | None, dry_run: bool, progress: bool) -> None:
    """Train and calibrate a cloak detector as a recipe says (for `puface detect --detector FILE`).

    It learns from the purifier's training identities (natural chips, re-encoded and resampled variants,
    and their cloaks made through the shared cloak cache) less a seeded share (data.calibration_fraction),
    and sets its threshold on natural chips of that share and of the purifier's validation identities;
    the identities the purifier held out stay unseen. A rerun after an interruption continues: cloaks
    (per image) and the purifier's features (per finished sample set: fit, validation, calibration) are
    cached, and the net resumes after its last finished epoch (OUT/.net-state.pt, removed at the end).
    """
    import torch

    from ..io.files import check_output_file
    from ..training.detector import load_detector_config, train_detector as train

    if list_recipes:
        return list_packaged("detector")
    if show:
        return show_config(config_path, "detector")
    if threads:
        torch.set_num_threads(threads)
    settings = parse_overrides(overrides, {k: opt for k, opt, given in (("data.root", "--data", data is not None),
                                           ("data.purifier", "--purifier", purifier is not None)) if given})
    if purifier is not None:
        settings["data.purifier"] = str(purifier)
    cfg = load_detector_config(config_path, settings, data_root=data)
    out = out_dir or Path("runs") / f"detector-{Path(config_path).stem}"
    if export_path is not None:  # before training, not after it
        check_output_file(export_path, "--export", inputs=[p for p in (purifier,) if p is not None])
    if dry_run:
        from ..training.plan import plan_detector_training

        plan = plan_detector_training(cfg, out, device=None if device == "auto" else device)
        click.echo(f"config: {cfg.where or config_path}\n{plan}")
        return
    det = train(cfg, out, device=None if device == "auto" else device, progress=progress, log=click.echo)
    click.echo(json.dumps(det.meta.get("metrics", {}), indent=2))
    if export_path is not None:
        det.save(export_path)  # atomically, as OUT/detector.safetensors
        click.echo(f"exported the detector to {export_path}")
