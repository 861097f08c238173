"""Sideways and upside-down photos without an EXIF orientation (`FaceDetector(rotations="auto")`, the default):
a face not found upright is searched in the photo turned 90, 270, 180 degrees clockwise, cut upright and its change
pasted back into the photo as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from puface.align import FaceAligner, FaceDetector, align_adapter  # noqa: E402
from puface.align.detect import WEAK_CNN_SCORE, WEAK_HOG_SCORE, turn_image, unturn_points  # noqa: E402
from puface.align.geometry import apply_affine  # noqa: E402
from puface.io.jobs import FileJob, LoadedImage, Outcome  # noqa: E402
from puface.utils.errors import PufaceError  # noqa: E402

from test_align_support import embed_chip  # noqa: E402

# PIL's transposes turn counter-clockwise: a photo stored so turned needs `turn` degrees clockwise to stand upright
STORED = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def upright(johns_dir):
    chip = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[0]).convert("RGB"))
    return embed_chip(chip, (300, 260), 5, 1.2, (120, 140))[0]  # not square: a turn changes the shape


def johns_photo(johns_dir, k: int, angle: float) -> np.ndarray:
    """johns chip number `k` placed upright (tilted `angle` degrees) into a 260x300 canvas."""
    chip = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[k]).convert("RGB"))
    return embed_chip(chip, (300, 260), angle, 1.2, (120, 140))[0]


def stored(photo: np.ndarray, turn: int) -> np.ndarray:
    """`photo` as a camera without an orientation tag would store it: turned `turn` degrees counter-clockwise."""
    return np.asarray(Image.fromarray(photo).transpose(STORED[turn]))


def item(image: np.ndarray, name: str = "p.png") -> LoadedImage:
    return LoadedImage(FileJob(Path("/in") / name, Path("/out") / name, Path(name)), image, None, None, "PNG")


def brighten(items: list[LoadedImage]) -> list[Outcome]:
    return [Outcome.ok(np.clip(it.image.astype(int) + 30, 0, 255).astype(np.uint8)) for it in items]


def count_boxes(monkeypatch) -> list[str]:
    """The detector runs (`FaceDetector._boxes` calls, by kind) from now on."""
    calls: list[str] = []
    boxes = FaceDetector._boxes

    def counted(self, image, kind):
        calls.append(kind)
        return boxes(self, image, kind)

    monkeypatch.setattr(FaceDetector, "_boxes", counted)
    return calls


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_unturn_points_map_pixels_exactly(turn):
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    view = turn_image(img, turn)
    ys, xs = np.mgrid[0:view.shape[0], 0:view.shape[1]]
    back = unturn_points(np.stack([xs.ravel(), ys.ravel()], 1), turn, 5, 7).astype(int)
    assert (img[back[:, 1], back[:, 0]] == view.reshape(-1, 3)).all()


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_turned_face_is_found_by_default_and_not_with_rotations_off(upright, turn):
    photo = stored(upright, turn)
    assert not FaceAligner(150, FaceDetector("hog", rotations="off")).align(photo).faces
    pf = FaceAligner(150, FaceDetector("hog")).align(photo)
    up = FaceAligner(150, FaceDetector("hog")).align(upright)
    assert len(pf.faces) == 1 and pf.turn == turn and pf.faces[0].face.turn == turn
    assert pf.faces[0].to_json()["turned"] == turn and "turned" not in up.faces[0].to_json()
    # the chip is cut upright from the photo as it is: the chip of the upright photo (bilinear sampling of the
    # same pixels; dlib's truncation to uint8 may differ by one)
    assert np.abs(pf.faces[0].chip.astype(int) - up.faces[0].chip).max() <= 1
    assert pf.faces[0].size_px == pytest.approx(up.faces[0].size_px, abs=1e-6)


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_adapter_pastes_the_change_back_into_the_turned_photo(upright, turn):
    photo = stored(upright, turn)
    [out] = align_adapter(brighten)([item(photo)])
    [ref] = align_adapter(brighten)([item(upright)])
    assert out.status == "ok" and out.stats["turned"] == turn and ref.stats["turned"] == 0
    assert out.image.shape == photo.shape and out.image.dtype == np.uint8
    # the same as purifying the upright photo and turning the result back
    diff = np.abs(turn_image(out.image, turn).astype(int) - ref.image)
    assert diff.max() <= 2 and diff.mean() < 0.05
    # and only inside the face chip's footprint in the photo as it is
    tf = FaceAligner(150, FaceDetector()).align(photo).faces[0].transform
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    pc = apply_affine(tf.image_to_chip, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    inside = (pc > 0).all(-1) & (pc < 149).all(-1)
    changed = (out.image != photo).any(-1)
    assert changed.sum() > 2000 and not (changed & ~inside).any()


def test_upright_photos_cost_nothing_extra_and_come_out_identical(upright, monkeypatch):
    off = align_adapter(brighten, rotations="off")([item(upright)])[0]
    calls = count_boxes(monkeypatch)
    auto = align_adapter(brighten)([item(upright)])[0]
    assert calls == ["hog"]  # one detector run, as with rotations off
    assert auto.image.tobytes() == off.image.tobytes()
    assert auto.stats == {**off.stats, "turned": 0} and "turned" not in off.stats


def test_a_photo_without_a_face_tries_three_hog_turns_before_the_cnn(monkeypatch):
    blank = np.random.default_rng(0).integers(100, 140, (200, 260, 3)).astype(np.uint8)
    calls = count_boxes(monkeypatch)
    [o] = align_adapter(brighten)([item(blank)])
    assert o.status == "copy" and o.reason == "no face found" and o.stats["turned"] == 0
    assert calls == ["hog"] * 4 + ["cnn"]
    calls.clear()
    [o] = align_adapter(brighten, rotations="off")([item(blank)])
    assert o.reason == "no face found" and "turned" not in o.stats and calls == ["hog", "cnn"]


def test_an_upside_down_face_that_hog_finds_weakly_upright_is_turned(johns_dir):
    up = johns_photo(johns_dir, 17, 5)
    down = stored(up, 180)
    # upright only: HOG finds the upside-down face with a low score, and the chip is cut upside down
    before = FaceAligner(150, FaceDetector("hog", rotations="off")).align(down)
    assert before.turn == 0 and before.faces and before.faces[0].face.score < WEAK_HOG_SCORE
    pf = FaceAligner(150, FaceDetector("hog")).align(down)
    ref = FaceAligner(150, FaceDetector("hog")).align(up)
    assert pf.turn == 180 and len(pf.faces) == 1 and pf.faces[0].face.score > WEAK_HOG_SCORE
    assert np.abs(pf.faces[0].chip.astype(int) - ref.faces[0].chip).max() <= 1


def test_a_sideways_face_the_cnn_finds_weakly_upright_is_turned_and_a_clear_upright_face_costs_one_run(
        johns_dir, monkeypatch):
    """With --detector cnn alone, turns were tried only when the CNN found nothing upright, while HOG also tries them
    below `WEAK_HOG_SCORE`; but the CNN finds many sideways faces upright (confidence 0.0-1.26 on 50 LFW photos,
    bench/results/align-rotations-cnn.md), so their chips came out sideways. Now a best upright confidence below
    `WEAK_CNN_SCORE` has the turns tried too, as HOG's rule; a clear upright face (>= 1.0) is one CNN run, as before."""
    up = johns_photo(johns_dir, 1, 5)  # the CNN: 1.06 upright; stored turned 90 degrees, 0.43 as if upright
    side = stored(up, 90)
    before = FaceAligner(150, FaceDetector("cnn", rotations="off")).align(side)
    assert before.turn == 0 and before.faces and before.faces[0].face.score < WEAK_CNN_SCORE
    pf = FaceAligner(150, FaceDetector("cnn")).align(side)
    calls = count_boxes(monkeypatch)
    ref = FaceAligner(150, FaceDetector("cnn")).align(up)
    assert calls == ["cnn"] and ref.turn == 0 and ref.faces[0].face.score > WEAK_CNN_SCORE
    assert pf.turn == 90 and len(pf.faces) == 1 and pf.faces[0].face.score > WEAK_CNN_SCORE
    assert np.abs(pf.faces[0].chip.astype(int) - ref.faces[0].chip).max() <= 1  # the same chip, cut upright


