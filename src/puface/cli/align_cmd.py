"""`puface align IN OUT`: detect faces in photos and cut aligned chips, recording each transform."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import check_rotations, rotations_option


@click.command("align")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_root", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--template",
    type=click.Choice(["dlib150", "arcface112"]),
    default=None,
    help="Chip layout: dlib150 = dlib chip, 150 px, padding 0.25 (dlib ResNet input, the LFW chips, the "
    "shipped purifier's); arcface112 = the ArcFace/InsightFace 112 px five-point layout (SFace, ArcFace "
    "input; most FR training sets). Default dlib150.",
)
@click.option(
    "--size",
    type=click.Choice(["150", "112"]),
    default=None,
    help="Same as --template: 150 = dlib150, 112 = arcface112.",
)
@click.option(
    "--all-faces",
    is_flag=True,
    help="Cut every face of a photo as OUT/<path>/<name>_face<k>.<ext>, k the face's place in the detector's "
    "order (its index in OUT/align.csv; a face under --min-face leaves its k unused) (default: one chip per "
    "photo, named like the photo).",
)
@click.option(
    "--pick",
    type=click.Choice(["center", "largest"]),
    default="center",
    show_default=True,
    help="Without --all-faces: which face to keep (the one closest to the photo centre, as in LFW, or the largest).",
)
@click.option(
    "--min-face",
    type=float,
    default=40.0,
    show_default=True,
    help="Ignore faces smaller than this many photo pixels (about the eyebrow-to-chin height).",
)
@click.option(
    "--detector",
    type=click.Choice(["hog", "cnn", "hog+cnn"]),
    default="hog+cnn",
    show_default=True,
    help="dlib detector: HOG (fast), CNN (slow on CPU, finds harder faces), or HOG with the CNN only "
    "for photos where HOG finds nothing.",
)
@click.option(
    "--upsample",
    type=int,
    default=1,
    show_default=True,
    help="Upsample photos this many times (2x each) before detection; 1 finds faces down to ~40 px.",
)
@rotations_option("cut upright (OUT/align.csv gives the turn: column turned, degrees clockwise)", lead="")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Photos decoded ahead per batch.")
@click.option("--quality", type=int, default=95, show_default=True, help="JPEG/WebP quality of the chips.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Skip photos whose chip and OUT/align.csv row already exist.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def align(
    in_path: Path,
    out_root: Path,
    template: str | None,
    size: str | None,
    all_faces: bool,
    pick: str,
    min_face: float,
    detector: str,
    upsample: int,
    rotations: str | None,
    batch_size: int,
    quality: int,
    resume: bool,
    progress: bool,
) -> None:
    """Detect faces in the photos under IN and write aligned face chips to OUT (same tree).

    Faces are found with dlib (HOG, CNN fallback) and 5-point landmarks, and cut exactly like
    dlib's get_face_chip, in dlib's 150 px layout or ArcFace's 112 px one (--template arcface112: the
    ArcFace five-point template, placed through dlib's landmarks as calibrated against YuNet's
    five points on LFW). Each chip's transform (chip pixel -> photo pixel, a 2x3 affine) is
    recorded in OUT/align.csv so it can be inverted; settings go to OUT/align_config.json.
    Photos without a usable face are listed and skipped. Exit code 1 if some photos failed. Resuming into an
    OUT made with other settings is refused (--no-resume redoes every photo).
    """
    from ..align import FaceAligner, FaceDetector
    from ..align.detect import rotations_entry
    from ..io.images import atomic_write_bytes, encode_image, pil_format_for
    from ..io.jobs import (Outcome, begin_settings, check_job_output, input_identity, plan_mirror, recorded_done,
                           run_folder_job)
    from ..utils.errors import PufaceError
    from ..utils.version import __version__

    if batch_size < 1:
        raise PufaceError("--batch-size must be >= 1")
    if not 1 <= quality <= 100:
        raise PufaceError("--quality must be between 1 and 100")
    by_size = {"150": "dlib150", "112": "arcface112"}
    if template is not None and size is not None and by_size[size] != template:
        raise PufaceError(f"--size {size} is the {by_size[size]} layout, not {template}; pass one of them")
    template = template or by_size.get(size or "150", "dlib150")
    rotations = check_rotations(rotations, True, out_root / "align_config.json", resume, section=None)
    aligner = FaceAligner(
        150 if template == "dlib150" else 112,
        FaceDetector(detector, upsample=upsample, rotations=rotations),
        pick="all" if all_faces else pick,
        min_face=min_face,
    )

    def chip_name(src: Path, dst: Path, index: int) -> str:
        return f"{src.stem}_face{index}{dst.suffix}"

    def rename(rel: Path) -> Path:  # --all-faces: the first face's name, for the plan's checks
        return rel.with_name(chip_name(rel, rel, 0)) if all_faces else rel

    def chip_files(job, row: dict[str, str]) -> list[Path]:
        """The chips an align.csv row of an aligned photo names (none: redo it)."""
        try:
            return [job.dst.with_name(c["chip"]) for c in json.loads(row.get("chips") or "[]")]
        except (ValueError, TypeError, KeyError):
            return []

    jobs = plan_mirror(in_path, out_root, rename=rename)
    config = {
        "puface_version": __version__,
        "command": "align",
        "input": input_identity(in_path),
        "all_faces": all_faces,
        **aligner.config,
        "quality": quality,
    }
    finish = begin_settings(out_root / "align_config.json", config, resume=resume, kind="aligning")

    with finish.on_failure():
        def process(items):
            outs = []
            for item in items:
                pf = aligner.align(item.image)
                base = {"faces": pf.found, "faces_too_small": len(pf.too_small)}
                base.update(rotations_entry(rotations, turned=pf.turn))
                if not pf.faces:
                    outs.append(Outcome.skip(pf.reason_if_empty(aligner.min_face), **base, chips="[]"))
                    continue
                # --all-faces: a chip is numbered by the face's place in the detector's order (its `index`), so a
                # face under --min-face leaves its number unused and the names do not move with --min-face
                names = [chip_name(item.job.src, item.job.dst, af.index) if all_faces else item.job.dst.name
                         for af in pf.faces]
                records = [{"chip": name, **af.to_json()} for name, af in zip(names, pf.faces)]
                for name, af in zip(names[1:], pf.faces[1:]):  # extra faces here; the first (the job's own) goes last
                    dst = item.job.dst.with_name(name)
                    check_job_output(item.job, dst)  # a linked sub-folder leading outside the output: never through
                    atomic_write_bytes(dst, encode_image(af.chip, pil_format_for(dst), quality=quality))
                outs.append(Outcome("ok", pf.faces[0].chip, stats={**base, "chips": json.dumps(records)},
                                    dst=item.job.dst.with_name(names[0])))
            return outs

        # --all-faces: a photo is done when its row and every chip it names are there (its first chip may not be
        # <name>_face0: that face may be under --min-face)
        is_done = recorded_done(out_root / "align.csv", outputs=chip_files) if all_faces and resume else None
        report = run_folder_job(jobs, process, batch_size=batch_size, resume=resume, desc="aligning", verb="aligned",
                                stats_csv=out_root / "align.csv", quality=quality, progress=progress, is_done=is_done)
    finish()
    click.echo(report.summary("aligned"))
    click.echo(f"chips in {out_root}; transforms in {out_root / 'align.csv'}")
    if report.exit_code:
        raise SystemExit(report.exit_code)
