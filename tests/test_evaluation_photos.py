"""Published photos (`puface.evaluation.photos`): chips taken back into their photos, defended there and cut
again, and the training-time protocol run on them ([data] photos). The photos are the johns chips with a
50 px border (edge-extended), saved as PNG next to the JPEG chips' names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation_helpers import STANDIN_ATTACK, STANDIN_EMBEDDER, register_standins
from puface.align import extract_chip
from puface.defenses import create_defense
from puface.defenses.base import NoDefense
from puface.evaluation.photos import PhotoPath
from puface.experiments import load_config, run_experiment
from puface.utils.errors import PufaceError

pytest.importorskip("dlib")

BORDER = 50


@pytest.fixture(scope="module")
def johns_photos(johns_dir, tmp_path_factory):
    """(chips root: 3 johns people, photos root): every chip as a 250 px 'photo' (PNG)."""
    tmp = tmp_path_factory.mktemp("photos")
    chips, photos = tmp / "chips", tmp / "photos"
    for person in sorted(p for p in johns_dir.iterdir() if p.is_dir())[:3]:
        (chips / person.name).mkdir(parents=True)
        (photos / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg")):
            shutil.copy(f, chips / person.name / f.name)
            a = np.asarray(Image.open(f).convert("RGB"))
            Image.fromarray(np.pad(a, ((BORDER, BORDER), (BORDER, BORDER), (0, 0)), mode="edge")).save(
                photos / person.name / f"{f.stem}.png"
            )
    return chips, photos


def _chip(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_natural_chip_publishes_its_photo_unchanged_and_comes_back(johns_photos):
    chips, photos = johns_photos
    path = PhotoPath(photos, chips)
    chip = sorted(chips.glob("*/*.jpg"))[0]
    assert path.photo_for(chip) == photos / chip.parent.name / f"{chip.stem}.png"  # another extension is found
    nat = _chip(chip)
    photo = np.asarray(Image.open(path.photo_for(chip)).convert("RGB"))
    assert np.array_equal(path.publish(chip, nat, nat), photo)
    again = path.cut(chip, photo).astype(float)
    assert again.shape == nat.shape
    # the face is found and cut again where the chip was (a fresh alignment: a pixel or so of shift)
    assert np.corrcoef(again.ravel(), nat.ravel().astype(float))[0, 1] > 0.9


def test_published_photos_can_be_re_encoded_as_a_photo_site_does(johns_photos):
    chips, photos = johns_photos
    chip = sorted(chips.glob("*/*.jpg"))[3]
    nat = _chip(chip)
    photo = PhotoPath(photos, chips).publish(chip, nat, nat)
    q75, q30 = (PhotoPath(photos, chips, jpeg=q).publish(chip, nat, nat).astype(float) for q in (75, 30))
    err = lambda a: np.abs(a - photo).mean()  # noqa: E731
    assert q75.shape == photo.shape and 0.0 < err(q75) < err(q30) < 10.0
    assert PhotoPath(photos, chips, jpeg=75).config["jpeg"] == 75 and "jpeg" not in PhotoPath(photos, chips).config
    for bad in (0, 96, 75.0, True):
        with pytest.raises(PufaceError, match="integer in 1..95"):
            PhotoPath(photos, chips, jpeg=bad)


def test_a_smooth_change_survives_the_round_trip_and_a_one_pixel_pattern_does_not(johns_photos):
    """Publishing, seen through the photo's own alignment (a fresh one adds a pixel or so of jitter)."""
    chips, photos = johns_photos
    path = PhotoPath(photos, chips)
    chip = sorted(chips.glob("*/*.jpg"))[1]
    nat = _chip(chip).astype(np.int16)
    yy, xx = np.mgrid[0:150, 0:150]
    smooth = (12 * np.sin(xx / 9.0) * np.cos(yy / 11.0))[..., None].repeat(3, 2)
    checker = (((yy + xx) % 2) * 2 - 1)[..., None].repeat(3, 2) * 12.0
    photo, face = path._natural(path.photo_for(chip))
    base = extract_chip(photo, face.transform).astype(float)
    inner = (slice(20, 130), slice(20, 130))
    out = {}
    for name, change in (("smooth", smooth), ("checker", checker)):
        cloaked = np.clip(nat + change.round(), 0, 255).astype(np.uint8)
        got = extract_chip(path.publish(chip, nat.astype(np.uint8), cloaked), face.transform).astype(float) - base
        want = cloaked.astype(float) - nat
        out[name] = (np.corrcoef(got[inner].ravel(), want[inner].ravel())[0, 1],
                     np.abs(got[inner]).mean() / np.abs(want[inner]).mean())
    assert out["smooth"][0] > 0.95 and 0.8 < out["smooth"][1] < 1.2, out
    assert out["checker"][1] < 0.6, out  # resampling through photo pixels takes most of a Nyquist pattern