def test_a_weak_upright_face_stays_unless_a_turn_scores_higher(johns_dir, monkeypatch):
    up = johns_photo(johns_dir, 8, 35)  # HOG: 0.56 upright, a false 0.15 face turned 270 degrees
    off = align_adapter(brighten, rotations="off")([item(up)])[0]
    calls = count_boxes(monkeypatch)
    auto = align_adapter(brighten)([item(up)])[0]
    assert calls == ["hog"] * 4  # the three turns tried, none better
    assert auto.stats["turned"] == 0 and auto.image.tobytes() == off.image.tobytes()


def test_rotations_setting_is_checked_and_recorded_only_when_on():
    assert FaceDetector("hog").config["rotations"] == "auto"
    assert "rotations" not in FaceDetector("hog", rotations="off").config  # a folder made before resumes with off
    with pytest.raises(PufaceError, match="unknown rotations 'sometimes'"):
        FaceDetector("hog", rotations="sometimes")


@pytest.fixture(scope="module")
def photo_folder(upright, tmp_path_factory):
    """IN/up.png (upright face), IN/side.png (the same stored turned 90 degrees), IN/none.png (no face)."""
    root = tmp_path_factory.mktemp("turned")
    Image.fromarray(upright).save(root / "up.png")
    Image.fromarray(stored(upright, 90)).save(root / "side.png")
    Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(root / "none.png")
    return root


