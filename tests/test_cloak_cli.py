"""`puface cloak`: mirrored outputs, stats CSV, config JSON, resume, naming, errors, reproducibility."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from puface.cli import main
from puface.io.images import read_image


# many small tensor ops: one torch thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def dlib_available():
    from puface.models.registry import list_embedders

    if "dlib-resnet29" not in list_embedders():
        pytest.skip("dlib-resnet29 not available")


@pytest.fixture()
def tree(johns_dir, tmp_path):
    """IN/<identity>/<image>.jpg: 2 johns identities x 2 chips (150x150 JPEG)."""
    root = tmp_path / "in"
    for ident in sorted(p.name for p in johns_dir.iterdir() if p.is_dir())[:2]:
        for src in sorted((johns_dir / ident).glob("*.jpg"))[:2]:
            (root / ident).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / ident / src.name)
    return root


FAST = ["--mode", "custom", "--steps", "3", "--surrogate", "dlib-resnet29", "--no-progress", "--device", "cpu"]


def outputs(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))


def test_cloak_mirrors_the_tree_and_records_stats_and_config(tree, tmp_path, capsys, dlib_available):
    out = tmp_path / "out"
    code, stdout, err = run(["cloak", *FAST, str(tree), str(out)], capsys)
    assert code == 0, err
    ins = sorted(p.relative_to(tree).with_suffix(".png").as_posix() for p in tree.rglob("*.jpg"))
    assert outputs(out) == ins
    assert "4 images: 4 cloaked" in stdout
    for rel in ins:
        src = read_image((tree / rel).with_suffix(".jpg")).astype(int)
        dst = read_image(out / rel).astype(int)
        assert dst.shape == src.shape
        assert np.abs(dst - src).max() <= 15  # Fawkes' per-pixel cap, grey levels
    rows = list(csv.DictReader(open(out / "cloak_stats.csv")))
    assert sorted(r["file"] for r in rows) == sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.jpg"))
    for r in rows:
        assert r["status"] == "ok"
        assert 0 < float(r["dssim"]) <= 1.1 * 0.017 + 1e-3
        assert float(r["psnr"]) > 25 and float(r["shift_dlib-resnet29"]) > 0
    cfg = json.loads((out / "cloak_config.json").read_text())
    assert cfg["attack"]["name"] == "fawkes-custom" and cfg["attack"]["steps"] == 3 and cfg["attack"]["seed"] == 0
    assert cfg["attack"]["surrogates"][0]["name"] == "dlib-resnet29"
    assert cfg["naming"] == {"format": "png", "tool_suffix": False}


def test_resume_skips_finished_files(tree, tmp_path, capsys, dlib_available):
    out = tmp_path / "out"
    assert run(["cloak", *FAST, str(tree), str(out)], capsys)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    code, stdout, _ = run(["cloak", *FAST, str(tree), str(out)], capsys)
    assert code == 0 and "0 cloaked, 4 already done" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    victim = sorted(stamps)[0]
    victim.unlink()
    code, stdout, _ = run(["cloak", *FAST, str(tree), str(out)], capsys)
    assert code == 0 and "1 cloaked, 3 already done" in stdout and victim.is_file()
    files = [r["file"] for r in csv.DictReader(open(out / "cloak_stats.csv"))]
    assert len(files) == 4 and len(set(files)) == 4  # the redone image's row replaces its old one
    # another setting into the same folder is refused (it would mix two cloak settings)
    code, _, err = run(["cloak", *FAST, "--seed", "1", str(tree), str(out)], capsys)
    assert code == 2 and "different cloaking setting" in err and "seed" in err


def test_same_seed_same_bytes(tree, tmp_path, capsys, dlib_available):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["cloak", *FAST, str(tree), str(a)], capsys)[0] == 0
    assert run(["cloak", *FAST, "--batch-size", "16", str(tree), str(b)], capsys)[0] == 0
    for rel in outputs(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_tool_names_and_same_format(tree, tmp_path, capsys, dlib_available):
    out = tmp_path / "out"
    code, _, err = run(["cloak", *FAST, "--tool-names", "--format", "same", str(tree), str(out)], capsys)
    assert code == 0, err
    assert "weakens the cloak" in err
    names = sorted(p.name for p in out.rglob("*.jpg"))
    assert len(names) == 4 and all(n.endswith("_cloaked.jpg") for n in names)
    out2 = tmp_path / "lk"
    code, _, err = run(
        [
            "cloak",
            "--attack",
            "lowkey",
            "--steps",
            "2",
            "--perceptual",
            "ssim",
            "--surrogate",
            "dlib-resnet29",
            "--tool-names",
            "--no-progress",
            "--device",
            "cpu",
            str(tree),
            str(out2),
        ],
        capsys,
    )
    assert code == 0, err
    names = sorted(p.name for p in out2.rglob("*.png"))
    assert len(names) == 4 and all(n.endswith("_attacked.png") for n in names)
    rows = list(csv.DictReader(open(out2 / "cloak_stats.csv")))
    assert all(float(r["linf"]) <= 2 * 0.0025 + 0.005 + 1 / 255 for r in rows)


def test_bad_file_fails_alone_and_bad_options_are_one_line(tree, tmp_path, capsys, dlib_available):
    (tree / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, stdout, err = run(["cloak", *FAST, str(tree), str(out)], capsys)
    assert code == 1
    assert "broken.jpg" in err and "4 cloaked" in stdout and "1 failed" in stdout
    assert len(outputs(out)) == 4
    code, _, err = run(["cloak", "--mode", "high", "--th", "0.02", str(tree), str(tmp_path / "x")], capsys)
    assert code == 2 and "--mode custom" in err and "Traceback" not in err
    code, _, err = run(["cloak", "--attack", "lowkey", "--no-fallback", str(tree), str(tmp_path / "w")], capsys)
    assert code == 2 and "Fawkes options" in err
    code, _, err = run(["cloak", "--targeted", "--surrogate", "dlib-resnet29", str(tree), str(tmp_path / "y")], capsys)
    assert code == 2 and "--target-pool" in err
    code, _, err = run(["cloak", *FAST, str(tree), str(tree)], capsys)
    assert code == 2 and "input folder" in err
    code, _, err = run(["cloak", "--surrogate", "no-such-model", str(tree), str(tmp_path / "z")], capsys)
    assert code == 2 and "no-such-model" in err
    (tmp_path / "empty").mkdir()
    code, stdout, err = run(["cloak", *FAST, str(tmp_path / "empty"), str(tmp_path / "e")], capsys)
    assert code == 2 and "empty: no images found" in err and "0 images" not in stdout


def test_targeted_picks_a_target_from_the_pool(tree, johns_dir, tmp_path, capsys, dlib_available):
    pool = tmp_path / "pool"
    for ident in sorted(p.name for p in johns_dir.iterdir() if p.is_dir())[2:]:
        (pool / ident).mkdir(parents=True)
        for src in sorted((johns_dir / ident).glob("*.jpg"))[:3]:
            shutil.copy(src, pool / ident / src.name)
    out = tmp_path / "out"
    code, _, err = run(["cloak", *FAST, "--targeted", "--target-pool", str(pool), str(tree), str(out)], capsys)
    assert code == 0, err
    cfg = json.loads((out / "cloak_config.json").read_text())
    chosen = cfg["targets"]["user_to_target"]
    assert set(chosen) == {p.name for p in tree.iterdir()} and set(chosen.values()) <= {p.name for p in pool.iterdir()}
    assert cfg["attack"]["targeted"] is True and len(outputs(out)) == 4


def test_steps_help_states_the_opom_defaults(capsys):
    """`--steps`' help names OPOM's defaults, its transfer variant's 100 steps too (it said 16 for every OPOM)."""
    from puface.attacks.opom import DFANET_STEPS, OPOMSettings

    text = " ".join(run(["cloak", "--help"], capsys)[1].split())
    assert f"OPOM {OPOMSettings().steps}, its variant dfanet-mfim {DFANET_STEPS}," in text