def test_a_defense_runs_on_the_whole_photo_and_changes_only_near_the_face(johns_photos):
    chips, photos = johns_photos
    path = PhotoPath(photos, chips)
    chip = sorted(chips.glob("*/*.jpg"))[2]
    photo = np.asarray(Image.open(path.photo_for(chip)).convert("RGB"))
    blurred = path.photo_defense(create_defense("blur:sigma=2"))([photo])[0]
    assert blurred.shape == photo.shape and not np.array_equal(blurred, photo)
    assert np.array_equal(blurred[:10, :10], photo[:10, :10])  # far from the face: untouched
    assert path.photo_defense(NoDefense())([photo])[0] is photo
    nat = torch.from_numpy(_chip(chip)).permute(2, 0, 1)[None]
    cut = path(create_defense("blur:sigma=2"), [chip], nat, nat)
    plain = path(NoDefense(), [chip], nat, nat)
    grad = lambda t: (t.float()[..., 1:] - t.float()[..., :-1]).abs().mean().item()  # noqa: E731
    assert cut.shape == nat.shape and cut.dtype == torch.uint8 and grad(cut) < 0.8 * grad(plain)


def test_a_chip_without_its_photo_is_a_clear_error(johns_photos, tmp_path):
    chips, photos = johns_photos
    with pytest.raises(PufaceError, match="no source photo .*John"):
        PhotoPath(tmp_path, chips).photo_for(sorted(chips.glob("*/*.jpg"))[0])
    with pytest.raises(PufaceError, match="photo folder not found"):
        PhotoPath(tmp_path / "nope", chips)


CONFIG = f"""
name = "photos"
seeds = [0]

[data]
root = "{{chips}}"
photos = "{{photos}}"
image_size = 150

[users]
count = 1

[[attacks]]
name = "none"

[[attacks]]
name = "{STANDIN_ATTACK}"
label = "checker"
embedders = ["{STANDIN_EMBEDDER}"]
amplitude = 0.05

[victims]
embedders = ["{STANDIN_EMBEDDER}"]

[[trainers]]
name = "nn"

[[defenses]]
name = "none"

[[defenses]]
name = "blur"
sigma = 1.0

[run]
cache = false

[detection]
enabled = false
"""


