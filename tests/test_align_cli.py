"""`puface align IN OUT`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from puface.align.geometry import ChipTransform, apply_affine  # noqa: E402
from puface.cli import main  # noqa: E402

from test_align_support import embed_chip  # noqa: E402


@pytest.fixture(scope="module")
def photos(johns_dir, tmp_path_factory):
    """IN/ann/one.jpg (1 face), IN/ann/two.png (2 faces), IN/bo/none.jpg (no face)."""
    chips = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(johns_dir.glob("*/*.jpg"))[::11][:3]]
    root = tmp_path_factory.mktemp("photos")
    (root / "ann").mkdir()
    (root / "bo").mkdir()
    one, m_one = embed_chip(chips[0], (300, 280), 8, 1.4, (140, 150))
    Image.fromarray(one).save(root / "ann" / "one.jpg", quality=95)
    two, _ = embed_chip(chips[1], (360, 640), 0, 1.0, (150, 180))
    two, _ = embed_chip(chips[2], (360, 640), -10, 1.6, (460, 180), canvas=two)
    Image.fromarray(two).save(root / "ann" / "two.png")
    Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(root / "bo" / "none.jpg")
    return root, m_one


def test_align_writes_chips_transforms_and_config(photos, tmp_path, capsys):
    root, m_one = photos
    out = tmp_path / "chips"
    code = main(["align", str(root), str(out), "--detector", "hog", "--no-progress"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "3 images: 2 aligned" in cap.out and "none.jpg: no face found" in cap.out
    assert Image.open(out / "ann" / "one.jpg").size == (150, 150)
    assert Image.open(out / "ann" / "two.png").size == (150, 150)
    assert not (out / "bo" / "none.jpg").exists()
    rows = {r["file"]: r for r in csv.DictReader(open(out / "align.csv"))}
    assert rows["bo/none.jpg"]["status"] == "skip"
    rec = json.loads(rows["ann/one.jpg"]["chips"])
    assert len(rec) == 1 and rec[0]["chip"] == "one.jpg"
    tf = ChipTransform.from_json(rec[0]["transform"])
    # the recorded transform inverts: the chip centre maps back to where the face was placed
    c = apply_affine(tf.chip_to_image, np.array([[74.5, 74.5]]))[0]
    assert np.linalg.norm(c - apply_affine(m_one, np.array([[74.5, 74.5]]))[0]) < 5
    cfg = json.loads((out / "align_config.json").read_text())
    assert cfg["template"]["name"] == "dlib150" and cfg["detector"] == "hog" and cfg["pick"] == "center"
    # resume: a second run writes nothing new
    code = main(["align", str(root), str(out), "--detector", "hog", "--no-progress"])
    assert code == 0 and "0 aligned, 2 already done" in capsys.readouterr().out
    # another layout into the same OUT: refused (the 150 px chips stay, and so does the record that says so)
    code = main(["align", str(root), str(out), "--detector", "hog", "--template", "arcface112", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "different aligning setting (differs in: template.name" in err and "--no-resume" in err
    assert json.loads((out / "align_config.json").read_text())["template"]["name"] == "dlib150"
    code = main(
        ["align", str(root), str(out), "--detector", "hog", "--template", "arcface112", "--no-resume", "--no-progress"]
    )
    assert code == 0 and Image.open(out / "ann" / "one.jpg").size == (112, 112)
    assert json.loads((out / "align_config.json").read_text())["template"]["name"] == "arcface112"


def test_align_all_faces_and_112(photos, tmp_path, capsys):
    root, _ = photos
    out = tmp_path / "all"
    code = main(["align", str(root), str(out), "--all-faces", "--size", "112", "--detector", "hog", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in (out / "ann").iterdir())
    assert names == ["one_face0.jpg", "two_face0.png", "two_face1.png"]
    assert Image.open(out / "ann" / "two_face1.png").size == (112, 112)
    # --template arcface112 is the same layout, recorded by name; a conflicting --size is refused
    out2 = tmp_path / "tmpl"
    code = main(
        ["align", str(root), str(out2), "--all-faces", "--template", "arcface112", "--detector", "hog", "--no-progress"]
    )
    assert code == 0
    assert (out2 / "ann" / "two_face1.png").read_bytes() == (out / "ann" / "two_face1.png").read_bytes()
    assert json.loads((out2 / "align_config.json").read_text())["template"]["name"] == "arcface112"
    capsys.readouterr()
    assert main(["align", str(root), str(tmp_path / "x"), "--template", "dlib150", "--size", "112"]) == 2
    assert "--size 112 is the arcface112 layout" in capsys.readouterr().err


def test_align_all_faces_numbers_chips_by_the_detectors_index(photos, tmp_path, capsys):
    """`--all-faces` numbered a chip `<name>_face<k>` by the faces kept, while align.csv's `index` is the detector's
    order: two.png's smaller face (index 0, 100 px) under --min-face 120 left its larger one (index 1) named
    two_face0.png. k is now the index, so a chip keeps its name whatever --min-face drops; a resume counts the photo
    done from its row's chips (there is no two_face0.png), and redoes it when one of them is missing."""
    root, _ = photos
    out = tmp_path / "all"
    args = ["align", str(root), str(out), "--all-faces", "--detector", "hog", "--no-progress"]
    assert main([*args, "--min-face", "120"]) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (out / "ann").iterdir())
    assert names == ["one_face0.jpg", "two_face1.png"]
    rows = {r["file"]: r for r in csv.DictReader(open(out / "align.csv"))}
    rec = json.loads(rows["ann/two.png"]["chips"])
    assert [(c["chip"], c["index"]) for c in rec] == [("two_face1.png", 1)] and rows["ann/two.png"]["faces"] == "2"
    kept = (out / "ann" / "two_face1.png").read_bytes()
    capsys.readouterr()
    assert main([*args, "--min-face", "120"]) == 0
    assert "0 aligned, 2 already done" in capsys.readouterr().out
    (out / "ann" / "two_face1.png").unlink()
    assert main([*args, "--min-face", "120"]) == 0
    assert "1 aligned, 1 already done" in capsys.readouterr().out
    assert (out / "ann" / "two_face1.png").read_bytes() == kept
    out2 = tmp_path / "every"  # without --min-face's drop: the same name, the same chip
    assert main(["align", str(root), str(out2), "--all-faces", "--detector", "hog", "--no-progress"]) == 0
    assert (out2 / "ann" / "two_face1.png").read_bytes() == kept
    assert sorted(p.name for p in (out2 / "ann").iterdir()) == ["one_face0.jpg", "two_face0.png", "two_face1.png"]


