"""How a file stores its pixels (JPEG quality and subsampling, palette) and the thresholds of chips stored so."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from puface.detection import CloakDetector, DetectorConfig, load_detector
from puface.detection.folder import PALETTE_KIND_NOTE, PALETTE_NOTE, detect_folder, purify_folder_detected
from puface.detection.storage import describe, kinds_for_storage, last_step
from puface.io.images import jpeg_settings, storage_of
from puface.utils.errors import ConfigError, PufaceError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _opened(im: Image.Image, **save) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, **save)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    g = np.random.default_rng(0)
    return Image.fromarray((g.random((48, 40, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("sub", ["4:2:0", "4:2:2", "4:4:4"])
def test_jpeg_quality_and_subsampling_are_read_back(photo, sub):
    """A JPEG written by libjpeg (Pillow) at a quality setting reads back as that quality, exactly, and its
    chroma subsampling as written."""
    for q in (10, 50, 60, 74, 75, 85, 90, 93, 95, 100):
        assert jpeg_settings(_opened(photo, format="JPEG", quality=q, subsampling=sub)) == (q, sub)
    assert (
        storage_of(_opened(photo, format="JPEG", quality=75, subsampling=sub)) == f"jpeg:quality=75,subsampling={sub}"
    )
    assert jpeg_settings(_opened(photo, format="JPEG", quality=80, subsampling=sub, progressive=True)) == (80, sub)
    assert jpeg_settings(
        _opened(photo, format="MPO", quality=80, subsampling=sub, save_all=True, append_images=[photo])
    ) == (80, sub)


def test_storage_of_other_files(photo):
    """Lossless colour, grey and CMYK JPEGs say nothing (""); palette images say "palette"."""
    assert storage_of(_opened(photo, format="PNG")) == ""
    assert storage_of(_opened(photo.convert("L"), format="JPEG", quality=75)) == ""
    assert storage_of(_opened(photo.convert("CMYK"), format="JPEG", quality=75)) == ""
    assert storage_of(_opened(photo.quantize(64), format="PNG")) == "palette"
    assert storage_of(_opened(photo.convert("P", palette=Image.Palette.WEB), format="BMP")) == "palette"
    assert describe("jpeg:quality=75,subsampling=4:4:4") == "JPEG q75 4:4:4" and describe("") == "lossless or unknown"


KINDS = ["natural", "natural:jpeg:quality=75", "natural:jpeg:quality=90,subsampling=4:4:4",
         "natural:noise:sigma=0.008+jpeg:quality=95", "natural:jpeg:quality=95", "natural:resize:factor=2.0",
         "natural:jpeg:quality=60", "natural:jpeg:quality=75,subsampling=4:4:4", "natural:jpeg:quality=75,scale=0.5",
         "natural:palette:colors=256", "natural:palette:mode=web"]


def test_the_kinds_that_describe_a_storage():
    """The last step decides; the nearest calibrated quality not above the file's (a little below the lowest);
    the subsampling must match (4:2:0 when a kind does not say); a JPEG at another scale describes no file."""
    def k(storage):
        return kinds_for_storage(KINDS, storage)

    assert last_step("natural:noise:sigma=0.008+jpeg:quality=95") == ("jpeg", {"quality": "95"}) and last_step(
        "natural"
    ) == ("", {})
    assert k("jpeg:quality=92,subsampling=4:2:0") == ["natural:jpeg:quality=75"]
    assert k("jpeg:quality=100,subsampling=4:2:0") == [
        "natural:noise:sigma=0.008+jpeg:quality=95",
        "natural:jpeg:quality=95",
    ]
    assert k("jpeg:quality=56,subsampling=4:2:0") == ["natural:jpeg:quality=60"]  # within the slack below 60
    assert k("jpeg:quality=50,subsampling=4:2:0") is None  # far below every calibrated quality
    assert k("jpeg:quality=80,subsampling=4:4:4") == ["natural:jpeg:quality=75,subsampling=4:4:4"]
    assert k("jpeg:quality=97,subsampling=4:4:4") == ["natural:jpeg:quality=90,subsampling=4:4:4"]
    assert k("jpeg:quality=80,subsampling=4:2:2") is None
    # a file at a calibrated quality is judged by that quality's kinds, not the next lower one
    assert k("jpeg:quality=75,subsampling=4:2:0") == ["natural:jpeg:quality=75"]
    assert k("jpeg:quality=90,subsampling=4:4:4") == ["natural:jpeg:quality=90,subsampling=4:4:4"]
    assert k("palette") == ["natural:palette:colors=256", "natural:palette:mode=web"]
    assert k("") is None and k("tiff") is None


@pytest.fixture(scope="module")
def shipped():
    return load_detector()


@pytest.fixture(scope="module")
def cloaked_chip(johns_images) -> Image.Image:
    """A cheap Fawkes cloak (30 steps, dlib) of one johns chip, as an RGB image."""
    from puface.attacks import create_attack

    atk = create_attack("fawkes", mode="custom", th=0.017, steps=30, lr=15.0, embedders=["dlib-resnet29"], seed=0)
    x = atk.run(johns_images[2][:1], quantize_output=True).images[0]
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _detector(shipped, storage_kinds=("natural:jpeg:quality=75,subsampling=4:4:4", "natural:palette:colors=256")):
    """A dlib-shift detector calibrated on synthetic shifts: natural kinds low, the 4:4:4 q75 kind higher, the
    palette kind far higher, a q60 kind lower than the default."""
    det = CloakDetector(
        DetectorConfig(), purifier=shipped.purifier, embedders={"dlib-resnet29": shipped.embedder("dlib-resnet29")}
    )
    g = torch.Generator().manual_seed(0)
    level = {"natural": -2.7, "natural:jpeg:quality=90,subsampling=4:4:4": -2.5, "natural:jpeg:quality=60": -3.0,
             "natural:jpeg:quality=75,subsampling=4:4:4": -2.0, "natural:palette:colors=256": -1.0}
    kinds = [k for k in level for _ in range(500)]
    shift = torch.cat([torch.randn(500, generator=g).mul(0.3).add(level[k]) for k in level]).exp()
    det.calibrate({"shift:dlib-resnet29": shift}, fpr=0.01, kinds=kinds, storage_kinds=list(storage_kinds))
    return det, shift, kinds


def test_storage_kinds_raise_a_chips_threshold_but_never_lower_it(shipped, tmp_path):
    det, shift, kinds = _detector(shipped)
    plain = CloakDetector(
        DetectorConfig(), purifier=shipped.purifier, embedders={"dlib-resnet29": shipped.embedder("dlib-resnet29")}
    )
    base = [i for i, k in enumerate(kinds) if "4:4:4" not in k or "quality=90" in k]
    base = [i for i in base if "palette" not in kinds[i]]
    plain.calibrate({"shift:dlib-resnet29": shift[base]}, fpr=0.01, kinds=[kinds[i] for i in base])
    # the storage kinds change neither the scales nor the default threshold
    assert det.calibration["components"] == plain.calibration["components"]
    assert det.threshold() == plain.threshold() == det.calibration["threshold"]
    t = det.threshold()
    t444 = det.threshold(storage="jpeg:quality=80,subsampling=4:4:4")
    tpal = det.threshold(storage="palette")
    assert t < t444 < tpal
    assert det.threshold(storage="jpeg:quality=95,subsampling=4:4:4") == t  # the q90 4:4:4 kind (part of the default)
    assert det.threshold(storage="jpeg:quality=60,subsampling=4:2:0") == t  # lower kind: never below the default
    assert det.threshold(storage="jpeg:quality=80,subsampling=4:2:2") == t  # no kind describes it
    just_below = torch.tensor([t444 - 1e-3])
    assert (
        det.is_cloaked(just_below).item()
        and not det.is_cloaked(just_below, storage="jpeg:quality=80,subsampling=4:4:4").item()
    )
    again = CloakDetector.load(det.save(tmp_path / "s.safetensors"), purifier=det.purifier)
    assert again.storage_kinds == sorted(["natural:jpeg:quality=75,subsampling=4:4:4", "natural:palette:colors=256"])
    assert again.threshold(storage="palette") == tpal and again.threshold() == t


def test_storage_kinds_must_describe_a_storage(shipped):
    with pytest.raises(ValueError, match="storage kind"):
        _detector(shipped, storage_kinds=("natural:jpeg:quality=60", "natural:resize:factor=2.0"))
    with pytest.raises(ValueError, match="not all among"):
        _detector(shipped, storage_kinds=("natural:jpeg:quality=50",))
    det, _, _ = _detector(shipped, storage_kinds=())
    t = det.threshold()
    with pytest.raises(PufaceError, match="storage kind"):
        det.add_natural_kind([5.0, 5.0, 5.0], "user:mine", storage=True)
    assert det.add_natural_kind([t + 5] * 3, "natural:jpeg:quality=70,subsampling=4:4:4", storage=True) == t
    assert det.threshold(storage="jpeg:quality=72,subsampling=4:4:4") == pytest.approx(t + 5)
    # added again as a source of photos (not a storage): the default rises and the storage kind is no more
    assert det.add_natural_kind([t + 5] * 3, "natural:jpeg:quality=70,subsampling=4:4:4") == pytest.approx(t + 5)
    assert det.storage_kinds == []


def test_detector_recipe_storage_variants_are_checked():
    from puface.training.detector import load_detector_config

    cfg = load_detector_config("default")
    assert "jpeg:quality=75,subsampling=4:4:4" in cfg.augment["storage_variants"]
    with pytest.raises(ConfigError, match="storage_variants: 'resize:factor=2.0' must end in a JPEG"):
        load_detector_config("default", {"augment.storage_variants": ["resize:factor=2.0"]})
    with pytest.raises(ConfigError, match="also a natural variant"):
        load_detector_config("default", {"augment.storage_variants": ["jpeg:quality=75"]})


def _rows(path):
    with open(path, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_folder_decisions_follow_each_chips_storage(cloaked_chip, tmp_path):
    """Cloaked chips stored as PNG, as 4:2:0 and 4:4:4 JPEG and with a palette: each row says its storage and is
    judged by its threshold (a 4:4:4 JPEG and a palette chip against their kinds, here set out of reach); with
    --one-threshold (also on a resume) every row by the default; `purify --skip-cloaked` keeps the 4:4:4 chip."""
    det = load_detector()
    det.add_natural_kind([1e6] * 3, "natural:jpeg:quality=75,subsampling=4:4:4", storage=True)
    det.add_natural_kind([1e6] * 3, "natural:palette:colors=256", storage=True)
    chip = cloaked_chip
    root = tmp_path / "in" / "person"
    root.mkdir(parents=True)
    chip.save(root / "a.png")
    chip.save(root / "b.jpg", quality=95)
    chip.save(root / "c.jpg", quality=75, subsampling="4:4:4")
    chip.quantize(256).save(root / "d.png")
    chip.resize((160, 160)).save(root / "e.jpg", quality=75, subsampling="4:4:4")  # not a chip's size: default
    fpr = 0.3  # a low default threshold: every cloaked chip is above it, whatever its storage did to it
    rep = detect_folder(tmp_path / "in", tmp_path / "s.csv", detector=det, fpr=fpr, progress=False)
    rows = _rows(tmp_path / "s.csv")
    assert {p: r["storage"] for p, r in rows.items()} == {
        "person/a.png": "", "person/b.jpg": "jpeg:quality=95,subsampling=4:2:0",
        "person/c.jpg": "jpeg:quality=75,subsampling=4:4:4", "person/d.png": "palette", "person/e.jpg": ""}
    assert {p: r["cloaked"] for p, r in rows.items()} == {
        "person/a.png": "1", "person/b.jpg": "1", "person/c.jpg": "0", "person/d.png": "0", "person/e.jpg": "1"}
    assert rows["person/d.png"]["note"] == PALETTE_KIND_NOTE and rep.thresholds == {
        "jpeg:quality=75,subsampling=4:4:4": pytest.approx(1e6), "palette": pytest.approx(1e6)}
    assert "JPEG q75 4:4:4 1000000.0000 (1)" in rep.summary()
    rep2 = detect_folder(tmp_path / "in", tmp_path / "s.csv", detector=det, fpr=fpr, progress=False, one_threshold=True)
    assert (
        rep2.flagged == 5
        and rep2.thresholds == {}
        and _rows(tmp_path / "s.csv")["person/d.png"]["note"] == PALETTE_NOTE
    )
    rep3 = detect_folder(tmp_path / "in", tmp_path / "t.csv", detector=det, fpr=fpr, progress=False, one_threshold=True)
    assert rep3.flagged == 5 and _rows(tmp_path / "t.csv")["person/d.png"]["note"] == PALETTE_NOTE
    rep4 = detect_folder(
        tmp_path / "in", tmp_path / "t.csv", detector=det, fpr=fpr, progress=False
    )  # resumed, by storage
    assert rep4.flagged == 3 and _rows(tmp_path / "t.csv")["person/d.png"]["note"] == PALETTE_KIND_NOTE
    out = tmp_path / "out"
    purify_folder_detected(tmp_path / "in", out, skip_cloaked=True, detector=det, fpr=fpr, progress=False)
    assert sorted(p.name for p in (out / "person").iterdir()) == ["c.jpg", "d.png"]


def test_a_scores_file_of_the_earlier_version_is_refused_with_the_reason(tmp_path):
    """A scores CSV written before the storage column: a resume says why it cannot go on, not 'another detector'."""
    det = load_detector()
    root = tmp_path / "in" / "p"
    root.mkdir(parents=True)
    Image.new("RGB", (150, 150), (120, 90, 80)).save(root / "a.png")
    out = tmp_path / "s.csv"
    detect_folder(tmp_path / "in", out, detector=det, progress=False)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    drop = rows[0].index("storage")
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([r[:drop] + r[drop + 1:] for r in rows])
    with pytest.raises(PufaceError, match="earlier puface .no 'storage' column"):
        detect_folder(tmp_path / "in", out, detector=det, progress=False)
    assert detect_folder(tmp_path / "in", out, detector=det, progress=False, restart=True).scored == 1