def test_the_protocol_trains_on_published_photos(johns_photos, tmp_path):
    register_standins()
    chips, photos = johns_photos
    cfg_path = tmp_path / "photos.toml"
    cfg_path.write_text(CONFIG.replace("{chips}", str(chips)).replace("{photos}", str(photos)))
    res = run_experiment(load_config(cfg_path), tmp_path / "out", progress=False, echo=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 2 * 2  # attacks x defenses (1 user, 1 victim, 1 trainer)
    quality = {
        (q["attack"], q["defense"]): q
        for q in json.loads((tmp_path / "out" / "results.json").read_text())["image_quality"]
    }
    # the natural training photos were cut again from their photos, not passed through as chips
    assert 15.0 < quality["clean", "none"]["psnr_mean"] < 99.0
    # what the trainer got for a cloaked photo without defense: the face cut again from the published photo
    ex = next((tmp_path / "out" / "examples" / "0").glob("*/checker"))
    cloaked, trained = (np.asarray(Image.open(ex / f"{k}_0.png")).astype(float) for k in ("cloaked", "defense-none"))
    assert trained.shape == cloaked.shape and not np.array_equal(trained, cloaked)
    assert np.corrcoef(trained.ravel(), cloaked.ravel())[0, 1] > 0.8
    assert res.summary


def test_a_photo_replaced_under_its_name_is_not_served_from_the_cache(johns_photos, tmp_path, monkeypatch):
    """Published and defended faces are cached by the content of their photo too, not only the folder's name."""
    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    chips, photos = johns_photos
    mine = tmp_path / "photos"
    shutil.copytree(photos, mine)
    cfg_path = tmp_path / "photos.toml"
    cfg_path.write_text(
        CONFIG.replace("{chips}", str(chips)).replace("{photos}", str(mine)).replace("cache = false", "cache = true")
    )

    def clean_psnr(out: str) -> float:
        run_experiment(load_config(cfg_path), tmp_path / out, progress=False, echo=lambda s: None)
        quality = json.loads((tmp_path / out / "results.json").read_text())["image_quality"]
        return next(q["psnr_mean"] for q in quality if (q["attack"], q["defense"]) == ("clean", "none"))

    first = clean_psnr("a")
    assert clean_psnr("b") == first  # same photos: the cache serves them (and gives the same numbers)
    for f in mine.rglob("*.png"):  # the same names, other photos: brighter
        a = np.asarray(Image.open(f).convert("RGB")).astype(np.int16)
        Image.fromarray(np.clip(a + 40, 0, 255).astype(np.uint8)).save(f)
    assert clean_psnr("c") < first - 3.0


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "protocol = \"query\"\n" + t, "training-time protocol only"),
        (
            lambda t: t.replace('name = "blur"\nsigma = 1.0', 'name = "unmask"'),
            "group-wise defenses are not run on published photos",
        ),
        (
            lambda t: t.replace('photos = "', 'photos_jpeg = 75\n# photos = "'),
            "photos_jpeg re-encodes published photos: it needs",
        ),
    ],
)
def test_published_photos_refuse_what_they_cannot_run(johns_photos, tmp_path, edit, message):
    register_standins()
    chips, photos = johns_photos
    cfg_path = tmp_path / "bad.toml"
    cfg_path.write_text(edit(CONFIG.replace("{chips}", str(chips)).replace("{photos}", str(photos))))
    with pytest.raises(PufaceError, match=message):
        run_experiment(load_config(cfg_path), tmp_path / "out", progress=False, echo=lambda s: None)


def test_evaluate_cli_trains_on_published_photos(johns_photos, tmp_path, capsys):
    from puface.cli import main

    register_standins()
    chips, photos = johns_photos
    args = [
        "evaluate",
        "--data",
        str(chips),
        "--users",
        "1",
        "--attack",
        f"{STANDIN_ATTACK}:embedders={STANDIN_EMBEDDER}",
        "--victim",
        STANDIN_EMBEDDER,
        "--trainer",
        "nn",
        "--defense",
        "none",
        "--no-detect",
        "--no-progress",
    ]
    assert (
        main(
            args
            + [
                "--photos",
                str(photos),
                "--photos-jpeg",
                "85",
                "--out",
                str(tmp_path / "o"),
                "--save-config",
                str(tmp_path / "c.toml"),
            ]
        )
        == 0
    )
    saved = load_config(tmp_path / "c.toml")
    assert saved.data["photos"] == str(photos) and saved.data["photos_jpeg"] == 85
    assert "re-encoded as JPEG q85" in capsys.readouterr().out
    assert main(args + ["--photos", str(photos), "--protocol", "query", "--out", str(tmp_path / "q")]) == 2
    assert "training-time protocol only" in capsys.readouterr().err
