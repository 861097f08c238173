"""Robust image I/O: modes, EXIF, broken files, size limit, atomic writes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from puface.utils.errors import ImageReadError, ImageWriteError
from puface.io.images import read_image, write_image
from puface.utils.images import image_to_tensor, tensor_to_image


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_rgb_roundtrip_png(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    write_image(p, a)
    assert np.array_equal(read_image(p), a)


@pytest.mark.parametrize(
    "mode,make,expect",
    [
        ("1", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        ("L", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
        ("LA", lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # transparent black on white
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127)),
        ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        ("I;16", lambda: Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
        ("I", lambda: Image.new("I", (4, 4), 32896), (128, 128, 128)),
        ("F", lambda: Image.new("F", (4, 4), 0.5), (128, 128, 128)),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, mode, make, expect):
    im = make()
    assert im.mode == mode
    ext = ".tif" if mode in ("F", "CMYK", "I") else ".png"
    if ext == ".tif":
        # TIFF is not an accepted *input extension* for folders, but read_image decodes any file.
        p = _save(im, tmp_path / f"m{ext}")
    else:
        p = _save(im, tmp_path / f"m{ext}")
    a = read_image(p)
    assert a.shape == (4, 4, 3) and a.dtype == np.uint8
    assert np.abs(a[0, 0].astype(int) - np.array(expect)).max() <= 2, (mode, a[0, 0])


def test_palette_with_transparency_on_white(tmp_path):
    im = Image.new("P", (3, 3), 0)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.info["transparency"] = 0
    p = _save(im, tmp_path / "p.png", transparency=0)
    a = read_image(p)
    assert tuple(a[0, 0]) == (255, 255, 255)
    assert tuple(a[1, 1]) == (10, 200, 30)


def test_exif_orientation_applied(tmp_path):
    # A 16x32 (w x h) image stored sideways with orientation 6 (rotate 90 CW to display) shows as 32x16.
    a = np.zeros((32, 16, 3), dtype=np.uint8)
    a[:8, :8] = (255, 0, 0)  # top-left block red
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "r.jpg"
    im.save(p, exif=exif.tobytes(), quality=100)
    out = read_image(p)
    assert out.shape == (16, 32, 3)
    # after a 90-degree clockwise rotation the old top-left is at the top-right
    assert out[2, -3, 0] > 200 and out[2, -3, 1] < 60
    assert out[2, 2, 0] < 60


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "empty file"),
        (b"hello, I am not an image", "not an image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, needle):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as ei:
        read_image(p)
    assert str(p) in str(ei.value) and needle in str(ei.value)


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_truncated_files(tmp_path, fmt, ext):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    p = tmp_path / f"t{ext}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError) as ei:
        read_image(p)
    assert str(p) in str(ei.value)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def test_absurdly_large_image_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(p)


def test_size_limit_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    write_image(p, np.zeros((20, 20, 3), np.uint8))
    monkeypatch.setenv("PUFACE_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match="PUFACE_MAX_PIXELS"):
        read_image(p)


def test_write_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "out" / "a.png"
    write_image(p, np.zeros((5, 5, 3), np.uint8))
    before = p.read_bytes()

    import puface.io.images as io_mod

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_mod.os, "replace", boom)
    with pytest.raises(ImageWriteError, match="No space"):
        write_image(p, np.full((5, 5, 3), 255, np.uint8))
    assert p.read_bytes() == before  # the old file is intact
    assert [q.name for q in p.parent.iterdir()] == ["a.png"]  # no temporary left behind


def test_output_equal_to_input_refused(tmp_path):
    p = tmp_path / "a.png"
    write_image(p, np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(ImageWriteError, match="overwrite an input"):
        write_image(p, np.ones((5, 5, 3), np.uint8), inputs=(p,))


def test_unsupported_output_extension(tmp_path):
    with pytest.raises(ImageWriteError, match="unsupported output extension"):
        write_image(tmp_path / "a.gif", np.zeros((5, 5, 3), np.uint8))


def test_tensor_conversions_roundtrip():
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    t = image_to_tensor(a)
    assert t.shape == (3, 2, 3) and float(t.max()) <= 1.0
    assert np.array_equal(tensor_to_image(t), a)


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".tif", "TIFF"), (".webp", "WEBP")])
def test_animated_or_multipage_files_are_refused_for_writing_back(tmp_path, ext, fmt):
    """A folder job writes one picture per input: an APNG / multi-page TIFF / animated WebP would lose its other
    frames silently, so `open_image_parts` refuses it by name; `open_image` (read only) takes the first frame."""
    from puface.io.images import open_image, open_image_parts

    first = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    path = tmp_path / f"anim{ext}"
    first.save(path, format=fmt, save_all=True, append_images=[Image.fromarray(np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(ImageReadError, match=r"anim.*animated or multi-page image \(2 frames\)"):
        open_image_parts(path)
    assert np.asarray(open_image(path)).mean() > 150  # the first frame
    single = tmp_path / f"one{ext}"
    first.save(single, format=fmt)
    assert open_image_parts(single)[0].size == (8, 8)


def test_a_camera_mpo_jpeg_is_one_picture(tmp_path):
    """MPO (a JPEG with previews or a depth map, as some cameras write) is read as its main picture, not refused."""
    from puface.io.images import open_image_parts

    path = tmp_path / "camera.jpg"
    main = Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
    main.save(path, format="MPO", save_all=True, append_images=[main.resize((8, 8))])
    with Image.open(path) as im:
        assert im.format == "MPO" and im.n_frames == 2
    rgb, alpha, gray = open_image_parts(path)
    assert rgb.size == (16, 16) and alpha is None and not gray


def test_an_icc_profile_is_kept_only_where_it_describes_the_output(tmp_path):
    """A folder job keeps an input's ICC profile, but a CMYK input's profile does not go onto its RGB output (nor a
    grayscale photo's onto an RGB chip): a colour-managed reader would refuse or misread the file."""
    from PIL import ImageCms

    from puface.io.jobs import Outcome, keep_input_mode, plan_mirror, run_folder_job

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    as_space = lambda space: srgb[:16] + space + srgb[20:]  # noqa: E731 - a profile declaring another colour space
    src = tmp_path / "in"
    src.mkdir()
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    face.save(src / "rgb.jpg", icc_profile=srgb)
    face.convert("CMYK").save(src / "cmyk.jpg", icc_profile=as_space(b"CMYK"))
    face.convert("L").save(src / "gray.png", icc_profile=as_space(b"GRAY"))
    same = keep_input_mode(lambda items: [Outcome.ok(it.image) for it in items])
    assert not run_folder_job(plan_mirror(src, tmp_path / "out"), same, progress=False).failed
    profile = {p.name: Image.open(p).info.get("icc_profile") for p in (tmp_path / "out").iterdir()}
    assert profile == {"rgb.jpg": srgb, "cmyk.jpg": None, "gray.png": as_space(b"GRAY")}
    chips = lambda items: [Outcome.ok(np.zeros((8, 8, 3), np.uint8)) for _ in items]  # noqa: E731 - RGB, another size
    assert not run_folder_job(plan_mirror(src, tmp_path / "chips"), chips, progress=False).failed
    assert Image.open(tmp_path / "chips" / "gray.png").info.get("icc_profile") is None
    assert Image.open(tmp_path / "chips" / "rgb.jpg").info.get("icc_profile") == srgb


def test_a_tiff_keeps_its_icc_profile(tmp_path):
    """A TIFF's ICC profile is kept on its output, as a JPEG's, PNG's or WebP's is (it was dropped: the colours of a
    photo in another RGB space than sRGB changed in every colour-managed viewer); a CMYK TIFF's profile still does not
    go onto its RGB output."""
    from PIL import ImageCms

    from puface.io.jobs import Outcome, keep_input_mode, plan_mirror, run_folder_job

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    as_space = lambda space: srgb[:16] + space + srgb[20:]  # noqa: E731 - a profile declaring another colour space
    src = tmp_path / "in"
    src.mkdir()
    face = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    face.save(src / "rgb.tiff", icc_profile=srgb, compression="tiff_lzw")
    face.convert("L").save(src / "gray.tif", icc_profile=as_space(b"GRAY"))
    face.convert("CMYK").save(src / "cmyk.tiff", icc_profile=as_space(b"CMYK"))
    same = keep_input_mode(lambda items: [Outcome.ok(it.image) for it in items])
    assert not run_folder_job(plan_mirror(src, tmp_path / "out"), same, progress=False).failed
    profile = {p.name: Image.open(p).info.get("icc_profile") for p in (tmp_path / "out").iterdir()}
    assert profile == {"rgb.tiff": srgb, "gray.tif": as_space(b"GRAY"), "cmyk.tiff": None}
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "rgb.tiff")), np.asarray(face))


