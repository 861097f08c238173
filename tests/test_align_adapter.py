"""Detection + alignment on synthetic photos (johns chips placed into larger canvases by known
transforms) and the photo-level `align_adapter` used by `cloak --align` / `purify --align`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from puface.align import FaceAligner, FaceDetector, align_adapter, extract_chip, feather_mask  # noqa: E402
from puface.align.geometry import apply_affine  # noqa: E402
from puface.utils.errors import PufaceError  # noqa: E402
from puface.io.jobs import FileJob, LoadedImage, Outcome, load_for_job, plan_mirror, run_folder_job  # noqa: E402

from test_align_support import embed_chip  # noqa: E402


@pytest.fixture(scope="module")
def chips(johns_dir):
    paths = sorted(johns_dir.glob("*/*.jpg"))
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths[::11][:5]]


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(150, FaceDetector("hog"), pick="all", min_face=40)


def _item(image: np.ndarray, name: str = "p.jpg") -> LoadedImage:
    return LoadedImage(FileJob(Path("/in") / name, Path("/out") / name, Path(name)), image, None, None, "JPEG")


def brighten(items: list[LoadedImage]) -> list[Outcome]:
    """A chip-level batch function: +30 grey levels, with a stat."""
    return [Outcome.ok(np.clip(it.image.astype(int) + 30, 0, 255).astype(np.uint8), shift=30.0) for it in items]


@pytest.mark.parametrize("angle,scale", [(0, 1.0), (15, 1.7), (-25, 2.6), (8, 0.75)])
def test_alignment_recovers_the_known_placement(chips, aligner, angle, scale):
    for chip in chips[:3]:
        photo, m = embed_chip(chip, (460, 420), angle, scale, (210, 240))
        pf = aligner.align(photo)
        assert pf.found == 1 and len(pf.faces) == 1
        f = pf.faces[0]
        assert f.face.detector == "hog"
        # the johns chips are dlib chips, so re-aligning one gives (nearly) the same chip back
        pts = np.array([[0, 0], [149, 0], [149, 149], [0, 149], [74.5, 74.5]], float)
        err = np.linalg.norm(apply_affine(f.transform.image_to_chip, apply_affine(m, pts)) - pts, axis=1)
        assert err[4] < 4.0 and err.max() < 12.0, err
        assert f.size_px == pytest.approx(100 * scale, rel=0.15)
        assert np.abs(f.chip.astype(float) - chip)[25:125, 25:125].mean() < 25


def test_chip_is_equivariant_to_the_placement(chips, aligner):
    """The same face placed two different ways gives nearly the same chip."""
    a = aligner.align(embed_chip(chips[0], (400, 400), 0, 1.2, (200, 200))[0]).faces[0].chip.astype(float)
    b = aligner.align(embed_chip(chips[0], (500, 520), -30, 2.1, (250, 260))[0]).faces[0].chip.astype(float)
    other = aligner.align(embed_chip(chips[1], (400, 400), 0, 1.2, (200, 200))[0]).faces[0].chip.astype(float)
    same = np.abs(a - b)[20:130, 20:130].mean()
    assert same < 8
    assert same < 0.5 * np.abs(a - other)[20:130, 20:130].mean()


def test_picks_and_min_face(chips):
    photo, _ = embed_chip(chips[0], (400, 700), 0, 1.0, (170, 200))
    photo, _ = embed_chip(chips[1], (400, 700), 0, 1.8, (500, 200), canvas=photo)
    det = FaceDetector("hog")
    assert len(FaceAligner(150, det, pick="all").align(photo).faces) == 2
    largest = FaceAligner(150, det, pick="largest").align(photo).faces
    assert len(largest) == 1 and largest[0].size_px > 150
    pf = FaceAligner(150, det, pick="all", min_face=130).align(photo)
    assert len(pf.faces) == 1 and len(pf.too_small) == 1
    pf = FaceAligner(150, det, pick="all", min_face=1000).align(photo)
    assert not pf.faces and pf.reason_if_empty(1000).startswith("face smaller than 1000 px")
    with pytest.raises(PufaceError):
        FaceAligner(150, det, pick="middle")
    with pytest.raises(PufaceError):
        FaceDetector("mtcnn")


def test_adapter_pastes_only_the_change_inside_the_face(chips):
    photo, _ = embed_chip(chips[2], (360, 300), 10, 1.3, (150, 170))
    process = align_adapter(brighten, chip_size=150, detector="hog")
    [out] = process([_item(photo)])
    assert out.status == "ok"
    assert out.image.shape == photo.shape and out.image.dtype == np.uint8
    assert out.stats["faces"] == 1 and out.stats["faces_processed"] == 1 and out.stats["shift"] == 30.0
    tf = process.aligner.align(photo).faces[0].transform
    # outside the chip footprint nothing changes
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    pc = apply_affine(tf.image_to_chip, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    inside = (pc[..., 0] > 0) & (pc[..., 0] < 149) & (pc[..., 1] > 0) & (pc[..., 1] < 149)
    changed = (out.image != photo).any(-1)
    assert not (changed & ~inside).any()
    # re-aligning the output gives the processed chip in the chip's interior
    again = extract_chip(out.image, tf).astype(float) - extract_chip(photo, tf)
    inner = feather_mask(150, 8) == 1
    bright = again[inner][(extract_chip(photo, tf)[inner] < 220).all(-1)]
    assert abs(bright.mean() - 30) < 1.5


def test_adapter_multiple_faces_batch_and_largest_face(chips):
    two, _ = embed_chip(chips[0], (400, 700), 0, 1.0, (170, 200))
    two, _ = embed_chip(chips[1], (400, 700), 0, 1.8, (500, 200), canvas=two)
    one, _ = embed_chip(chips[3], (300, 300), 0, 1.1, (150, 150))
    calls = []

    def counting(items):
        calls.append([it.job.rel.name for it in items])
        return brighten(items)

    outs = align_adapter(counting, detector="hog")([_item(two, "two.jpg"), _item(one, "one.jpg")])
    assert len(calls) == 1 and sorted(calls[0]) == ["one_face0.jpg", "two_face0.jpg", "two_face1.jpg"]
    assert [o.stats["faces_processed"] for o in outs] == [2, 1]
    calls.clear()
    [o] = align_adapter(counting, detector="hog", largest_face=True)([_item(two, "two.jpg")])
    assert o.stats["faces"] == 2 and o.stats["faces_processed"] == 1 and len(calls[0]) == 1
    # only the large face (right half) changed
    changed = (o.image != two).any(-1)
    assert changed[:, 350:].sum() > 1000 and changed[:, :300].sum() == 0


def test_adapter_no_face_tiny_face_and_chip_failures(chips):
    blank = np.full((200, 260, 3), 120, np.uint8)
    tiny, _ = embed_chip(chips[0], (300, 300), 0, 0.9, (150, 150))
    items = [_item(blank, "blank.png"), _item(tiny, "tiny.jpg")]
    outs = align_adapter(brighten, detector="hog", no_face="copy", min_face=200)(items)
    assert [o.status for o in outs] == ["copy", "copy"]
    assert outs[0].reason == "no face found"
    assert outs[1].reason.startswith("face smaller than 200 px")
    outs = align_adapter(brighten, detector="hog", no_face="skip")(items[:1])
    assert outs[0].status == "skip" and outs[0].reason == "no face found"

    def failing(its):
        return [Outcome.fail("out of memory") for _ in its]

    [o] = align_adapter(failing, detector="hog")([_item(tiny)])
    assert o.status == "fail" and "face 0: out of memory" in o.reason

    def copying(its):
        return [Outcome.copy("already clean") for _ in its]

    [o] = align_adapter(copying, detector="hog")([_item(tiny)])
    assert o.status == "copy" and o.reason == "already clean"
    with pytest.raises(PufaceError):
        align_adapter(brighten, no_face="delete")


def test_adapter_in_a_folder_job_keeps_size_format_metadata_and_exif_upright(chips, tmp_path):
    upright, _ = embed_chip(chips[4], (320, 240), 0, 1.2, (120, 150))  # portrait 240x320
    src = tmp_path / "in"
    src.mkdir()
    # stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "PufaceTestCam"
    stored.save(src / "sideways.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(src / "noface.png")
    assert Image.open(src / "sideways.jpg").size == (320, 240)  # stored landscape
    loaded = load_for_job(FileJob(src / "sideways.jpg", tmp_path / "x.jpg", Path("sideways.jpg")))
    assert loaded.image.shape == (320, 240, 3)

    jobs = plan_mirror(src, tmp_path / "out")
    report = run_folder_job(jobs, align_adapter(brighten, detector="hog", no_face="copy"), progress=False)
    assert report.written == 1 and [p.name for p, _ in report.copied] == ["noface.png"]
    out = Image.open(tmp_path / "out" / "sideways.jpg")
    assert out.format == "JPEG" and out.size == (240, 320)  # upright, same size
    oexif = out.getexif()
    assert oexif.get(0x0112, 1) == 1 and oexif.get(0x010F) == "PufaceTestCam"
    arr = np.asarray(out.convert("RGB")).astype(float)
    # the face (centre) got brighter, the corners (background) did not
    assert arr[120:180, 90:150].mean() - upright[120:180, 90:150].mean() > 20
    assert abs(arr[:30, :30].mean() - upright[:30, :30].mean()) < 2
    assert (tmp_path / "out" / "noface.png").read_bytes() == (src / "noface.png").read_bytes()


def test_align_112_cuts_arcface_layout_chips(chips):
    photo, _ = embed_chip(chips[0], (400, 400), 5, 1.5, (200, 200))
    f = FaceAligner(112, FaceDetector("hog")).align(photo).faces[0]
    assert f.chip.shape == (112, 112, 3) and f.transform.size == 112
    lm = apply_affine(f.transform.image_to_chip, f.face.landmarks)
    assert 44 < lm[:4, 1].mean() < 62  # eyes where ArcFace puts them


def test_missing_dlib_gives_a_clear_error(monkeypatch):
    import builtins

    from puface.align import detect
    from puface.utils.errors import MissingDependencyError

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "dlib":
            raise ImportError("no dlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependencyError, match="pip install dlib-bin"):
        detect.import_dlib()



def test_a_transparent_photo_keeps_its_own_colours_away_from_the_face(chips, tmp_path):
    """`purify --align` on an RGBA PNG (keep_input_mode over align_adapter): pixels away from the face come back
    byte-identical, colour and alpha. The photo is processed composited on white; writing that composite back under
    the input's alpha blended white into every semi-transparent pixel (colours changed by up to 250 grey levels) and
    turned every transparent one white."""
    from puface.io.jobs import keep_input_mode

    photo, _ = embed_chip(chips[1], (300, 280), 0, 1.2, (140, 150))
    h, w = photo.shape[:2]
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, :60] = np.linspace(0, 254, 60).astype(np.uint8)  # a transparent-to-opaque band on the left
    alpha[:40] = 0  # a transparent strip along the top
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(src / "cut_out.png")
    report = run_folder_job(
        plan_mirror(src, tmp_path / "out"), keep_input_mode(align_adapter(brighten, detector="hog")), progress=False
    )
    assert report.written == 1
    out = np.asarray(Image.open(tmp_path / "out" / "cut_out.png"))
    assert out.shape == (h, w, 4)
    assert np.array_equal(out[..., 3], alpha)
    assert (out[..., :3] != photo).any(-1)[100:200, 100:180].mean() > 0.5  # the face was processed
    composite = np.asarray(load_for_job(FileJob(src / "cut_out.png", tmp_path / "x.png", Path("x.png"))).image)
    tf = FaceAligner(150, FaceDetector("hog")).align(composite).faces[0].transform
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    pc = apply_affine(tf.image_to_chip, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    away = ~((pc[..., 0] > -1) & (pc[..., 0] < 150) & (pc[..., 1] > -1) & (pc[..., 1] < 150))
    assert away[:, :60].sum() > 1000 and away[:40].sum() > 1000
    assert np.array_equal(out[away], np.dstack([photo, alpha])[away])


def test_a_lossless_webp_photo_stays_lossless(chips, tmp_path):
    """A lossless WebP photo is written lossless: pixels away from the face come back byte-identical (it was written
    lossy at --quality, which changed 94% of the background by up to 10 grey levels), a lossy one stays lossy."""
    photo, _ = embed_chip(chips[2], (260, 240), 0, 1.1, (120, 130))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo).save(src / "lossless.webp", lossless=True)
    Image.fromarray(photo).save(src / "lossy.webp", quality=90)
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])).save(src / "alpha.webp", lossless=True)
    report = run_folder_job(plan_mirror(src, tmp_path / "out"), align_adapter(brighten, detector="hog"), progress=False)
    assert report.written == 3
    out = tmp_path / "out"
    got = np.asarray(Image.open(out / "lossless.webp").convert("RGB"))
    tf = FaceAligner(150, FaceDetector("hog")).align(photo).faces[0].transform
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    pc = apply_affine(tf.image_to_chip, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    away = ~((pc[..., 0] > -1) & (pc[..., 0] < 150) & (pc[..., 1] > -1) & (pc[..., 1] < 150))
    assert away.sum() > 10000 and np.array_equal(got[away], photo[away])
    assert (got != photo).any(-1).sum() > 1000  # the face was processed

    from puface.io.images import is_lossless_webp

    assert is_lossless_webp((src / "lossless.webp").read_bytes()) and is_lossless_webp(
        (src / "alpha.webp").read_bytes()
    )
    assert not is_lossless_webp((src / "lossy.webp").read_bytes())
    assert is_lossless_webp((out / "lossless.webp").read_bytes()) and is_lossless_webp(
        (out / "alpha.webp").read_bytes()
    )
    assert not is_lossless_webp((out / "lossy.webp").read_bytes())


def blur(items: list[LoadedImage]) -> list[Outcome]:
    """A chip-level batch function that smooths, as a denoiser does: it answers a hard edge in the chip."""
    from PIL import ImageFilter

    return [Outcome.ok(np.asarray(Image.fromarray(it.image).filter(ImageFilter.GaussianBlur(3)))) for it in items]


def test_a_face_cut_by_the_photos_edge_gets_no_band_along_that_edge(chips):
    # the chip of a face cut by the photo's left edge is black off the photo (dlib's chip); the chip function's
    # answer to that black border was pasted along the photo's edge (purify --align of an LFW photo cropped through
    # the face: a dark, coloured band, up to 71 grey levels, mean 19 in the first column against about 2 in the face)
    photo, _ = embed_chip(chips[2], (300, 200), 0, 1.3, (40, 150))
    process = align_adapter(blur, chip_size=150, detector="hog")
    [out] = process([_item(photo)])
    assert out.status == "ok" and out.stats["faces_processed"] == 1
    tf = process.aligner.align(photo).faces[0].transform
    assert tf.corners()[:, 0].min() < -20  # the chip reaches well past the photo's left edge
    change = np.abs(out.image.astype(int) - photo.astype(int)).max(-1)
    rows = slice(90, 210)
    edge, face = change[rows, :3].mean(), change[rows, 20:80].mean()
    assert face > 1  # the face was processed
    assert edge < 2 * face, (edge, face)


def test_a_face_just_under_the_minimum_is_not_said_to_be_the_minimum():
    # `purify --align` of an LFW photo downscaled to 130 px said "face smaller than 40 px (found 1: 40 px)"
    from puface.align import PhotoFaces

    reason = PhotoFaces(too_small=[39.96, 12.34], found=2).reason_if_empty(40)
    assert reason == "face smaller than 40 px (found 2: 39.9, 12.3 px)"


def test_a_large_face_cut_by_the_photos_edge_gets_no_band_along_that_edge(chips):
    # a face of 8 photo pixels per chip pixel: its chip is sampled from a reduced copy of the photo, black a few photo
    # pixels short of the photo's bottom edge; the chip function's answer to that black line made a band there (mean
    # change up to 116 grey levels, 18-30 rows from the edge, against 10 in the face)
    from puface.align.detect import Face
    from puface.align.geometry import template_for_size

    chip = np.asarray(Image.fromarray(chips[0]).resize((150, 150)))
    photo, m = embed_chip(chip, (700, 1200), 0, 8.0, (600, 500))
    landmarks = apply_affine(m, template_for_size(150).points)

    class Given(FaceAligner):  # the face where it was put: no detection on a large photo
        def align(self, image):
            return self.faces_for(image, [Face((0.0, 0.0, 1.0, 1.0), landmarks, 1.0, "hog")])

    process = align_adapter(blur, aligner=Given(150, pick="all", min_face=40))
    [out] = process([_item(photo)])
    assert out.status == "ok" and out.stats["faces_processed"] == 1
    change = np.abs(out.image.astype(int) - photo.astype(int)).max(-1)
    cols = slice(450, 750)
    edge, face = change[-40:, cols].mean(-1).max(), change[300:500, cols].mean()
    assert face > 1  # the face was processed
    assert edge < 2 * face, (edge, face)