def test_every_option_has_help(capsys):
    code, out, _ = run(["cloak", "--help"], capsys)
    assert code == 0
    from puface.cli.cloak_cmd import cloak

    for p in cloak.params:
        if p.param_type_name == "option":
            assert p.help, p.name
    for opt in (
        "--attack",
        "--mode",
        "--no-fallback",
        "--surrogate",
        "--seed",
        "--batch-size",
        "--device",
        "--threads",
        "--tool-names",
        "--format",
        "--resume",
        "--align",
        "--largest-face",
        "--target-pool",
    ):
        assert opt in out


def test_align_cloaks_the_face_of_a_photo_and_skips_photos_without_one(johns_dir, tmp_path, capsys, dlib_available):
    pytest.importorskip("puface.align")
    pytest.importorskip("dlib")
    from puface.io.images import write_image

    chip = read_image(sorted(johns_dir.glob("*/*.jpg"))[0])
    photo = np.full((320, 300, 3), 128, np.uint8)
    photo[80:230, 70:220] = chip
    write_image(tmp_path / "in" / "u" / "photo.png", photo)
    write_image(tmp_path / "in" / "u" / "blank.png", np.full((200, 200, 3), 90, np.uint8))
    out = tmp_path / "out"
    code, stdout, err = run(["cloak", *FAST, "--align", str(tmp_path / "in"), str(out)], capsys)
    assert code == 0, err
    assert "1 cloaked" in stdout and "no face found" in err
    assert outputs(out) == ["u/photo.png"]
    got = read_image(out / "u" / "photo.png").astype(int)
    assert got.shape == photo.shape
    assert np.abs(got - photo).max() <= 16 and np.abs(got - photo).max() > 0
    assert (got[:40] == photo[:40]).all()  # far from the face nothing changes
    rows = {r["file"]: r for r in csv.DictReader(open(out / "cloak_stats.csv"))}
    assert rows["u/photo.png"]["faces"] == "1" and float(rows["u/photo.png"]["shift_dlib-resnet29"]) > 0