def test_a_folder_job_keeps_the_resolution_and_a_tiffs_compression(tmp_path):
    """An output keeps its input's resolution (dpi: JPEG, PNG, TIFF, BMP; a quarter-turned EXIF orientation swaps x and
    y) and a TIFF's compression (LZW, deflate, JPEG; 1-bit fax compression does not fit the 8-bit output, which is then
    uncompressed). The earlier code wrote every output at no or the default resolution and every TIFF uncompressed: a
    JPEG-compressed TIFF came back 5-6x larger."""
    from puface.io.jobs import Outcome, keep_input_mode, plan_mirror, run_folder_job

    src = tmp_path / "in"
    src.mkdir()
    face = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    face.save(src / "lzw.tif", compression="tiff_lzw", dpi=(300, 300))
    face.save(src / "jpeg.tif", compression="jpeg", dpi=(300, 300))
    face.convert("L").save(src / "deflate.tiff", compression="tiff_adobe_deflate", dpi=(600, 600))
    face.convert("1").save(src / "fax.tif", compression="group4", dpi=(200, 200))
    face.save(src / "a.jpg", dpi=(300, 300))
    face.save(src / "a.png", dpi=(72, 144))
    face.save(src / "a.bmp", dpi=(300, 300))
    exif = Image.Exif()
    exif[0x0112] = 6  # upright by a quarter turn
    face.save(src / "turned.jpg", dpi=(100, 200), exif=exif.tobytes())
    same = keep_input_mode(lambda items: [Outcome.ok(it.image) for it in items])
    assert not run_folder_job(plan_mirror(src, tmp_path / "out"), same, progress=False).failed
    out = {p.name: Image.open(p) for p in (tmp_path / "out").iterdir()}
    dpi = {n: tuple(round(float(v)) for v in im.info.get("dpi", (0, 0))) for n, im in out.items()}
    assert dpi == {"lzw.tif": (300, 300), "jpeg.tif": (300, 300), "deflate.tiff": (600, 600), "fax.tif": (200, 200),
                   "a.jpg": (300, 300), "a.png": (72, 144), "a.bmp": (300, 300), "turned.jpg": (200, 100)}
    tiffs = {n: out[n].info.get("compression") for n in ("lzw.tif", "jpeg.tif", "deflate.tiff", "fax.tif")}
    assert tiffs == {"lzw.tif": "tiff_lzw", "jpeg.tif": "jpeg", "deflate.tiff": "tiff_adobe_deflate", "fax.tif": "raw"}
    assert np.array_equal(np.asarray(out["lzw.tif"]), np.asarray(face))  # lossless stays lossless
    assert out["turned.jpg"].size == (40, 30)  # written upright


