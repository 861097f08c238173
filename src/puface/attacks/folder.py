"""Cloaks as folders: cloak a folder of face images into a mirrored output folder (what `puface cloak`
runs, `cloak_folder`), and read cloaks made elsewhere from such a folder (`FolderCloaks`).

Streams through `puface.io.jobs.run_folder_job`: batches, each written (atomically) as soon as it
is done, resume by skipping finished outputs, a progress bar with images/s, per-file errors that
never stop the job, per-image statistics (DSSIM, PSNR, L-inf, embedding shift per surrogate) in
OUT/cloak_stats.csv and the attack's config in OUT/cloak_config.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..io.files import Listing
from ..io.jobs import (DryRun, FileJob, JobReport, LoadedImage, Outcome, begin_settings, check_settings, group_by_size,
                       input_identity, keep_input_mode, load_for_job, plan_mirror, recorded_done, resume_split,
                       run_folder_job)
from ..utils.errors import ImageReadError, PufaceError
from ..utils.images import image_to_tensor, tensor_to_image
from ..utils.paths import current_folder
from ..utils.version import __version__
from .base import CloakAttack

__all__ = [
    "FolderCloaks",
    "cloak_folder",
    "make_cloak_process",
    "output_namer",
    "TOOL_SUFFIX",
    "CONFIG_NAME",
    "STATS_NAME",
]

TOOL_SUFFIX = {"fawkes": "_cloaked", "lowkey": "_attacked"}  # the original tools' output names
CONFIG_NAME = "cloak_config.json"
STATS_NAME = "cloak_stats.csv"
FORMATS = ("png", "same")


def _surrogates_in(record: Path) -> list[dict] | None:
    """The surrogates a `puface cloak` record lists, or None when there is no readable record."""
    try:
        data = json.loads(record.read_text())
        return [s for s in data["attack"]["surrogates"] if isinstance(s, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FolderCloaks:
    """Cloaks made elsewhere (the original Fawkes or LowKey tools, `puface cloak`): a folder that mirrors
    the data tree, `root/<identity>/<file>`. For a natural image `<identity>/<stem>.<ext>` the first
    existing name among `patterns` is used; the defaults cover puface's and Fawkes' names
    (`<name>`, `<stem>.png`, `<stem>_cloaked.png`, `<stem>_<mode>_cloaked.png`) and LowKey's
    (`<stem>_attacked.png`). Placeholders: {name}, {stem}, {ext}.
    """

    DEFAULT_PATTERNS = (
        "{name}",
        "{stem}.png",
        "{stem}.jpg",
        "{stem}.jpeg",
        "{stem}.bmp",
        "{stem}.webp",
        "{stem}_cloaked.png",
        "{stem}_cloaked.jpg",
        "{stem}_cloaked{ext}",
        "{stem}_high_cloaked.png",
        "{stem}_mid_cloaked.png",
        "{stem}_low_cloaked.png",
        "{stem}_attacked.png",
    )

    def __init__(self, root: str | Path, patterns: Sequence[str] | None = None):
        self.root = Path(root).expanduser()  # (~ as a data root's: `data.datasets.find_data_root`)
        if not self.root.is_dir():
            where = "" if self.root.is_absolute() else (
                f" under the current folder {current_folder()}, which a relative path is read from (not the config "
                "file's folder)")
            raise PufaceError(f"{self.root}: folder of cloaked images not found{where}")
        recorded = () if patterns else self._recorded_pattern()
        self.patterns = tuple(patterns) if patterns else tuple(dict.fromkeys((*recorded, *self.DEFAULT_PATTERNS)))
        self.name = f"folder-{self.root.name}"

    def _recorded_pattern(self) -> tuple[str, ...]:
        """The output name `puface cloak` recorded for this folder (its `naming`), tried before the defaults: a
        folder redone with another format may still hold files under the old names."""
        try:
            record = json.loads((self.root / CONFIG_NAME).read_text())
            naming, kind = record["naming"], str(record["attack"].get("name", ""))
            suffix = TOOL_SUFFIX.get(kind, "_cloaked") if naming.get("tool_suffix") else ""
            return (f"{{stem}}{suffix}{'.png' if naming.get('format', 'png') == 'png' else '{ext}'}",)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return ()

    @property
    def recorded_surrogates(self) -> list[dict]:
        """The surrogates `puface cloak` recorded in ROOT/cloak_config.json (name, weights fingerprint, ...), or,
        without one, in the identity folders' own records (each person's folder cloaked by its own `puface cloak`
        run) when they all name the same surrogates; empty for folders made by other tools (no record), unreadable
        records or identity folders cloaked against different surrogates."""
        top = _surrogates_in(self.root / CONFIG_NAME)
        if top is not None:
            return top
        folders = sorted(d for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []
        found = [s for s in (_surrogates_in(d / CONFIG_NAME) for d in folders) if s is not None]
        if not found or any(json.dumps(f, sort_keys=True) != json.dumps(found[0], sort_keys=True) for f in found):
            return []
        return found[0]

    def _candidates(self, natural: Path, data_root: Path) -> list[Path]:
        rel = Path(natural).relative_to(data_root)
        folder = self.root / rel.parent
        return list(
            dict.fromkeys(folder / pat.format(name=rel.name, stem=rel.stem, ext=rel.suffix) for pat in self.patterns)
        )

    def find(self, natural: Path, data_root: Path) -> Path | None:
        """The cloaked file for `natural` (a file under `data_root`), or None when there is none."""
        return next((c for c in self._candidates(natural, data_root) if c.is_file()), None)

    def path_for(self, natural: Path, data_root: Path) -> Path:
        """The cloaked file for `natural`; raises `PufaceError` naming what was tried."""
        found = self.find(natural, data_root)
        if found is None:
            cands = self._candidates(natural, data_root)
            raise PufaceError(f"no cloaked version of {Path(natural).relative_to(data_root)} in {cands[0].parent} "
                              f"(tried {', '.join(c.name for c in cands)})")
        return found



def output_namer(attack_kind: str, fmt: str = "png", tool_suffix: bool = False) -> Callable[[Path], Path]:
    """rel path -> output rel path: `fmt` "png" (lossless, default) or "same" (keep the extension);
    `tool_suffix` appends Fawkes' `_cloaked` / LowKey's `_attacked` to the stem."""
    if fmt not in FORMATS:
        raise PufaceError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    suffix = TOOL_SUFFIX.get(attack_kind, "_cloaked") if tool_suffix else ""

    def rename(rel: Path) -> Path:
        ext = ".png" if fmt == "png" else rel.suffix
        return rel.with_name(f"{rel.stem}{suffix}{ext}")

    return rename


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def make_cloak_process(attack: CloakAttack, targets_by_src: dict[Path, list[torch.Tensor]] | None = None):
    """A `run_folder_job` batch function: decoded images -> cloaked uint8 images + per-image stats.

    Images of different sizes in one batch are cloaked in same-size groups. `targets_by_src`:
    targeted Fawkes' per-surrogate target embeddings for each input file.
    """

    def process(items: list[LoadedImage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        for (h, w), idx in group_by_size(items).items():
            if min(h, w) < attack.min_side:
                for i in idx:
                    outcomes[i] = Outcome.fail(
                        f"image is {w}x{h} px; {attack.name} needs at least {attack.min_side}x{attack.min_side}"
                    )
                continue
            x = torch.stack([image_to_tensor(np.array(items[i].image)) for i in idx])  # writable copy
            kw: dict[str, Any] = {}
            if targets_by_src is not None:
                per_image = [targets_by_src[items[i].job.src] for i in idx]
                kw["targets"] = [torch.stack([t[m] for t in per_image]) for m in range(len(attack.surrogates))]
            res = attack.run(x, quantize_output=True, **kw)
            for k, (i, row) in enumerate(zip(idx, res.rows())):
                outcomes[i] = Outcome.ok(tensor_to_image(res.images[k]), **{key: _round(v) for key, v in row.items()})
        return outcomes  # type: ignore[return-value]  # no None left: the size groups cover every item

    return process


def ray_cloak_process(
    attack: CloakAttack | Callable[[], CloakAttack],
    align: bool = False,
    largest_face: bool = False,
    targets_by_src: dict[Path, list[torch.Tensor]] | None = None,
    rotations: str = "auto",
) -> Callable:
    """The cloak batch function of a folder job (`make_cloak_process`; with `align_adapter` when align) for an attack,
    or for a zero-argument attack factory (built in the Ray actor, so the face models load there); `functools.partial`
    of this is the Ray engine's factory. Outputs keep an input's alpha channel; a grayscale input's cloak is RGB
    (`keep_input_mode(gray=False)`). rotations: with align, as `align.FaceDetector`."""
    if not isinstance(attack, CloakAttack):
        attack = attack()
    process = make_cloak_process(attack, targets_by_src)
    if align:
        from ..align import align_adapter

        process = align_adapter(process, chip_size=150, no_face="skip", largest_face=largest_face, rotations=rotations)
    return keep_input_mode(process, gray=False)


def _identity_of(job: FileJob, in_root: Path) -> str:
    """The user a file belongs to: its first folder under IN (or IN's own name for a flat folder)."""
    return job.rel.parts[0] if len(job.rel.parts) > 1 else in_root.name


def _select_targets(attack: CloakAttack, jobs: list[FileJob], in_root: Path, pool_dir: Path, progress: bool):
    """Per input file, the target embeddings of its user's farthest pool identity; and {user: target}."""
    from .targets import TargetPool, embed_files

    pool = TargetPool.from_folder(pool_dir, attack.surrogates, progress=progress)
    users: dict[str, list[FileJob]] = {}
    for j in jobs:
        users.setdefault(_identity_of(j, in_root), []).append(j)
    chosen: dict[str, str] = {}
    by_src: dict[Path, list[torch.Tensor]] = {}
    for user, ujobs in sorted(users.items()):
        embs, kept, _ = embed_files([j.src for j in ujobs], attack.surrogates, desc=f"embedding {user}")
        if not kept:
            continue  # unreadable files fail later, one line each
        target = pool.farthest(embs, exclude=[user])
        chosen[user] = target
        t = pool.targets_for(target)
        for j in ujobs:
            by_src[j.src] = t
    return by_src, chosen


def cloak_folder(
    in_path: str | Path,
    out_path: str | Path,
    attack: CloakAttack,
    *,
    fmt: str = "png",
    tool_suffix: bool = False,
    batch_size: int = 16,
    resume: bool = True,
    align: bool = False,
    largest_face: bool = False,
    target_pool: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    io_workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    reference: str | Path | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    attack_factory: Callable[[], CloakAttack] | None = None,
    rotations: str = "auto",
    dry_run: bool = False,
) -> JobReport | DryRun:
    """Cloak every image under `in_path` into the mirrored tree `out_path`; returns the `JobReport`.

    A group attack (OPOM, unlearnable examples) cloaks each identity (first-level folder) as one group:
    OPOM fits one mask per identity; unlearnable examples learn every other identity under `in_path` (or
    under `reference`, identity folders of other people, when given) as the other classes. A group is
    redone whole unless all its outputs exist.

    fmt: "png" (default; lossless, so the cloak survives) or "same" (the input's format; a JPEG
    re-encode weakens the cloak). tool_suffix: name outputs `<stem>_cloaked` (Fawkes) or
    `<stem>_attacked` (LowKey). align: photos rather than chips: detect faces, cloak each aligned
    150x150 chip and paste it back (needs `puface.align`); photos without a face are skipped; rotations ("auto" or
    "off"): also look for the faces of a photo without an upright one in the photo turned (`align.FaceDetector`).
    target_pool: targeted Fawkes: a folder of identity sub-folders to choose each user's target from
    (a user is a first-level folder under IN).
    engine: "local", or "ray" (a Ray Data pipeline, `puface.io.raydata`: `workers` actors on the cluster at
    `address`); `attack_factory`, a picklable zero-argument callable that builds the same attack, lets
    each actor build it (else the attack object is shipped to them).
    dry_run: plan and check as the job would (the attack built, no image cloaked, no target chosen), write nothing
    (no folder, record, lock or stats) and return what it would do (`io.jobs.DryRun`).
    """
    from ..align.detect import rotations_entry  # here: the align package loads when a cloak job runs

    in_path, out_path = Path(in_path), Path(out_path)
    if engine not in ("local", "ray"):
        raise PufaceError(f"unknown engine {engine!r}; choose local or ray")
    say = log or (lambda m: print(m, file=sys.stderr))
    targeted = bool(getattr(getattr(attack, "settings", None), "targeted", False))
    if targeted and target_pool is None:
        raise PufaceError("targeted Fawkes needs --target-pool DIR (identity folders to pick each user's target from)")
    if target_pool is not None and not targeted:
        raise PufaceError("--target-pool is only used by targeted Fawkes (--targeted)")
    if targeted and engine == "ray":
        raise PufaceError(
            "--targeted runs on the local engine only (targets are chosen per user over the whole folder)"
        )
    if targeted and align:
        raise PufaceError(
            "--targeted with --align is not supported yet; cut aligned chips first (puface align), then cloak them"
        )
    # this process's share; two inputs (any process's) that would get one output name are refused as they stream past
    listing = Listing() if dry_run else None
    jobs = plan_mirror(in_path, out_path, rename=output_namer(attack.kind, fmt, tool_suffix), rank=rank,
                       world_size=world_size, clash="rename one, or use --format same", listing=listing)
    if fmt == "same" and any(j.dst.suffix.lower() in (".jpg", ".jpeg", ".webp") for j in jobs):
        say(
            "warning: writing lossy JPEG/WebP outputs (--format same): re-encoding weakens the cloak; "
            "PNG keeps it intact"
        )

    record = {
        "puface_version": __version__,
        "input": input_identity(in_path),
        "attack": attack.config,
        # every setting, those the cache key leaves out at an earlier default too (unlearnable's stop_on / start)
        "settings": attack.recorded_settings(),
        "naming": {"format": fmt, "tool_suffix": tool_suffix},
        "align": {"align": align, "largest_face": largest_face, **(rotations_entry(rotations) if align else {})},
        # photos the outputs were optimised against (group attacks' reference identities, targeted Fawkes' pool)
        "reference": input_identity(reference) if reference is not None else None,
        "target_pool": input_identity(target_pool) if targeted and target_pool is not None else None,
    }
    config_path = out_path / CONFIG_NAME
    keys = ("attack", "naming", "align", "reference", "target_pool")
    check_settings(config_path, record, resume=resume, kind="cloaking", keys=keys)

    targets_by_src = None
    if targeted and target_pool is not None and not dry_run:  # (targeted without a pool was refused above)
        base = in_path if in_path.is_dir() else in_path.parent
        targets_by_src, chosen = _select_targets(attack, jobs, base, Path(target_pool), progress)
        record["targets"] = {"pool": str(target_pool), "user_to_target": chosen}
        for user, t in chosen.items():
            say(f"target for {user}: {t}")

    group = getattr(attack, "group", False)
    if group and (align or world_size > 1 or engine != "local"):
        raise PufaceError(
            f"{attack.name} cloaks each identity folder as one group: cut aligned chips first (puface align) "
            "and run it in one process (no --align, --rank/--world-size, --engine ray)"
        )
    if reference is not None and not group:
        raise PufaceError("--reference is only used by group attacks (opom, unlearnable)")
    if align:  # a missing dlib must not leave a record that refuses the next run without --align
        from ..align import require_alignment

        require_alignment()
    stats_name = STATS_NAME if world_size <= 1 else f"cloak_stats.rank{rank}.csv"
    if dry_run:
        return _dry_run(jobs, in_path, out_path, attack, record, listing, resume, stats_name, rank, world_size)
    finish = begin_settings(config_path, record, resume=resume, kind="cloaking", keys=keys, rank=rank,
                            world_size=world_size)

    with finish.on_failure():
        if group:
            report = _cloak_groups(jobs, in_path, out_path, attack, reference_dir=reference, resume=resume,
                                   io_workers=io_workers, progress=progress, say=say)
            finish()
            return report
        done = _done_test(out_path)
        if engine == "ray":
            from functools import partial

            from ..io.raydata import run_ray_job

            factory = partial(ray_cloak_process, attack_factory or attack, align, largest_face, rotations=rotations)
            gpus = 1.0 if torch.device(attack.device).type == "cuda" else 0.0
            report = run_ray_job(jobs, factory, batch_size=batch_size, resume=resume, address=address, workers=workers,
                                 gpus_per_worker=gpus, desc=f"cloaking ({attack.name})", verb="cloaked",
                                 stats_csv=out_path / stats_name, progress=progress, log=log, is_done=done)
            finish()
            return report
        process = ray_cloak_process(attack, align, largest_face, targets_by_src, rotations=rotations)
        report = run_folder_job(
            jobs, process, batch_size=batch_size, resume=resume, desc=f"cloaking ({attack.name})", verb="cloaked",
            stats_csv=out_path / stats_name, io_workers=io_workers, progress=progress, is_done=done,
        )
    finish()
    return report


def _dry_run(jobs: list[FileJob], in_path: Path, out_path: Path, attack: CloakAttack, record: dict,
             listing: Listing | None, resume: bool, stats_name: str, rank: int, world_size: int) -> DryRun:
    """`cloak_folder(dry_run=True)`'s answer: the jobs a resume skips by the job's own tests (a group attack's
    `_group_done` per identity, else `resume_split` as the runners call it), and the settings `record` says."""
    from ..align.detect import recorded_rotations  # here: the align package loads when a cloak job runs

    notes = []
    if getattr(attack, "group", False):
        n_done = failing = 0
        if resume:
            for gjobs in _group_jobs(jobs, in_path).values():
                unreadable = _group_done(gjobs, _group_done_test(out_path))
                if unreadable is not None:
                    n_done += len(gjobs) - len(unreadable)
                    failing += len(unreadable)
        if failing:
            notes.append(f"({failing} unreadable image(s) of identities already cloaked: listed as failed, not "
                         "cloaked)")
        notes.append("(each identity folder is cloaked as one group, redone whole unless all its images are done)")
    else:
        n_done = resume_split(jobs, resume, _done_test(out_path), out_path / stats_name)[1]
    naming = record["naming"]
    al = record["align"]
    settings = {
        "attack": f"{attack.name} ({record['attack'].get('algorithm', '')})",
        "surrogates": ", ".join(f"{s.get('name')} {s.get('weights_sha256_16', '')}".strip()
                                for s in record["attack"].get("surrogates", [])),
        "seed": str(record["attack"].get("seed")),
        "outputs": f"{'PNG' if naming['format'] == 'png' else 'same format as the input'}"
                   f"{', tool names' if naming['tool_suffix'] else ''}",
        "align": DryRun.align_text(al.get("align"), recorded_rotations(al), al.get("largest_face")),
        **{k: str(record[k]) for k in ("reference", "target_pool") if record.get(k)},
        "device": str(attack.device),
    }
    return DryRun("photos" if al.get("align") else "chips", len(jobs), n_done, settings, listing, rank=rank,
                  world_size=world_size, notes=notes, resume=resume)


def _done_test(out_path: Path) -> Callable[[FileJob], bool] | None:
    """Which outputs a resume takes for done: cloaked with its row in any process's stats (runs with other world sizes
    wrote other files; None when none holds rows: the runner's test, the output alone, applies)."""
    return recorded_done([out_path / STATS_NAME, *sorted(out_path.glob("cloak_stats.rank*.csv"))])


def _group_done_test(out_path: Path) -> Callable[[FileJob], bool]:
    """`_done_test` of a group attack (one process): cloaked with its row in OUT's stats, else the output alone."""
    return recorded_done(out_path / STATS_NAME) or (lambda j: j.dst.is_file())


def _group_jobs(jobs: list[FileJob], in_path: Path) -> dict[str, list[FileJob]]:
    """`jobs` by identity (`_identity_of`), in listing order: a group attack's groups."""
    base = in_path if in_path.is_dir() else in_path.parent
    groups: dict[str, list[FileJob]] = {}
    for j in jobs:
        groups.setdefault(_identity_of(j, base), []).append(j)
    return groups


def _group_done(gjobs: list[FileJob], done: Callable[[FileJob], bool]) -> list[tuple[Path, str]] | None:
    """With resume: whether a group is done (every readable photo cloaked): the (input, reason) of its photos that
    cannot be decoded ([] when none), None when the group is to be cloaked (decodes its missing photos only when
    some are done)."""
    missing = [j for j in gjobs if not done(j)]
    return _unreadable(missing) if len(missing) < len(gjobs) else None


def _unreadable(jobs: list[FileJob]) -> list[tuple[Path, str]] | None:
    """(input, reason) for each of `jobs` when none of them can be decoded; None as soon as one can."""
    out = []
    for j in jobs:
        try:
            load_for_job(j)
        except ImageReadError as e:
            out.append((j.src, e.reason))
            continue
        return None
    return out


def _cloak_groups(jobs: list[FileJob], in_path: Path, out_path: Path, attack: CloakAttack, *, reference_dir,
                  resume: bool, io_workers: int, progress: bool, say) -> JobReport:
    """`cloak_folder` for group attacks: one identity folder at a time, each a single attack call."""
    from ..data.loading import load_images
    from .group import Reference

    groups = _group_jobs(jobs, in_path)
    ref_items: list[tuple[Path, str]] = []
    if reference_dir is not None:
        from ..data.layout import scan_identities

        ref_items = [(im.path, im.identity) for im in scan_identities(reference_dir, min_images=1).images]
    elif getattr(attack, "needs_classes", False):
        ref_items = [(j.src, ident) for ident, js in groups.items() for j in js]
    ref_images = ref_labels = None
    if ref_items:
        ref_images, kept, errors = load_images([p for p, _ in ref_items])
        for e in errors:
            say(f"reference: skipping unreadable image {e}")
        ref_labels = np.array([ref_items[k][1] for k in kept], dtype=object)
    total = JobReport(total=len(jobs))
    # done: cloaked and its stats row written (a kill between the two left a cloak without its row)
    done = _group_done_test(out_path)
    for ident, gjobs in groups.items():
        if resume:
            unreadable = _group_done(gjobs, done)
            if unreadable is not None:  # every readable photo of the group is cloaked: the group is done
                total.resumed += len(gjobs) - len(unreadable)
                total.failed += unreadable
                continue
        reference = None
        if ref_images is not None and ref_labels is not None:  # set together
            others = np.flatnonzero(ref_labels != ident)
            reference = Reference(ref_images[torch.from_numpy(others)], ref_labels[others])

        def process(items: list[LoadedImage], ident=ident, reference=reference) -> list[Outcome]:
            sizes = {it.image.shape[:2] for it in items}
            if len(sizes) > 1:
                return [Outcome.fail(f"{attack.name} needs every image of {ident} at one size, found {sorted(sizes)}")
                        for _ in items]
            x = torch.stack([image_to_tensor(np.array(it.image)) for it in items])
            res = attack.run(x, labels=[ident] * len(x), reference=reference, quantize_output=True)
            return [Outcome.ok(tensor_to_image(res.images[k]), **{key: _round(v) for key, v in row.items()})
                    for k, row in enumerate(res.rows())]

        rep = run_folder_job(
            gjobs,
            keep_input_mode(process, gray=False),
            batch_size=len(gjobs),
            resume=False,
            desc=f"cloaking {ident} ({attack.name})",
            verb="cloaked",
            stats_csv=out_path / STATS_NAME,
            io_workers=io_workers,
            progress=progress,
        )
        total.written += rep.written
        total.copied += rep.copied
        total.skipped += rep.skipped
        total.failed += rep.failed
        total.seconds += rep.seconds
    return total