def test_through_purifier_is_an_adaptive_cloak(tree, tmp_path, capsys, dlib_available):
    from puface.purifier.model import Purifier

    ckpt = Purifier({"channels": 4, "depth": 2, "downsample": 1}).save(tmp_path / "p.safetensors")
    out = tmp_path / "out"
    code, _, err = run(
        ["cloak", *FAST, "--through-purifier", str(ckpt), "--gradient", "bpda", str(tree), str(out)], capsys
    )
    assert code == 0, err
    assert len(outputs(out)) == 4
    cfg = json.loads((out / "cloak_config.json").read_text())
    assert cfg["attack"]["surrogates"][0]["name"] == "dlib-resnet29|puface-p-bpda"
    code, _, err = run(["cloak", "--mode", "custom", "--steps", "3", "--through-purifier", "default", str(tree),
                        str(tmp_path / "x")], capsys)
    assert code == 2 and "--surrogate" in err and "Traceback" not in err
    code, _, err = run(["cloak", *FAST, "--gradient", "bpda", str(tree), str(tmp_path / "y")], capsys)
    assert code == 2 and "--through-purifier" in err


def test_geometry_square112_is_recorded_with_its_budget(tree, tmp_path, capsys, dlib_available):
    out = tmp_path / "out"
    code, stdout, err = run(["cloak", *FAST, "--geometry", "square112", str(tree), str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "cloak_config.json").read_text())["attack"]["geometry"] == "square112"
    rows = list(csv.DictReader((out / "cloak_stats.csv").open()))
    assert len(rows) == 4 and all(0 < float(r["dssim_work"]) for r in rows)
    code, _, err = run(
        ["cloak", "--attack", "lowkey", "--geometry", "square112", str(tree), str(tmp_path / "g")], capsys
    )
    assert code == 2 and "Fawkes options" in err


def test_cap_project_is_recorded_and_fawkes_only(tree, tmp_path, capsys, dlib_available):
    out = tmp_path / "out"
    code, _, err = run(["cloak", *FAST, "--cap", "project", str(tree), str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "cloak_config.json").read_text())["attack"]["cap"] == "project"
    code, _, err = run(["cloak", "--attack", "lowkey", "--cap", "project", str(tree), str(tmp_path / "c")], capsys)
    assert code == 2 and "Fawkes options" in err and "Traceback" not in err