def test_a_broken_link_in_a_folder_job_is_listed_as_failed(tmp_path):
    """A link to a file that is gone is a broken input: counted and named with its cause, not passed over silently."""
    from puface.io.jobs import Outcome, plan_mirror, run_folder_job

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (12, 10), (1, 2, 3)).save(src / "a.png")
    (src / "b.jpg").symlink_to("gone.jpg")
    rep = run_folder_job(plan_mirror(src, tmp_path / "out"), lambda items: [Outcome.ok(it.image) for it in items],
                         progress=False, log=lambda m: None)
    assert rep.total == 2 and rep.written == 1
    assert rep.failed == [(src / "b.jpg", "broken link to gone.jpg, which does not exist")]


def test_an_input_that_cannot_be_read_is_a_read_error_naming_it_in_every_job(tmp_path, monkeypatch):
    """`load_for_job` read the bytes itself (Path.read_bytes) instead of through the image reader: a file that exists
    but cannot be read (permissions, I/O) escaped as a bare PermissionError, which the group-cloak resume check
    (`attacks.folder._unreadable`) does not catch, and which the engines listed as 'unexpected read error'. It is now
    the reader's one-line `ImageReadError`, as `open_image` gives; the bytes are still read once."""
    from puface.io.jobs import FileJob, Outcome, load_for_job, plan_mirror, run_folder_job

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "locked.png"):
        Image.new("RGB", (12, 10), (1, 2, 3)).save(src / name)
    read_bytes, reads = Path.read_bytes, []

    def guarded(self: Path) -> bytes:
        reads.append(self.name)
        if self.name == "locked.png":  # what chmod 000 does for a user other than root
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    with pytest.raises(ImageReadError, match=r"locked.png: cannot read file \(Permission denied\)"):
        load_for_job(FileJob(src / "locked.png", tmp_path / "o.png", Path("o.png")))
    reads.clear()
    assert load_for_job(FileJob(src / "a.png", tmp_path / "o.png", Path("o.png"))).image.shape == (10, 12, 3)
    assert reads == ["a.png"]
    rep = run_folder_job(plan_mirror(src, tmp_path / "out"), lambda items: [Outcome.ok(it.image) for it in items],
                         progress=False, log=lambda m: None)
    assert rep.written == 1 and rep.failed == [(src / "locked.png", "cannot read file (Permission denied)")]