def test_align_bad_input_is_one_line(tmp_path, capsys):
    code = main(["align", str(tmp_path / "missing"), str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file or folder" in err and "Traceback" not in err
    code = main(["align", "--help"])
    assert code == 0 and "--all-faces" in capsys.readouterr().out


def test_align_min_face_must_be_a_number(photos, tmp_path, capsys):
    """--min-face nan passed the `< 0` check and silently kept faces of any size (recorded as NaN)."""
    root, _ = photos
    for bad in ("nan", "inf", "-5"):
        assert (
            main(["align", str(root), str(tmp_path / "o"), "--detector", "hog", "--min-face", bad, "--no-progress"])
            == 2
        )
        assert f"min_face must be a number >= 0, got {float(bad)}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_align_tiny_or_thin_photos_have_no_face_not_a_dlib_error(tmp_path, capsys):
    """A photo too small (or too thin, once downscaled for the CNN) for dlib's CNN detector is a photo without a
    face (skipped, named), not a multi-line dlib "Filter windows must be small enough" failure."""
    src = tmp_path / "in"
    src.mkdir()
    for w, h in ((1, 1), (9, 9), (300, 8), (2000, 9)):
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(src / f"{w}x{h}.png")
    code = main(["align", str(src), str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "4 skipped, 0 failed" in out and "Filter windows" not in out + err
    assert out.count(": no face found") == 4