def test_evaluate_reads_the_surrogates_of_a_puface_cloak_folder(johns_dir, tmp_path, capsys, dlib_available):
    """`evaluate --cloaked DIR` on a `puface cloak` folder: the victim that was the surrogate is a white-box run,
    whether the record sits at the folder's top or in the person's own folder (a user cloaks their own photos: it
    was read only at the top, so such cloaks counted as oblivious); the same cloaks without the record (another
    tool's folder), or with identity folders recording other surrogates, count as oblivious."""
    data = tmp_path / "data"
    idents = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())[:3]
    for ident in idents:
        (data / ident).mkdir(parents=True)
        for src in sorted((johns_dir / ident).glob("*.jpg"))[:4]:
            shutil.copy(src, data / ident / src.name)
    user = idents[0]
    cloaked = tmp_path / "cloaked"
    code, _, err = run(["cloak", *FAST, str(data / user), str(cloaked / user)], capsys)
    assert code == 0, err
    mixed = tmp_path / "mixed"
    shutil.copytree(cloaked, mixed)
    (mixed / idents[1]).mkdir()
    record = json.loads((cloaked / user / "cloak_config.json").read_text())
    record["attack"]["surrogates"] = [{**record["attack"]["surrogates"][0], "name": "sface"}]
    (mixed / idents[1] / "cloak_config.json").write_text(json.dumps(record))
    top = tmp_path / "top"
    shutil.copytree(cloaked, top)
    shutil.move(str(top / user / "cloak_config.json"), str(top / "cloak_config.json"))
    bare = tmp_path / "bare"
    shutil.copytree(cloaked, bare, ignore=shutil.ignore_patterns("cloak_config.json", "cloak_stats.csv"))

    def settings(folder, out):
        code, _, err = run(["evaluate", "--data", str(data), "--user", user, "--cloaked", str(folder),
                            "--victim", "dlib-resnet29", "--defense", "none", "--trainer", "nn", "--no-detect",
                            "--no-progress", "--device", "cpu", "--out", str(out)], capsys)
        assert code == 0, err
        rows = list(csv.DictReader(open(out / "results.csv")))
        return {r["setting"] for r in rows if r["attack"].startswith("folder-")}

    assert settings(cloaked, tmp_path / "run1") == {"white-box"}
    assert settings(top, tmp_path / "run3") == {"white-box"}
    assert settings(bare, tmp_path / "run2") == {"oblivious"}
    assert settings(mixed, tmp_path / "run4") == {"oblivious"}


def test_cloak_keeps_an_alpha_channel_and_gives_a_grey_photo_a_colour_cloak(
    johns_dir, tmp_path, capsys, dlib_available
):
    """A transparent PNG comes out with its alpha channel, byte for byte, over its own colour plus the cloak's change
    (the earlier code wrote RGB: the transparent part became opaque white); a grayscale photo comes out RGB, since a
    cloak changes colours (documented in `cloak --help`)."""
    from PIL import Image

    rgb = read_image(sorted(johns_dir.glob("*/*.jpg"))[0])
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :40], alpha[:, 40:60] = 0, 128
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src / "t.png")
    Image.fromarray(rgb).convert("L").save(src / "g.png")
    out = tmp_path / "out"
    code, _, err = run(["cloak", *FAST, str(src), str(out)], capsys)
    assert code == 0, err
    t, g = Image.open(out / "t.png"), Image.open(out / "g.png")
    assert t.mode == "RGBA" and g.mode == "RGB"
    got = np.asarray(t)
    assert np.array_equal(got[..., 3], alpha)
    change = np.abs(got[..., :3].astype(int) - rgb.astype(int))
    assert change[:, :40].max() <= change[:, 60:].max() + 1  # the hidden colour kept (not white), cloaked alike
    assert change[:, 60:].max() > 0
    text = " ".join(run(["cloak", "--help"], capsys)[1].split())
    assert "alpha channel (transparency) is kept" in text and "grayscale image comes out RGB" in text


