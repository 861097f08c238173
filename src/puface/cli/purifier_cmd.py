"""`puface train-purifier --config RECIPE` and `puface purify [--weights CKPT] IN OUT`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .options import (SHOW_HELP, check_engine, check_rotations, device_option, dry_run_option, engine_options,
                      WEIGHTS_FIRST_LOAD, list_packaged, parse_overrides, rank_options, rotations_option, show_config,
                      threads_option)


def _parse_attack(text: str) -> dict:
    from ..utils.errors import ConfigError
    from ..utils.tomlconfig import tomllib

    try:
        return dict(tomllib.loads(f"a = {{ {text} }}")["a"])
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--add-attack expects TOML keys like 'name = \"fawkes\", mode = \"high\", images = 40', "
                          f"got {text!r} ({e})") from None


@click.command("train-purifier")
@click.option(
    "--config",
    "config_path",
    default="default",
    show_default=True,
    help="A TOML training config, or a packaged recipe's name (--list shows them; 'default' is the "
    "shipped purifier's, with every option commented), or a run's OUT/config.json (as it ran).",
)
@click.option("--list", "list_recipes", is_flag=True, help="List the packaged purifier recipes and exit.")
@click.option("--show", is_flag=True, help=SHOW_HELP)
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path),
    default=None,
    help="Identity folders to train on instead of the config's [data] root (which may name a data set "
    "found in $PUFACE_DATA; the packaged recipes name \"lfw-chips150\").",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder: config.json (as it ran), data_summary.json (identity split, pairs), metrics.jsonl "
    "(one line per validated epoch), last.pt (for resuming), best.pt and best.safetensors (the best "
    "epoch's weights) and result.json (when done). Not inside the training data. Default: "
    "runs/<config name>.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from OUT/last.pt when it exists (after an interruption); refused when the config, --set "
    "or data differ from the run's (the pairs' pixels too: an image edited in place, other cloaks; data.root, "
    "data.cache, data.cached_only, save_every_steps and the cloaking and validation batch sizes may). --no-resume "
    "starts afresh; an earlier run's files are renamed "
    "*.<time>.discarded.* first.",
)
@device_option()
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config option, e.g. --set train.epochs=2 --set loss.feature_weight=0.1; an "
    "[[attacks]] entry by its index: --set attacks.0.images=20 (repeatable). VALUE is TOML (a bare word is text); "
    "none clears an optional option (TOML has no null): --set data.max_per_identity=none.",
)
@click.option(
    "--drop-attack",
    "drop_attacks",
    multiple=True,
    metavar="LABEL",
    help="Leave out the config's attack with this label, e.g. --drop-attack lowkey-ensemble (repeatable; "
    "labels: `label`, else NAME-MODE, else NAME).",
)
@click.option(
    "--add-attack",
    "add_attacks",
    multiple=True,
    metavar="TOML",
    help="Add an attack, written as TOML keys, e.g. --add-attack 'label = \"adaptive\", name = \"fawkes\", "
    "mode = \"high\", embedders = [\"dlib-resnet29\"], through = \"default\", images = 160' (repeatable).",
)
@click.option(
    "--prepare-only",
    is_flag=True,
    help="Only build the training pairs (generate and cache missing cloaks) and print the data summary.",
)
@click.option(
    "--cached-cloaks-only",
    is_flag=True,
    help="Never make a cloak: stop, naming the file, at the first one missing from the cache (checks that "
    "a run on another machine trains on exactly the cloaks made here; same as --set data.cached_only=true).",
)
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the best purifier to this file (.safetensors or .pt) when training ends.",
)
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Check the config (with --set), the data, the face models and weights it names and OUT, and print "
                   "the run's size (identities, training and validation pairs, cloaks in the cache or to make, "
                   "epochs and optimizer steps), then exit without cloaking, training or writing anything ("
                   + WEIGHTS_FIRST_LOAD + ").")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def train_purifier(
    config_path: str,
    list_recipes: bool,
    show: bool,
    data: Path | None,
    out_dir: Path | None,
    resume: bool,
    device: str,
    overrides: tuple[str, ...],
    drop_attacks: tuple[str, ...],
    add_attacks: tuple[str, ...],
    prepare_only: bool,
    cached_cloaks_only: bool,
    export_path: Path | None,
    dry_run: bool,
    progress: bool,
) -> None:
    """Train a PuFace purifier (RED-Net) on amplified cloaked images, as the config says.

    Seeded and resumable. Per epoch it validates on identities not used for training (PSNR of
    purified natural images, embedding cosines of cloaked and purified-cloaked images) and keeps
    the best and the last checkpoint. Multi-process: run it under torchrun, e.g.
    `torchrun --nproc_per_node 2 -m puface train-purifier --config FILE` (DDP; gloo on CPU, nccl on GPU).
    """
    from ..io.jobs import env_int
    from ..training.config import load_config
    from ..training.train import cleanup_distributed, init_distributed, prepare_data, train

    if list_recipes:
        return list_packaged("purifier")
    if show:
        return show_config(config_path, "purifier")
    sets = parse_overrides(overrides, {k: opt for k, opt, given in (("data.root", "--data", data is not None),
                                       ("data.cached_only", "--cached-cloaks-only", cached_cloaks_only)) if given})
    if cached_cloaks_only:
        sets["data.cached_only"] = True
    cfg = load_config(config_path, sets, drop_attacks=drop_attacks, add_attacks=[_parse_attack(a) for a in add_attacks],
                      data_root=data)
    out = out_dir or Path("runs") / Path(config_path).stem
    if export_path is not None:  # before training, not after it
        from ..io.files import check_output_file

        check_output_file(export_path, "--export")
    if dry_run:
        from ..training.plan import plan_purifier_training
        from ..utils.errors import PufaceError

        if prepare_only:
            raise PufaceError("--dry-run and --prepare-only: give one")
        plan = plan_purifier_training(cfg, out, resume=resume, device=None if device == "auto" else device)
        click.echo(f"config: {cfg.where or config_path}\n{plan}")
        return
    if prepare_only:
        d = init_distributed(None if device == "auto" else device)
        try:
            tr, va, summary = prepare_data(cfg, d, progress=progress)
        finally:
            cleanup_distributed()
        if d.main:
            click.echo(json.dumps({"train_pairs": summary["train_pairs"], "val_pairs": summary["val_pairs"],
                                   "train_identities": len(summary["train_identities"]),
                                   "val_identities": len(summary["val_identities"]),
                                   "heldout_identities": len(summary["heldout_identities"])}, indent=2))
        return
    try:
        result = train(cfg, out, resume=resume, device=None if device == "auto" else device, progress=progress)
    finally:
        cleanup_distributed()
    if env_int("RANK", 0) != 0:
        return
    if export_path is not None and result.get("best_path"):
        from ..purifier.model import Purifier

        Purifier.load(result["best_path"]).save(export_path)
        click.echo(f"exported the best purifier to {export_path}")
    if result:
        b = result.get("best", {})
        click.echo(
            f"done: best epoch {b.get('epoch')} (score {b.get('score')}, PSNR natural {b.get('psnr_natural')} dB); "
            f"checkpoints in {out}"
        )


def _unmask_step(in_path: Path, out_root: Path, progress: bool):
    """`--unmask`: find each identity folder's shared pattern (all of IN read once), list the folders in
    OUT/unmask.csv and return the `prepare` step that subtracts a photo's folder pattern."""
    from ..defenses.shared import folder_patterns, subtract_pattern
    from ..evaluation.tables import write_csv
    from ..io.files import check_output_folder

    check_output_folder(in_path, out_root)
    found = folder_patterns(in_path, progress=progress, warn=lambda m: click.echo(m, err=True))
    out_root.mkdir(parents=True, exist_ok=True)
    write_csv(out_root / "unmask.csv", [f.row() for f in found.values()])
    hit = sum(f.pattern is not None for f in found.values())
    click.echo(f"unmask: {hit} of {len(found)} folders share a pattern; subtracted before purifying "
               f"({out_root / 'unmask.csv'})", err=True)

    def prepare(item):
        return subtract_pattern(item.image, found.get(item.job.rel.parent.as_posix()))

    return prepare


