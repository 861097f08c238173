"""`puface data ...`: inspect identity folders, fetch the embedded default data."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click


@click.group("data")
def data() -> None:
    """Inspect identity folders (ROOT/<identity>/<image>), list the named data sets, fetch the default 'johns' set."""


@data.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--min-images",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Ignore identities with fewer images.",
)
@click.option(
    "--decode/--no-decode",
    default=True,
    show_default=True,
    help="Decode every image to find unreadable files (--no-decode reads headers only: faster).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the largest identities to list.",
)
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Decoding threads.")
def info(root: Path, min_images: int, decode: bool, top: int, workers: int) -> None:
    """Print identities, images, image sizes and unreadable files of ROOT.

    ROOT is a folder of identity sub-folders (ROOT/<identity>/<image>, or FaceScrub's
    download/<identity>/face/<image>). Exit code 1 when some files cannot be read.
    """
    from tqdm import tqdm

    from ..data.layout import scan_identities
    from ..io.images import image_info, open_image
    from ..utils.errors import ImageReadError

    ds = scan_identities(root, min_images=min_images)
    groups = ds.by_identity()

    def check(path: Path):
        try:
            if decode:
                im = open_image(path)
                return path, im.size, None
            w, h, _ = image_info(path)
            return path, (w, h), None
        except ImageReadError as e:
            return path, None, e.reason

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(check, [im.path for im in ds.images]), total=len(ds), desc="reading",
                            unit="img", leave=False, disable=len(ds) < 200))
    sizes = Counter(f"{w}x{h}" for _, s, _ in results if s for (w, h) in [s])
    bad = [(p, why) for p, s, why in results if why]
    counts = sorted((len(v) for v in groups.values()), reverse=True)
    layout = "FaceScrub download/<id>/face/<img>" if ds.layout == "facescrub" else "<id>/<img>"
    click.echo(f"folder:      {ds.root}  (layout: {layout})")
    click.echo(f"identities:  {len(groups):,}")
    click.echo(f"images:      {len(ds):,}")
    click.echo(f"per identity: min {counts[-1]}, median {counts[len(counts) // 2]}, max {counts[0]}")
    for thr in (5, 10, 20):
        click.echo(f"  identities with >= {thr} images: {sum(c >= thr for c in counts)}")
    largest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    click.echo("largest:     " + ", ".join(f"{k} ({len(v)})" for k, v in largest))
    common = ", ".join(f"{s} ({n:,})" for s, n in sizes.most_common(5))
    click.echo(f"image sizes: {len(sizes)} distinct; most common: {common or '-'}")
    click.echo(f"unreadable:  {len(bad)}")
    for p, why in bad:
        click.echo(f"  {p}: {why}")
    if bad:
        raise click.exceptions.Exit(1)


@data.command("fetch")
@click.argument("name")
@click.option(
    "--url",
    default=None,
    help="lfw: where to download lfw-deepfunneled.tgz from (default: the official LFW site; "
    "a mirror must serve the identical file).",
)
@click.option(
    "--tarball",
    type=click.Path(path_type=Path),
    default=None,
    help="lfw: use this lfw-deepfunneled.tgz instead of downloading (offline machines).",
)
@click.option("--md5", default=None, help="lfw: expected md5 of the archive (default: the published one).")
@click.option(
    "--sha256",
    default=None,
    help="lfw: expected sha256 of the archive (instead of the published md5; with --md5 both are checked).",
)
@click.option(
    "--template",
    "templates",
    type=click.Choice(["dlib150", "arcface112"]),
    multiple=True,
    help="lfw: chip layouts to cut (repeatable): dlib150 -> lfw-chips150/, arcface112 -> lfw-arcface112/. "
    "Default: dlib150.",
)
@click.option(
    "--min-images", type=int, default=5, show_default=True, help="lfw: keep the people with at least this many photos."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="lfw: folder for the archive, the photos and the chips (default: $PUFACE_DATA, else $PUFACE_HOME/data).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.pass_context
def fetch(
    ctx: click.Context,
    name: str,
    url: str | None,
    tarball: Path | None,
    md5: str | None,
    sha256: str | None,
    templates: tuple[str, ...],
    min_images: int,
    out_dir: Path | None,
    progress: bool,
) -> None:
    """Get the data set NAME and print where it is (`puface data list` shows the names).

    'johns' is dlib's example set (5 people x 11 aligned 150x150 chips, public-domain dedication) from
    Debian's libdlib19.1 package: taken from /usr/share/doc if installed, otherwise downloaded with
    `apt-get download` and unpacked into the puface cache ($PUFACE_HOME).

    'lfw' downloads the official deep-funneled LFW archive (111 MB; resumable: run the command again after an
    interruption; md5-verified), unpacks it, keeps the people with >= --min-images photos (in lfw-photos/, the
    published-photo configs' [data] photos) and cuts their face chips with `puface align --rotations off` (LFW is
    upright) into lfw-chips150/ (and lfw-arcface112/ with --template arcface112), where configs find them by name.
    Offline: download the archive elsewhere and pass --tarball. For a data set puface cannot fetch, it says how to
    get it.
    """
    from ..data.datasets import DATASETS, find_data_root
    from ..utils.errors import PufaceError

    if name == "lfw":
        return _fetch_lfw(ctx, url, tarball, md5, sha256, templates or ("dlib150",), min_images, out_dir, progress)
    if any(v is not None for v in (url, tarball, md5, sha256, out_dir)) or templates:
        raise PufaceError(
            "--url, --tarball, --md5, --sha256, --template and --out are options of 'puface data fetch lfw'"
        )
    if name not in DATASETS:
        raise PufaceError(f"unknown data set {name!r}; known: lfw, {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    found = find_data_root(name)  # where configs and --data would find it: nothing to fetch
    if found is not None:
        path = found
    elif ds.fetch is None:
        raise PufaceError(f"puface cannot fetch {name!r} itself. It is {ds.description}. To get it: {ds.how_to_get}.")
    else:
        path = ds.fetch()
    n = sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    click.echo(f"{name}: {'already here, ' if found else ''}{n} images in {path}")


CHIP_SETS = {"dlib150": "lfw-chips150", "arcface112": "lfw-arcface112"}


def _fetch_lfw(ctx: click.Context, url: str | None, tarball: Path | None, md5: str | None, sha256: str | None,
               templates: tuple[str, ...], min_images: int, out_dir: Path | None, progress: bool) -> None:
    from ..data.fetch import (
        LFW_ARCHIVE,
        LFW_MD5,
        LFW_URL,
        data_dir,
        download,
        extract_tar,
        offline_help,
        select_identities,
    )
    from ..utils.errors import PufaceError
    from ..align import require_alignment
    from .align_cmd import align

    require_alignment()  # the chips need dlib: say so before a 111 MB download, not after it
    out = out_dir or data_dir()
    out.mkdir(parents=True, exist_ok=True)
    md5 = md5 or (None if sha256 else LFW_MD5)
    if tarball is not None:
        if url is not None:
            raise PufaceError("pass --url or --tarball, not both")
        if not tarball.is_file():
            raise PufaceError(f"{tarball}: no such file (the LFW archive {LFW_ARCHIVE})")
        from ..data.fetch import file_digest

        for algo, want in (("md5", md5), ("sha256", sha256)):
            if want and file_digest(tarball, algo).lower() != want.lower():
                raise PufaceError(f"{tarball}: {algo} checksum mismatch (expected {want}); is it {LFW_ARCHIVE}?")
        archive = tarball
    else:
        src = url or LFW_URL
        click.echo(f"downloading {src} -> {out / LFW_ARCHIVE}", err=True)
        try:
            archive = download(src, out / LFW_ARCHIVE, md5=md5, sha256=sha256, progress=progress,
                               log=lambda m: click.echo(m, err=True))
        except PufaceError as e:
            if any(
                w in str(e) for w in ("checksum", "interrupted", "cannot write", "cannot resume")
            ):  # offline help: no
                raise
            raise PufaceError(f"{e}. {offline_help(url=src)}") from None
    click.echo(f"unpacking {archive}", err=True)
    photos = extract_tar(archive, out / ".lfw-unpacked")
    tops = [p for p in photos.iterdir() if p.is_dir()]
    people = tops[0] if len(tops) == 1 and not any(p.is_file() for p in tops[0].iterdir()) else photos
    chosen = out / ("lfw-photos" if min_images == 5 else f"lfw-photos-min{min_images}")
    n_ids, n_img = select_identities(people, chosen, min_images)
    if n_ids == 0:
        raise PufaceError(f"{archive}: no person with >= {min_images} photos (expected <name>/<name>_0001.jpg folders)")
    click.echo(f"{n_ids} people with >= {min_images} photos ({n_img} photos)", err=True)
    for t in templates:
        dst = out / (CHIP_SETS[t] if min_images == 5 else f"{CHIP_SETS[t]}-min{min_images}")  # beside lfw-photos-minN
        click.echo(f"cutting {t} chips into {dst}", err=True)
        try:
            # upright only: LFW's photos are upright, and the published numbers were made on chips cut so
            ctx.invoke(align, in_path=chosen, out_root=dst, template=t, progress=progress, rotations="off")
        except SystemExit as e:  # align exits 1 when some photos had no usable face: listed, not fatal here
            if e.code not in (0, 1, None):
                raise
        n = sum(1 for p in dst.rglob("*.jpg"))
        click.echo(f"{dst.name}: {n} chips in {dst}")


@data.command("list")
def list_cmd() -> None:
    """The data sets configs can name, where each is found here, and how to get the missing ones.

    A config's [data] root (or --data) is a folder, or a name looked up as $PUFACE_DATA/<name>."""
    from ..data.datasets import DATASETS, data_home, find_data_root

    home = data_home()
    click.echo(f"$PUFACE_DATA: {home if home is not None else '(not set)'}")
    for name, ds in sorted(DATASETS.items()):
        found = find_data_root(name)
        where = str(found) if found is not None else f"not here; {ds.how_to_get}"
        click.echo(f"{name:14s} {ds.description}")
        click.echo(f"{'':14s} {where}")