def test_attack_takes_the_spec_grammar_of_configs(tree, tmp_path, capsys, dlib_available):
    """`--attack` took only a bare name (click.Choice), so a config's attack such as the demo's
    'lowkey:steps=15,step_size=0.0083' could not be made with `puface cloak` (no option sets LowKey's step_size);
    it now takes the spec grammar of configs and `evaluate --attack`, the same cloaks as the options give."""
    spec = "lowkey:steps=2,step_size=0.01,perceptual=ssim,embedders=dlib-resnet29"
    code, _, err = run(
        ["cloak", "--attack", spec, "--no-progress", "--device", "cpu", str(tree), str(tmp_path / "a")], capsys
    )
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "cloak_config.json").read_text())["attack"]
    assert (
        config["step_size"] == 0.01
        and config["steps"] == 2
        and [s["name"] for s in config["surrogates"]] == ["dlib-resnet29"]
    )
    rows = list(csv.DictReader(open(tmp_path / "a" / "cloak_stats.csv")))
    assert len(rows) == 4 and all(float(r["linf"]) <= 2 * 0.01 + 0.005 + 1 / 255 for r in rows)
    code, _, err = run(
        ["cloak", "--attack", "fawkes:mode=custom,steps=3", *FAST[4:], str(tree), str(tmp_path / "b")], capsys
    )
    assert code == 0, err
    code, _, err = run(["cloak", *FAST, str(tree), str(tmp_path / "c")], capsys)
    assert code == 0, err
    for name in ("b", "c"):  # the spec and the options make one attack: same settings, same bytes
        assert json.loads((tmp_path / name / "cloak_config.json").read_text())["attack"] == \
            json.loads((tmp_path / "c" / "cloak_config.json").read_text())["attack"]
    assert [(tmp_path / "b" / p).read_bytes() for p in outputs(tmp_path / "c")] == \
        [(tmp_path / "c" / p).read_bytes() for p in outputs(tmp_path / "c")]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--attack", "nope"],
            "--attack 'nope': unknown attack 'nope'; choose one of: fawkes, lowkey, opom, unlearnable",
        ),
        # the attack's own errors about the spec's settings name the --attack text as the unknown name's does
        (["--attack", "lowkey:stpes=2"], "--attack 'lowkey:stpes=2': unknown option(s) stpes; known: "),
        (["--attack", "lowkey:steps=x"], "--attack 'lowkey:steps=x': steps must be a number, got 'x'"),
        (
            ["--attack", "fawkes:mode=low", "--mode", "high"],
            "--attack 'fawkes:mode=low' says mode=low and --mode says high",
        ),
        (["--attack", "lowkey:steps=2", "--steps", "3"], "--attack 'lowkey:steps=2': steps also given by an option"),
        (["--attack", "fawkes:seed=3"], "--attack 'fawkes:seed=3': give seed as --seed"),
        (["--attack", "lowkey:embedders=sface", "--surrogate", "dlib-resnet29"], "names embedders and --surrogate"),
        (["--attack", "lowkey", "--mode", "high"], "are Fawkes options"),
    ],
)
def test_attack_spec_errors_are_one_line(args, message, tree, tmp_path, capsys):
    code, _, err = run(["cloak", *args, "--no-progress", str(tree), str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_help_says_which_loop_unlearnable_examples_run(capsys):
    """Unlearnable examples default to the reference code's loop since 2026-12-07; `cloak --help` said nothing of it
    nor how to make the earlier (published) loop's cloaks. The spec it names builds that loop."""
    from test_fawkes import tiny_embedder

    from puface.attacks import create_attack
    from puface.utils.specs import parse_spec

    text = "".join(run(["cloak", "--help"], capsys)[1].split())  # click wraps lines after a comma
    assert "(stop_on=all,start=zero)" in text and "'unlearnable:stop_on=protected,start=uniform'" in text
    spec = parse_spec("unlearnable:stop_on=protected,start=uniform")
    settings = create_attack(spec.pop("name"), device="cpu", embedders=[tiny_embedder()], **spec).settings
    assert (settings.stop_on, settings.start) == ("protected", "uniform")