def test_purify_align_purifies_a_sideways_photo_and_says_so(photo_folder, tmp_path, capsys):
    from puface.cli import main

    side = np.asarray(Image.open(photo_folder / "side.png"))
    out, stats = tmp_path / "out", tmp_path / "stats.csv"
    args = ["purify", "--align", "--no-progress", "--device", "cpu", str(photo_folder)]
    assert main([*args, str(out), "--stats", str(stats)]) == 0, capsys.readouterr().err
    assert "side.png: no face found" not in capsys.readouterr().out
    got = np.asarray(Image.open(out / "side.png"))
    assert got.shape == side.shape and (got != side).any(-1).sum() > 2000
    rows = {r["file"]: r for r in __import__("csv").DictReader(open(stats))}
    assert (rows["side.png"]["turned"], rows["up.png"]["turned"], rows["none.png"]["turned"]) == ("90", "0", "0")
    assert rows["side.png"]["faces_processed"] == "1" and rows["none.png"]["status"] == "copy"
    # off: the behaviour before rotations: HOG finds nothing, the CNN finds the sideways face and its chip is cut
    # sideways (landmarks fitted as if upright), so the output differs; no turned column
    off, stats_off = tmp_path / "off", tmp_path / "stats-off.csv"
    assert main([*args, str(off), "--rotations", "off", "--stats", str(stats_off)]) == 0
    capsys.readouterr()
    assert "turned" not in open(stats_off).readline()
    assert (np.asarray(Image.open(off / "side.png")) != got).any()
    # the upright photo comes out the same either way
    assert (off / "up.png").read_bytes() == (out / "up.png").read_bytes()
    # a folder made upright only is not resumed with rotations auto (its sideways photos were copied unpurified)
    assert main([*args, str(off), "--rotations", "auto"]) == 2
    assert "differs in: align.rotations" in capsys.readouterr().err
    assert main(["purify", "--no-progress", "--rotations", "off", str(photo_folder), str(tmp_path / "x")]) == 2
    assert "--rotations needs --align" in capsys.readouterr().err


