"""The streaming folder job: mirroring, resume, broken files, atomic outputs, refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from puface.utils.errors import PufaceError
from puface.io.images import read_image, write_image
from puface.io.jobs import Outcome, plan_mirror, run_folder_job, shard


def invert(items):
    return [Outcome.ok(255 - it.image, mean=float(it.image.mean())) for it in items]


def make_inputs(root: Path) -> None:
    rng = np.random.default_rng(0)
    write_image(root / "a" / "x.png", rng.integers(0, 256, (8, 9, 3), dtype=np.uint8))
    write_image(root / "a" / "y.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    write_image(root / "b" / "z.webp", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), quality=100)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "b" / "empty.png").write_bytes(b"")


def test_mirror_names_formats_sizes_and_failures(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src)
    jobs = plan_mirror(src, out)
    assert sorted(str(j.rel) for j in jobs) == ["a/x.png", "a/y.jpg", "b/broken.jpg", "b/empty.png", "b/z.webp"]
    rep = run_folder_job(jobs, invert, batch_size=2, progress=False, stats_csv=out / "stats.csv", log=lambda m: None)
    assert rep.written == 3 and len(rep.failed) == 2 and rep.exit_code == 1
    failed = {p.name: why for p, why in rep.failed}
    assert "empty file" in failed["empty.png"]
    assert any(w in failed["broken.jpg"] for w in ("corrupt", "truncated", "not an image"))
    assert "FAILED (2)" in rep.summary()
    x = read_image(out / "a" / "x.png")
    assert np.array_equal(x, 255 - read_image(src / "a" / "x.png"))  # PNG: lossless
    with Image.open(out / "a" / "y.jpg") as im:
        assert im.format == "JPEG" and im.size == (16, 16)
    with Image.open(out / "b" / "z.webp") as im:
        assert im.format == "WEBP" and im.size == (12, 10)
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert sorted(r["file"] for r in rows) == ["a/x.png", "a/y.jpg", "b/z.webp"]
    assert not list(out.rglob(".*.tmp"))  # no temporary files left


def test_resume_skips_finished_outputs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src)
    jobs = plan_mirror(src, out)
    run_folder_job(jobs, invert, progress=False, log=lambda m: None)
    calls = []

    def counting(items):
        calls.extend(it.job.rel for it in items)
        return invert(items)

    rep = run_folder_job(jobs, counting, progress=False, log=lambda m: None)
    assert rep.resumed == 3 and rep.written == 0
    assert calls == []  # only the two broken files were decoded again, and they failed before processing
    assert len(rep.failed) == 2


def test_exception_in_batch_isolated_to_one_image(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src)

    def picky(items):
        if any(it.job.rel.name == "y.jpg" for it in items):
            raise RuntimeError("boom on y")
        return invert(items)

    rep = run_folder_job(plan_mirror(src, out), picky, batch_size=8, progress=False, log=lambda m: None)
    assert rep.written == 2
    assert any(p.name == "y.jpg" and "boom on y" in why for p, why in rep.failed)


def test_copy_and_skip_outcomes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src)

    def decide(items):
        return [
            Outcome.copy("no face found") if it.job.rel.name == "x.png" else Outcome.skip("too small") for it in items
        ]

    rep = run_folder_job(plan_mirror(src, out), decide, progress=False, log=lambda m: None)
    assert (out / "a" / "x.png").read_bytes() == (src / "a" / "x.png").read_bytes()
    assert not (out / "a" / "y.jpg").exists()
    assert len(rep.copied) == 1 and len(rep.skipped) == 2


def test_exif_kept_and_orientation_reset(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    a = np.zeros((32, 16, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "CameraMaker"
    (src / "p").mkdir(parents=True)
    Image.fromarray(a).save(src / "p" / "r.jpg", exif=exif.tobytes())
    run_folder_job(plan_mirror(src, out), lambda items: [Outcome.ok(it.image) for it in items], progress=False)
    with Image.open(out / "p" / "r.jpg") as im:
        assert im.size == (32, 16)  # pixels were rotated upright
        e = im.getexif()
        assert e.get(0x0112) == 1 and e.get(0x010F) == "CameraMaker"


def test_refusals(tmp_path):
    src = tmp_path / "in"
    make_inputs(src)
    with pytest.raises(PufaceError, match="is the input folder"):
        plan_mirror(src, src)
    with pytest.raises(PufaceError, match="inside the output folder"):
        plan_mirror(src, tmp_path)
    with pytest.raises(PufaceError, match="no such"):
        plan_mirror(tmp_path / "nope", tmp_path / "o")


def test_empty_input_and_a_file_as_output_are_refused_up_front(tmp_path):
    """An input folder without images is an error (a mistyped path), as is an output 'folder' that is a
    file: one line each, before anything is written, not '0 images' or one failure per image."""
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(PufaceError, match="empty: no images found \\(expected .jpg.*.tiff files\\)"):
        plan_mirror(tmp_path / "empty", tmp_path / "o")
    src = tmp_path / "in"
    make_inputs(src)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        with pytest.raises(PufaceError, match="afile.txt.* not a folder"):
            plan_mirror(src, out)
        with pytest.raises(PufaceError, match="not a folder"):
            plan_mirror(src / "a" / "x.png", out)
    assert afile.read_text() == "x"


def test_tiff_is_mirrored_and_gif_is_listed_as_failed(tmp_path):
    """TIFF is read and written like the other formats; a GIF (or HEIC, ...) is not read but listed, so
    nothing under IN is passed over silently."""
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    src.mkdir()
    Image.fromarray(a).save(src / "t.tif")
    Image.fromarray(a).save(src / "g.gif")
    (src / "notes.txt").write_text("not an image: not planned")
    jobs = plan_mirror(src, out)
    assert sorted(j.rel.name for j in jobs) == ["g.gif", "t.tif"]
    rep = run_folder_job(jobs, invert, progress=False, log=lambda m: None)
    assert rep.total == 2 and rep.written == 1 and rep.exit_code == 1
    assert "g.gif: unsupported image format .gif" in rep.summary()
    with Image.open(out / "t.tif") as im:
        assert im.format == "TIFF" and np.array_equal(np.asarray(im), 255 - a)
    assert not (out / "g.gif").exists()


def test_output_inside_input_is_refused(tmp_path):
    """An output folder inside the input would be read as input by the next run over the input (and taken for
    an identity by a data scan): refused before anything is written."""
    src = tmp_path / "in"
    make_inputs(src)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for out in (src / "purified", src / "a" / "deeper" / "out"):
        with pytest.raises(PufaceError, match="lies inside the input folder"):
            plan_mirror(src, out)
    with pytest.raises(PufaceError, match="input folder .* lies inside the output folder"):
        plan_mirror(src, tmp_path)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nothing written


def test_rename_and_single_file(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src)
    jobs = plan_mirror(src / "a" / "x.png", out, rename=lambda rel: rel.with_name(rel.stem + "_cloaked.png"))
    assert [j.dst for j in jobs] == [out / "x_cloaked.png"]


def test_shard_partitions():
    jobs = list(range(10))
    parts = [shard(jobs, r, 3) for r in range(3)]  # type: ignore[arg-type]
    assert sorted(sum(parts, [])) == jobs and all(parts)