@data.command("split")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--train-fraction",
    type=float,
    default=0.7,
    show_default=True,
    help="Share of each identity's images used for training.",
)
@click.option(
    "--min-train", type=click.IntRange(min=0), default=1, show_default=True, help="Fewest training images per identity."
)
@click.option(
    "--min-test", type=click.IntRange(min=0), default=1, show_default=True, help="Fewest test images per identity."
)
@click.option(
    "--max-per-identity", type=click.IntRange(min=1), default=None, help="Cap images per identity (seeded choice)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of the cap.")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default=None, help="Write the split as CSV (identity,path,part)."
)
def split(
    root: Path,
    train_fraction: float,
    min_train: int,
    min_test: int,
    max_per_identity: int | None,
    seed: int,
    output: Path | None,
) -> None:
    """Show (and optionally save) the seeded per-identity train/test split of ROOT."""
    import csv
    import io

    from ..data.layout import scan_identities
    from ..data.split import split_dataset
    from ..io.images import atomic_write_bytes

    ds = scan_identities(root, max_per_identity=max_per_identity, seed=seed)
    sp = split_dataset(ds, train_fraction=train_fraction, min_train=min_train, min_test=min_test, seed=seed)
    click.echo(
        f"{len(sp.identities())} identities: {len(sp.train)} training and {len(sp.test)} test images (seed {seed})"
    )
    if output:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["identity", "path", "part"])
        for part, items in (("train", sp.train), ("test", sp.test)):
            for im in items:
                w.writerow([im.identity, str(im.path), part])
        atomic_write_bytes(output, buf.getvalue().encode("utf-8", "surrogateescape"))  # a path as its bytes
        click.echo(f"written: {output}")