def test_purify_report_has_the_turned_column_of_purify_stats(photo_folder, tmp_path, capsys):
    """`purify --align --stats` has a column turned (degrees clockwise a photo was turned to find its faces), but
    `purify --align --report`'s detection.csv dropped it (its columns were fixed without it): the same photos now
    give the same column there, and none with --rotations off, as --stats; a detection.csv written before is refused
    with one line, not read with the wrong columns."""
    import csv

    from puface.cli import main

    out = tmp_path / "out"
    args = ["purify", "--align", "--report", "--no-progress", "--device", "cpu", str(photo_folder)]
    assert main([*args, str(out)]) == 0, capsys.readouterr().err
    rows = {r["path"]: r for r in csv.DictReader(open(out / "detection.csv"))}
    assert (rows["side.png"]["turned"], rows["up.png"]["turned"], rows["none.png"]["turned"]) == ("90", "0", "0")
    assert rows["side.png"]["faces"] == "1" and rows["none.png"]["faces"] == "0"
    off = tmp_path / "off"
    assert main([*args, str(off), "--rotations", "off"]) == 0
    assert "turned" not in open(off / "detection.csv").readline()
    capsys.readouterr()
    old = out / "detection.csv"  # as written before the column: resumed, it is refused
    table = list(csv.reader(open(old, newline="")))
    at = table[0].index("turned")
    with open(old, "w", newline="") as f:
        csv.writer(f).writerows([c for j, c in enumerate(r) if j != at] for r in table)
    assert main([*args, str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "detection.csv: written by an earlier puface (no 'turned' column)" in err and "\n" not in err
    # the remedy it names is purify's (--no-resume); purify has no --restart (detect's), which it named before
    assert "--no-resume" in err and "--restart" not in err, err
    assert main([*args, str(out), "--no-resume"]) == 0
    assert "turned" in open(old).readline()


def test_detect_and_align_commands_say_the_face_was_found_turned(photo_folder, tmp_path, capsys):
    import csv
    import json

    from puface.cli import main

    scores = tmp_path / "scores.csv"
    assert main(["detect", "--align", "--no-progress", "--device", "cpu", str(photo_folder), "--out", str(scores)]) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(scores))}
    assert rows["side.png"]["faces"] == "1" and rows["up.png"]["faces"] == "1" and rows["none.png"]["faces"] == "0"
    assert rows["side.png"]["note"].startswith("face found with the photo turned 90 degrees clockwise")
    assert "turned" not in rows["up.png"]["note"]
    # the column turned, as purify --align --report/--stats and align.csv have it (it was in the note alone)
    assert (rows["side.png"]["turned"], rows["up.png"]["turned"], rows["none.png"]["turned"]) == ("90", "0", "0")
    # scored upright: the sideways photo's score is the upright photo's (the same chip, to one grey level)
    assert float(rows["side.png"]["score"]) == pytest.approx(float(rows["up.png"]["score"]), abs=0.05)
    assert main(["detect", "--align", "--rotations", "off", "--no-progress", "--device", "cpu", str(photo_folder),
                 "--out", str(scores)]) == 2
    assert "scored with --rotations auto, this run --rotations off" in capsys.readouterr().err
    off = tmp_path / "off.csv"
    assert main(["detect", "--align", "--rotations", "off", "--no-progress", "--device", "cpu", str(photo_folder),
                 "--out", str(off)]) == 0
    assert "turned" not in open(off).readline()
    table = list(csv.reader(open(scores, newline="")))  # a scores CSV from before the column: refused, one line
    at = table[0].index("turned")
    with open(scores, "w", newline="") as f:
        csv.writer(f).writerows([c for j, c in enumerate(r) if j != at] for r in table)
    capsys.readouterr()
    assert main(["detect", "--align", "--no-progress", "--device", "cpu", str(photo_folder), "--out", str(scores)]) == 2
    err = capsys.readouterr().err.strip()
    assert "written by an earlier puface (no 'turned' column); pass --restart" in err and "\n" not in err

    out = tmp_path / "chips"
    assert main(["align", "--no-progress", str(photo_folder), str(out)]) == 0
    rows = {r["file"]: r for r in csv.DictReader(open(out / "align.csv"))}
    assert rows["side.png"]["turned"] == "90" and json.loads(rows["side.png"]["chips"])[0]["turned"] == 90
    up, side = (np.asarray(Image.open(out / n), int) for n in ("up.png", "side.png"))
    assert np.abs(up - side).max() <= 1  # the same chip, cut upright