@click.command("purify")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_root", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--weights",
    "--purifier",
    "weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Purifier checkpoint (.pt or .safetensors), or a shipped one by name: default (trained on dlib 150 px "
    "chips) or arcface112 (on ArcFace 112 px crops). Default: the shipped ones, each on the layout it "
    "was trained on (see --template). --purifier is the same option, named as in detect and train-detector.",
)
@device_option()
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per forward pass.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Skip images whose output (and, with --stats, its row) already exists (refused when OUT was made with "
    "other settings); "
    "--no-resume redoes every image.",
)
@click.option(
    "--quality",
    type=int,
    default=95,
    show_default=True,
    help="JPEG/WebP quality of lossy outputs (a lossless WebP input is written lossless).",
)
@click.option(
    "--io-workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Threads that decode and encode images while the purifier runs.",
)
@threads_option()
@rank_options
@click.option(
    "--stats",
    "stats_csv",
    type=click.Path(path_type=Path),
    default=None,
    help="Append a row per image to this CSV file: file (relative to IN), status, mean_abs_change and "
    "max_abs_change (how far the output moved from the input, in grey levels 0-255).",
)
@click.option(
    "--align",
    is_flag=True,
    help="Photos, not chips: detect faces, purify each aligned 150x150 face chip and paste it back.",
)
@click.option("--largest-face", is_flag=True, help="With --align: purify only the largest face of each photo.")
@rotations_option("purified and pasted back into the photo as it is (size and layout kept)")
@click.option(
    "--template",
    type=click.Choice(["auto", "dlib150", "arcface112"]),
    default="auto",
    show_default=True,
    help="The chips' face layout: dlib150 (dlib chips) or arcface112 (ArcFace/InsightFace 112 px crops). "
    "With the shipped weights each layout gets the purifier trained on it; a --weights file serves "
    "another layout than its own by resampling to its face scale. auto: by size, 150x150 dlib150, "
    "112x112 arcface112; other sizes are purified as they are, with a warning.",
)
@click.option(
    "--step",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="How far along the purifier's change to go: x + S (P(x) - x); 1 writes the purifier's output. "
    "Default: 1.5 with the shipped purifier of dlib150 chips (and --align photos), 1 with the shipped "
    "ArcFace 112 one and with --weights files. 1.5 removes more of a cloak made against a face model "
    "the purifier never saw (MobileFace grid: mean ASR 62.4% -> 40.5%) or re-encoded as JPEG (27.1% "
    "-> 6.5%) and keeps the benchmark grid (3.3 / 1.1% -> 3.6 / 0.5% on two draws), at ~3.5 dB PSNR "
    "on natural photos (42.5 -> 39.1 dB); it also amplifies a cloak made through the purifier itself "
    "(docs/RESULTS.md sections 15.8, 15.9, 16.3, 19).",
)
@engine_options("model")
@click.option(
    "--image-field",
    default=None,
    metavar="NAME",
    help="Shards: the WebDataset field(s) to purify (e.g. jpg, or left.jpg,right.jpg; default: every image "
    "field of a record: jpg/jpeg/png/webp/bmp, so name the faces to leave a mask or map alone) or the "
    "Parquet column holding the image (default: found by name: image, img, ... or the first bytes / "
    "{bytes, path} column; a file of several {bytes, path} columns needs one named).",
)
@click.option(
    "--skip-cloaked",
    is_flag=True,
    help="Respect opt-outs: score every photo for a cloak first (`puface detect`) and leave out those judged "
    "cloaked (listed in OUT/cloaked.csv); the others are purified as usual. Image folders, local engine.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Score every photo for a cloak as it is purified: OUT/detection.csv (per photo), "
    "OUT/detection-identities.csv (share flagged per identity) and a summary at the end.",
)
@click.option(
    "--detector",
    "detector_path",
    type=click.Path(path_type=Path),
    default=None,
    help="With --skip-cloaked/--report: a detector file, or a shipped one (default, sharpen, edits; all calibrated "
    "for the shipped purifier). Default: default.",
)
@click.option(
    "--fpr",
    type=float,
    default=None,
    help="With --skip-cloaked/--report: false-positive rate of the decision on natural photos (default 0.01).",
)
@click.option(
    "--one-threshold",
    is_flag=True,
    help="With --skip-cloaked/--report: judge every image by the detector's default threshold, also chips "
    "stored as 4:4:4 JPEG or with a palette (see `puface detect --help`).",
)
@click.option(
    "--unmask",
    is_flag=True,
    help="Universal masks (OPOM-style: one pattern on all of a person's photos): take each identity folder "
    "(IN/<person>/<image>) as one person, find a pattern its chips share and subtract it before "
    "purifying; folders without one are left as they are. Lists every folder in OUT/unmask.csv. "
    "Aligned chips in an image folder, local engine.",
)
@dry_run_option("purify", after="Not with --skip-cloaked or --report, whose scores decide what is written.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def purify(
    in_path: Path,
    out_root: Path,
    weights: Path | None,
    device: str,
    batch_size: int,
    resume: bool,
    quality: int,
    io_workers: int,
    threads: int | None,
    rank: int | None,
    world_size: int | None,
    stats_csv: Path | None,
    align: bool,
    largest_face: bool,
    rotations: str | None,
    template: str,
    engine: str,
    address: str | None,
    workers: int | None,
    image_field: str | None,
    skip_cloaked: bool,
    report: bool,
    detector_path: Path | None,
    fpr: float | None,
    one_threshold: bool,
    unmask: bool,
    step: float | None,
    dry_run: bool,
    progress: bool,
) -> None:
    """Remove cloaks from the images under IN and write them to OUT (same tree, names, formats and sizes).

    Grayscale images stay grayscale and transparency (alpha) is kept; outputs have 8 bits per channel (a 16-bit PNG or
    TIFF comes out 8-bit) and a palette (colour-table) image comes out RGB, since purified colours do not fit its
    palette. EXIF, the ICC profile, the resolution (dpi) and a TIFF's compression are kept. Image files puface cannot
    read (GIF, HEIC, ...) are listed as failed. OUT/purify_config.json records the settings its images depend on;
    resuming with other settings is refused (--no-resume redoes every image), and so is an OUT that holds another
    command's outputs (cloak, align) or that another puface process is writing into (other than the other ranks of one
    job).

    Streams in batches (decoding and encoding overlap the computation), resumes where it stopped,
    prints images/s. The default purifier expects aligned face chips (like the LFW/dlib 150x150
    chips); for ordinary photos use --align. Exit code 1 if some images failed.

    IN may also be shards: a WebDataset .tar or a Parquet file (raw image bytes or a Hugging Face
    datasets Image column), a folder of them, or a glob / brace pattern in quotes
    ('data/shard-{000000..000099}.tar'). OUT then gets shards of the same format and names with the same
    records, keys, order and other fields (labels kept); every image of a record is purified (see
    --image-field); a record with an image that cannot be decoded is listed and left out; each shard is
    written under a temporary name and renamed when done, so a rerun skips finished shards.

    With --skip-cloaked or --report each photo is also scored for a cloak (the detector's purified
    image is the one written: no second purification).
    """
    import torch

    from ..purifier.folder import purify_folder
    from ..utils.errors import PufaceError

    if batch_size < 1:
        raise PufaceError("--batch-size must be >= 1")
    if not 1 <= quality <= 100:
        raise PufaceError("--quality must be between 1 and 100")
    if largest_face and not align:
        raise PufaceError("--largest-face needs --align")
    rotations = check_rotations(rotations, align, out_root / "purify_config.json", resume)
    if threads:
        torch.set_num_threads(threads)
    from ..io.jobs import resolve_rank

    rank, world_size = resolve_rank(rank, world_size)
    from ..io.shards import is_shard_input

    common: dict[str, Any] = dict(
        weights=weights, device=None if device == "auto" else device, batch_size=batch_size, resume=resume, rank=rank,
        world_size=world_size, quality=quality, io_workers=io_workers, progress=progress, stats_csv=stats_csv,
        align=align, largest_face=largest_face, template=template, step=step, rotations=rotations)
    if align and template != "auto":
        raise PufaceError("--template describes chips; with --align puface cuts dlib150 chips itself")
    check_engine(engine, address, workers)
    if (detector_path is not None or fpr is not None or one_threshold) and not (skip_cloaked or report):
        raise PufaceError("--detector, --fpr and --one-threshold go with --skip-cloaked or --report")
    if unmask:
        if align or skip_cloaked or report or engine != "local" or is_shard_input(in_path):
            raise PufaceError(
                "--unmask works on aligned chips in identity folders on the local engine (a universal "
                "mask sits on the same pixels of every chip): not with --align, --skip-cloaked, --report, "
                "shards or --engine ray"
            )
        if not in_path.is_dir():
            raise PufaceError(f"{in_path}: --unmask needs a folder of identity folders")
        # after OUT's settings are checked: the step reads all of IN and writes OUT/unmask.csv
        common["prepare"] = lambda: _unmask_step(in_path, out_root, progress)
        common["settings"] = {"unmask": True}
    if dry_run and (skip_cloaked or report):
        raise PufaceError("--dry-run does not cover --skip-cloaked or --report (their scores decide what is written); "
                          "run it without them to see the images and settings")
    common["dry_run"] = dry_run
    if skip_cloaked or report:
        if engine != "local" or is_shard_input(in_path) or template == "arcface112":
            raise PufaceError("--skip-cloaked and --report score dlib150 chips or photos in an image folder on the "
                              "local engine (not shards, --engine ray or --template arcface112)")
        from ..detection.folder import purify_folder_detected
        from ..detection.detector import load_detector

        if fpr is not None and not 0.0 <= fpr < 1.0:
            raise PufaceError(f"--fpr must be in [0, 1), got {fpr}")
        det = load_detector(detector_path, device=None, purifier=weights)
        rep = purify_folder_detected(in_path, out_root, skip_cloaked=skip_cloaked, detector=det,
                                     device=None if device == "auto" else device, fpr=fpr, batch_size=batch_size,
                                     resume=resume, rank=rank, world_size=world_size, quality=quality,
                                     io_workers=io_workers, progress=progress, align=align, largest_face=largest_face,
                                     scores_csv=stats_csv, weights=weights, step=step, one_threshold=one_threshold,
                                     rotations=rotations)
    elif is_shard_input(in_path):
        from ..purifier.folder import purify_shards

        if engine != "local":
            raise PufaceError("--engine ray takes image folders; shards run on the local engine (share them "
                              "between processes with --rank/--world-size)")
        rep = purify_shards(in_path, out_root, image_field=image_field, **common)
    else:
        if image_field is not None:
            raise PufaceError("--image-field is for shard inputs (.tar, .parquet)")
        rep = purify_folder(in_path, out_root, engine=engine, address=address, workers=workers, **common)
    from ..io.jobs import DryRun

    if isinstance(rep, DryRun):
        return click.echo(rep.summary("purify"))
    click.echo(rep.summary("purified"), err=False)
    if rep.exit_code:
        raise click.exceptions.Exit(rep.exit_code)