def test_bomb_caught_by_pillow_names_puface_limit(tmp_path):
    """Over twice the limit Pillow's own check fires in Image.open; its message named a limit of 200000000 pixels the
    user never set (ours is 100 MP): the message now says ours, as an image just over it does."""
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(40_000, 40_000))
    with pytest.raises(ImageReadError, match=r"1600\.0 MP > 100\.0 MP limit; set PUFACE_MAX_PIXELS") as e:
        read_image(p)
    assert "200000000" not in str(e.value) and "DOS" not in str(e.value)


def test_small_size_limit_says_pixels_not_zero_megapixels(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    write_image(p, np.zeros((20, 30, 3), np.uint8))
    monkeypatch.setenv("PUFACE_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match=r"30x20 = 600 pixels > 100 pixels limit"):
        read_image(p)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5e6"])
def test_bad_max_pixels_is_one_clear_error_before_a_folder_job(tmp_path, monkeypatch, value):
    """A bad $PUFACE_MAX_PIXELS failed every file of a folder job with 'unexpected read error (ValueError: invalid
    literal for int() ...)', or refused each with '0.0 MP limit'; now one PufaceError before anything is planned."""
    from puface.io.jobs import plan_mirror
    from puface.utils.errors import PufaceError

    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", np.zeros((4, 4, 3), np.uint8))
    monkeypatch.setenv("PUFACE_MAX_PIXELS", value)
    with pytest.raises(PufaceError, match=r"\$PUFACE_MAX_PIXELS must be a positive whole number of pixels, got"):
        plan_mirror(tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_name_with_a_newline_is_reported_on_one_line(tmp_path, capsys):
    """A scraped name holding a newline ('bad\\nname.jpg', empty) split its 'error:' line and its line of the summary
    in two, so a report read line by line lost the file; the name is now printed with the newline escaped."""
    from puface.io.jobs import Outcome, plan_mirror, run_folder_job

    src = tmp_path / "in" / "id"
    src.mkdir(parents=True)
    write_image(src / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (src / "bad\nname.jpg").write_bytes(b"")
    (src / "tab\there.png").write_bytes(b"not a png")
    report = run_folder_job(plan_mirror(tmp_path / "in", tmp_path / "out"),
                            lambda items: [Outcome.ok(it.image) for it in items], progress=False)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {src}/bad\\nname.jpg: empty file (0 bytes)",
        f"error: {src}/tab\\there.png: not an image, or a format Pillow cannot read",
    ]
    lines = report.summary().splitlines()
    assert lines[1:] == ["FAILED (2):", f"  {src}/bad\\nname.jpg: empty file (0 bytes)",
                         f"  {src}/tab\\there.png: not an image, or a format Pillow cannot read"]
    assert [f.name for f in report.failed[0][:1]] == ["bad\nname.jpg"]  # the report keeps the real path


def test_a_file_name_that_is_not_utf8_is_shown_alike_on_stdout_and_stderr(tmp_path):
    """A name that is not UTF-8 (byte 0xff, held as the surrogate escape U+DCFF) was printed as 'bad\\udcffname.png'
    in the 'error:' line on stderr and as the raw byte 0xff (invalid UTF-8) in the summary on stdout, so the two
    named the file differently; both now show the byte as \\xff."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in" / "id"
    src.mkdir(parents=True)
    write_image(src / "ok.png", np.zeros((4, 4, 3), np.uint8))
    bad = os.fsdecode(os.fsencode(str(src)) + b"/bad\xffname.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    code = ("import sys; from puface.io.jobs import Outcome, plan_mirror, run_folder_job; "
            "r = run_folder_job(plan_mirror(*map(__import__('pathlib').Path, sys.argv[1:3])), "
            "lambda items: [Outcome.ok(it.image) for it in items], progress=False); print(r.summary())")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")], env=env,
                         capture_output=True, timeout=300)
    out, err = run.stdout.decode("utf-8"), run.stderr.decode("utf-8")  # (valid UTF-8 both)
    shown = f"{src}/bad\\xffname.png: not an image, or a format Pillow cannot read"
    assert [line for line in err.splitlines() if line.startswith("error:")] == [f"error: {shown}"], err
    assert f"  {shown}" in out.splitlines(), out


def _plant_links(path: Path, victim: Path, thread: bool = True) -> list[Path]:
    """Links at the temporary names a writer of `path` in this process and thread would use first."""
    import os
    import threading

    base = f".{path.name}.{os.getpid()}" + (f".{threading.get_ident()}" if thread else "")
    links = [path.with_name(f"{base}{f'-{n}' if n else ''}.tmp") for n in range(2)]
    for link in links:
        link.symlink_to(victim)
    return links


def _write_checkpoint(path: Path) -> None:
    import torch

    from puface.purifier.checkpoint import make_checkpoint, save_checkpoint

    save_checkpoint(path, make_checkpoint({"w": torch.ones(2)}, {"channels": 4}))


@pytest.mark.parametrize("name,write", [
    ("out.png", lambda p: __import__("puface.io.images", fromlist=["x"]).atomic_write_bytes(p, [b"new ", b"bytes"])),
    ("ckpt.safetensors", _write_checkpoint),
    ("ckpt.pt", _write_checkpoint),
])
def test_atomic_writes_never_write_through_a_link_planted_at_the_temporary_name(tmp_path, name, write):
    """The temporary name (`.NAME.PID.THREAD.tmp`) is predictable, and it was opened without O_EXCL / O_NOFOLLOW: a
    link planted there had its target overwritten (a file of someone else's, or the job's own input), then the link
    renamed into place. Temporaries are now new files only (`utils.paths.create_temporary`), the first free name
    taken; the output is a plain file of mode 0o666 less the umask, and the link's target is untouched."""
    import os
    import stat

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out" / name
    out.parent.mkdir()
    links = _plant_links(out, victim)
    write(out)
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and out.stat().st_size > 0
    if name == "out.png":
        assert out.read_bytes() == b"new bytes"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, *(p.name for p in links)])


def test_create_temporary_takes_a_fresh_name_and_never_an_existing_file(tmp_path):
    """A leftover file at the first name is neither truncated nor reused: the next free name is taken."""
    import os

    from puface.utils.paths import create_temporary

    out = tmp_path / "x.bin"
    first = tmp_path / f".x.bin.{os.getpid()}.tmp"
    first.write_bytes(b"left over")
    fd, tmp = create_temporary(out, thread=False)
    os.close(fd)
    assert tmp == tmp_path / f".x.bin.{os.getpid()}-1.tmp" and tmp.stat().st_size == 0
    assert first.read_bytes() == b"left over"