def test_a_weak_upright_face_beside_a_turned_one_is_kept(johns_dir):
    """Two people, one upright (HOG 0.43: tilted 38 degrees) and one stored sideways (1.7 turned 90 degrees): the
    turn wins, but the upright face, purified with rotations off, must not be dropped (it would stay cloaked)."""
    tilted = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[8]).convert("RGB"))
    side = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[11]).convert("RGB").transpose(STORED[90]))
    photo = embed_chip(side, (300, 420), 0, 1.0, (320, 150), canvas=embed_chip(tilted, (300, 420), 38, 1.2,
                                                                                (110, 150))[0])[0]
    [off] = FaceAligner(150, FaceDetector("hog", rotations="off")).align(photo).faces
    assert off.face.score < WEAK_HOG_SCORE and off.face.center[0] < 210
    pf = FaceAligner(150, FaceDetector("hog")).align(photo)
    assert pf.turn == 90 and sorted(f.face.turn for f in pf.faces) == [0, 90]
    kept = [f for f in pf.faces if f.face.turn == 0][0]
    assert kept.chip.tobytes() == off.chip.tobytes()
    [o] = align_adapter(brighten)([item(photo)])
    changed = (o.image != photo).any(-1)
    assert o.stats["faces_processed"] == 2 and changed[:, :200].sum() > 2000 and changed[:, 220:].sum() > 2000


def test_an_upside_down_face_found_weakly_upright_is_not_kept_twice(johns_dir):
    down = stored(johns_photo(johns_dir, 17, 5), 180)
    pf = FaceAligner(150, FaceDetector("hog")).align(down)
    assert [f.face.turn for f in pf.faces] == [180] and pf.found == 1


def test_a_folder_aligned_upright_only_resumes_so_when_rotations_is_not_given(photo_folder, tmp_path, capsys):
    """A half-done job made before --rotations existed (its record has none: as --rotations off records) goes on
    upright only when the flag is not given, saying so in one line, rather than refusing its rerun."""
    import json

    from puface.cli import main

    out = tmp_path / "out"
    args = ["purify", "--align", "--no-progress", "--device", "cpu", str(photo_folder), str(out)]
    assert main([*args, "--rotations", "off"]) == 0
    (out / "side.png").unlink()  # not done yet
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "made with faces searched upright only" in err and "resuming with --rotations off" in err
    assert "--no-resume redoes it with auto" in err
    assert "rotations" not in json.loads((out / "purify_config.json").read_text())["align"]

    scores = tmp_path / "scores.csv"
    det = ["detect", "--align", "--no-progress", "--device", "cpu", str(photo_folder), "--out", str(scores)]
    assert main([*det, "--rotations", "off"]) == 0
    run = scores.with_name("scores-run.json")
    record = json.loads(run.read_text())
    record.pop("rotations")  # as a run file written before --rotations
    run.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(det) == 0
    assert "resuming with --rotations off (--restart redoes it with auto)" in capsys.readouterr().err

    chips = tmp_path / "chips"
    assert main(["align", "--no-progress", "--rotations", "off", str(photo_folder), str(chips)]) == 0
    capsys.readouterr()
    assert main(["align", "--no-progress", str(photo_folder), str(chips)]) == 0
    assert "resuming with --rotations off" in capsys.readouterr().err
    assert main(["align", "--no-progress", "--rotations", "auto", str(photo_folder), str(chips)]) == 2


def test_cloak_resumes_a_folder_aligned_before_rotations_upright_only(tmp_path, capsys):
    """`puface cloak --align` reads its own record (cloak_config.json: `align` without `rotations` before them)."""
    import json

    from puface.cli.options import check_rotations

    record = tmp_path / "cloak_config.json"
    record.write_text(json.dumps({"align": {"align": True, "largest_face": False}}))
    assert check_rotations(None, True, record, resume=True) == "off"
    assert "cloak_config.json: made with faces searched upright only" in capsys.readouterr().err
    assert check_rotations(None, True, record, resume=False) == "auto"  # --no-resume redoes it with auto
    assert check_rotations("auto", True, record, resume=True) == "auto"  # given: the job's settings check refuses it
    record.write_text(json.dumps({"align": {"align": True, "largest_face": False, "rotations": "auto"}}))
    assert check_rotations(None, True, record, resume=True) == "auto" and not capsys.readouterr().err


def test_rotations_have_one_home_recorded_only_when_on_and_read_back_as_off_without(photo_folder, tmp_path, capsys):
    """`rotations_entry` writes what every job records of rotations (nothing with "off", so a folder made before them
    resumes; with them on, {"rotations": ...} or a stats row's "turned"), `recorded_rotations` reads it back; each job's
    record and stats columns are what they were before the idiom had one home."""
    import csv
    import json

    from puface.align.detect import recorded_rotations, rotations_entry
    from puface.attacks import create_attack
    from puface.attacks.folder import cloak_folder
    from puface.cli import main
    from puface.purifier.folder import purify_settings

    from purifier_support import visible_purifier
    from test_fawkes import tiny_embedder

    assert rotations_entry("off") == {} and rotations_entry("off", turned=90) == {}
    assert rotations_entry("auto") == {"rotations": "auto"} and rotations_entry("auto", turned=90) == {"turned": 90}
    assert recorded_rotations({"align": True}) == "off" and recorded_rotations({"rotations": "auto"}) == "auto"

    # puface align: the record (the detector's config) and align.csv's "turned" column
    for rotations in ("off", "auto"):
        chips = tmp_path / f"chips-{rotations}"
        assert main(["align", "--no-progress", "--rotations", rotations, str(photo_folder), str(chips)]) == 0
        record = json.loads((chips / "align_config.json").read_text())
        with open(chips / "align.csv", newline="") as f:
            header = next(csv.reader(f))
        assert list(record)[-2:] == (["cnn_max_side", "quality"] if rotations == "off" else ["rotations", "quality"])
        assert ("rotations" in record, "turned" in header) == ((rotations == "auto"),) * 2
    capsys.readouterr()
    assert main(["align", "--no-progress", str(photo_folder), str(tmp_path / "chips-off")]) == 0  # resumes with off
    assert "resuming with --rotations off" in capsys.readouterr().err

    # puface purify --align: the record's "align"
    off, auto = (purify_settings(photo_folder, visible_purifier(), align=True, rotations=r)["align"]
                 for r in ("off", "auto"))
    assert list(off.items()) == [("align", True), ("largest_face", False), ("no_face", "copy")]
    assert list(auto.items()) == [*off.items(), ("rotations", "auto")]
    assert purify_settings(photo_folder, visible_purifier(), rotations="auto")["align"] == {"align": False}

    # puface cloak --align: the record's "align"; a folder made with off resumes
    attack = create_attack("fawkes", mode="custom", steps=1, embedders=[tiny_embedder()], device="cpu")
    for align, rotations, expected in ((True, "off", {}), (True, "auto", {"rotations": "auto"}), (False, "auto", {})):
        out = tmp_path / f"cloak-{align}-{rotations}"
        for _ in range(2):  # the second run resumes the folder the first made
            cloak_folder(photo_folder, out, attack, align=align, rotations=rotations, progress=False)
        record = json.loads((out / "cloak_config.json").read_text())
        assert list(record["align"].items()) == [("align", align), ("largest_face", False), *expected.items()]
