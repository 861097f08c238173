"""`puface purify` and `puface train-purifier` end to end: trees mirrored, names, formats and sizes
kept, resume, per-file errors, sharding, config errors as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from puface.cli import main
from puface.io.images import write_image
from puface.utils.images import tensor_to_image
from puface.purifier import Purifier, RedNetConfig
from purifier_support import synthetic_cloak, visible_purifier_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small purifier that visibly changes images (random non-zero weights)."""
    return visible_purifier_file(tmp_path_factory.mktemp("w") / "p.pt")


@pytest.fixture()
def photo_tree(tmp_path, johns_dir) -> Path:
    """JPEG chips, a PNG of another size in a nested folder, a BMP, and a broken file."""
    root = tmp_path / "in"
    src = sorted(johns_dir.glob("*/*.jpg"))
    for p in src[:3]:
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / p.parent.name / p.name)
    arr = np.asarray(Image.open(src[3]).convert("RGB").resize((131, 97)))
    write_image(root / "a" / "b" / "odd size.png", arr)
    write_image(root / "a" / "c.bmp", arr[:50, :60])
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix not in (".csv", ".json")
    )


def test_purify_mirrors_tree_and_keeps_names_sizes_formats(photo_tree, tmp_path, weights, capsys):
    out = tmp_path / "out"
    code = main(["purify", "--weights", str(weights), str(photo_tree), str(out), "--no-progress", "--batch-size", "2",
                 "--device", "cpu", "--stats", str(tmp_path / "stats.csv")])
    assert code == 1  # the broken file
    msg = capsys.readouterr()
    assert "broken.jpg" in msg.out + msg.err
    expected = [f for f in _files(photo_tree) if not f.endswith("broken.jpg")]
    assert _files(out) == expected
    for rel in expected:
        a, b = Image.open(photo_tree / rel), Image.open(out / rel)
        assert a.size == b.size and a.format == b.format, rel
        assert not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))), rel  # purified
    assert "mean_abs_change" in (tmp_path / "stats.csv").read_text()
    # the PNG output holds exactly the purifier's output
    p = Purifier.load(weights)
    x = (
        torch.from_numpy(np.array(Image.open(photo_tree / "a/b/odd size.png").convert("RGB")))
        .permute(2, 0, 1)[None]
        .float()
        / 255
    )
    assert np.array_equal(
        tensor_to_image(p.purify(x)[0]), np.asarray(Image.open(out / "a/b/odd size.png").convert("RGB"))
    )
    # resume: nothing is redone; inputs untouched
    before = {f: (out / f).stat().st_mtime_ns for f in expected}
    code = main(["purify", "--weights", str(weights), str(photo_tree), str(out), "--no-progress"])
    assert {f: (out / f).stat().st_mtime_ns for f in expected} == before
    assert "5 already done" in capsys.readouterr().out


def test_purify_takes_the_checkpoint_as_purifier_too(photo_tree, tmp_path, weights):
    """`--purifier CKPT`, as detect / train-detector / calibrate-detector name it, was "No such option" in purify."""
    (photo_tree / "a" / "broken.jpg").unlink()
    for opt in ("--weights", "--purifier"):
        assert main(["purify", opt, str(weights), str(photo_tree), str(tmp_path / opt), "--no-progress"]) == 0
    for rel in _files(photo_tree):
        assert (tmp_path / "--weights" / rel).read_bytes() == (tmp_path / "--purifier" / rel).read_bytes(), rel


def test_purify_shards_by_rank(photo_tree, tmp_path, weights):
    (photo_tree / "a" / "broken.jpg").unlink()
    out = tmp_path / "out"
    for rank in range(2):
        assert main(["purify", "--weights", str(weights), str(photo_tree), str(out), "--no-progress",
                     "--rank", str(rank), "--world-size", "2"]) == 0
    assert _files(out) == _files(photo_tree)


def test_purify_default_weights_and_errors(photo_tree, tmp_path, capsys):
    (photo_tree / "a" / "broken.jpg").unlink()
    assert main(["purify", str(photo_tree), str(tmp_path / "o"), "--no-progress"]) == 0
    assert _files(tmp_path / "o") == _files(photo_tree)
    assert main(["purify", str(photo_tree), str(photo_tree), "--no-progress"]) == 2
    assert "input folder" in capsys.readouterr().err
    before = sorted(photo_tree.rglob("*"))
    assert main(["purify", str(photo_tree), str(photo_tree / "purified"), "--no-progress"]) == 2  # inside the input
    assert "lies inside the input folder" in capsys.readouterr().err and sorted(photo_tree.rglob("*")) == before
    assert main(["purify", "--weights", str(tmp_path / "nope.pt"), str(photo_tree), str(tmp_path / "o2")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_purify_keeps_alpha_grayscale_and_says_8_bits(johns_dir, tmp_path, weights, capsys):
    """RGBA keeps its alpha channel (purified RGB, the input's alpha), grayscale stays grayscale (L), a 16-bit
    grayscale PNG and a 1-bit black-and-white one come out 8-bit grayscale (as --help says); TIFF is written as
    TIFF; a GIF is listed as failed."""
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[0]).convert("RGB"))[:48, :40]
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (48, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src / "rgba.png")
    Image.fromarray(rgb).convert("L").save(src / "gray.jpg", quality=95)
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(src / "gray16.png")
    Image.fromarray(np.dstack([rgb[..., 1], alpha])).save(src / "la.png")
    Image.fromarray(rgb).save(src / "t.tiff")
    Image.fromarray(rgb).convert("1").save(src / "bw.png")
    Image.fromarray(rgb).save(src / "g.gif")
    assert Image.open(src / "gray16.png").mode.startswith("I")
    out = tmp_path / "out"
    code = main(["purify", "--weights", str(weights), str(src), str(out), "--no-progress", "--device", "cpu"])
    cap = capsys.readouterr()
    assert code == 1 and "7 images: 6 purified" in cap.out and "g.gif: unsupported image format .gif" in cap.out
    modes = {p.name: (Image.open(p).format, Image.open(p).mode) for p in out.iterdir() if p.suffix not in (".json",)}
    assert modes == {"rgba.png": ("PNG", "RGBA"), "gray.jpg": ("JPEG", "L"), "gray16.png": ("PNG", "L"),
                     "la.png": ("PNG", "LA"), "t.tiff": ("TIFF", "RGB"), "bw.png": ("PNG", "L")}
    purified = np.asarray(Image.open(out / "rgba.png"))
    assert np.array_equal(purified[..., 3], alpha) and not np.array_equal(purified[..., :3], rgb)
    assert np.array_equal(np.asarray(Image.open(out / "la.png"))[..., 1], alpha)
    assert main(["purify", "--help"]) == 0 and "8 bits per channel" in capsys.readouterr().out


def test_large_photos_of_one_size_are_not_stacked_into_one_forward_pass(tmp_path, weights, monkeypatch):
    """Whole photos purified without --align: a batch of same-size photos goes through the network in chunks of at
    most `CHUNK_PIXELS` (one photo at least), not all at once (16 phone photos of 12 MP took some 60 GB: killed);
    the outputs are those of a job that purifies the photos one by one."""
    import puface.purifier.folder as folder

    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(src / f"p{i}.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    monkeypatch.setattr(folder, "CHUNK_PIXELS", 2 * 48 * 40 + 1, raising=False)
    purifier = Purifier.load(weights)
    seen: list[int] = []
    purifier.net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    purifier.purify_folder(src, tmp_path / "out", progress=False, batch_size=16)
    assert seen == [2, 2, 1]
    purifier.purify_folder(src, tmp_path / "one", progress=False, batch_size=1)
    assert all((tmp_path / "out" / p.name).read_bytes() == p.read_bytes() for p in (tmp_path / "one").glob("*.png"))


def test_resume_with_other_settings_is_refused(photo_tree, tmp_path, weights, capsys):
    """OUT records what its images depend on (purifier fingerprints, template, unmask, quality, ...; not the
    rank, batch size or device): a rerun with other settings is refused instead of keeping the old images
    as 'already done'; --no-resume redoes them and rewrites the record."""
    (photo_tree / "a" / "broken.jpg").unlink()
    out = tmp_path / "out"
    base = ["purify", "--weights", str(weights), str(photo_tree), str(out), "--no-progress", "--device", "cpu"]
    for rank in range(2):  # processes sharing OUT write the same record and do not refuse each other
        assert main([*base, "--rank", str(rank), "--world-size", "2", "--batch-size", str(1 + rank)]) == 0
    record = (out / "purify_config.json").read_text()
    assert json.loads(record)["template"] == "auto" and json.loads(record)["quality"] == 95
    capsys.readouterr()
    assert main([*base, "--batch-size", "3"]) == 0 and "0 purified, 5 already done" in capsys.readouterr().out
    torch.manual_seed(1)
    other = Purifier(RedNetConfig(channels=8, depth=4, downsample=1)).save(tmp_path / "other.pt")
    for extra, what in (
        (["--template", "arcface112"], "template"),
        (["--quality", "80"], "quality"),
        (["--weights", str(other)], "purifier.dlib150"),
        (["--unmask"], "unmask"),
        (["--step", "1.5"], "step"),
    ):
        assert main([*base, *extra]) == 2
        cap = capsys.readouterr()
        assert "holds outputs of a different purifying setting" in cap.err and f"differs in: {what})" in cap.err
        assert "--no-resume" in cap.err and "Traceback" not in cap.err
    assert (out / "purify_config.json").read_text() == record and not (out / "unmask.csv").exists()
    before = (out / "a" / "c.bmp").read_bytes()
    assert main([*base, "--template", "arcface112", "--no-resume"]) == 0
    assert json.loads((out / "purify_config.json").read_text())["template"] == "arcface112"
    assert (out / "a" / "c.bmp").read_bytes() != before  # redone, as arcface112 chips


def _png_chips(johns_dir: Path, root: Path, n: int = 2) -> list[np.ndarray]:
    arrays = []
    for p in sorted(johns_dir.glob("*/*.jpg"))[:n]:
        arr = np.asarray(Image.open(p).convert("RGB"))
        write_image(root / p.parent.name / f"{p.stem}.png", arr)
        arrays.append(arr)
    return arrays


def test_purify_step_goes_along_the_purifiers_change(johns_dir, tmp_path, weights, capsys):
    """--step S writes x + S (P(x) - x) (lossless PNG here: within rounding of the --step 1 output pushed S times
    as far), through the plain job and the detecting one (--report) alike; --step 0 is refused."""
    src = tmp_path / "in"
    nat = _png_chips(johns_dir, src)
    outs = {}
    for name, extra in (("one", []), ("two", ["--step", "2"]), ("two-report", ["--step", "2", "--report"])):
        w = [] if name == "two-report" else ["--weights", str(weights)]
        assert main(["purify", *w, str(src), str(tmp_path / name), "--no-progress", "--device", "cpu", *extra]) == 0
        outs[name] = [np.asarray(Image.open(p)).astype(np.int16) for p in sorted((tmp_path / name).rglob("*.png"))]
    for x, one, two in zip(nat, outs["one"], outs["two"]):
        want = np.clip(x + 2 * (one - x.astype(np.int16)), 0, 255)
        assert np.abs(two - want).max() <= 2 and np.abs(two - one).mean() > 0.5
    assert json.loads((tmp_path / "two" / "purify_config.json").read_text())["step"] == 2.0
    assert "step" not in json.loads((tmp_path / "one" / "purify_config.json").read_text())
    # the shipped purifier: the detecting job writes what the plain one does
    assert main(["purify", str(src), str(tmp_path / "plain2"), "--no-progress", "--device", "cpu", "--step", "2"]) == 0
    plain = [np.asarray(Image.open(p)).astype(np.int16) for p in sorted((tmp_path / "plain2").rglob("*.png"))]
    for a, b in zip(plain, outs["two-report"]):
        assert np.abs(a - b).max() <= 1
    capsys.readouterr()
    assert main(["purify", str(src), str(tmp_path / "zero"), "--step", "0"]) == 2
    assert "--step" in capsys.readouterr().err


def test_purify_default_step_is_the_shipped_purifiers(johns_dir, tmp_path, capsys):
    """Without --step, the shipped dlib150 purifier goes 1.5 times its change (`SHIPPED_STEPS`): the same bytes as
    --step 1.5, not those of --step 1, in the plain and the detecting job; OUT records the step of each layout
    (the shipped ArcFace 112 purifier stays at 1), and a folder written at step 1 is not resumed with the default."""
    src = tmp_path / "in"
    _png_chips(johns_dir, src)
    outs = {}
    for name, extra in (("default", []), ("s15", ["--step", "1.5"]), ("s1", ["--step", "1"]), ("report", ["--report"])):
        assert main(["purify", str(src), str(tmp_path / name), "--no-progress", "--device", "cpu", *extra]) == 0
        outs[name] = [np.asarray(Image.open(p)).astype(np.int16) for p in sorted((tmp_path / name).rglob("*.png"))]
    for d, s15, s1, rep in zip(outs["default"], outs["s15"], outs["s1"], outs["report"]):
        assert np.array_equal(d, s15) and np.abs(d - s1).mean() > 0.2 and np.abs(d - rep).max() <= 1
    record = json.loads((tmp_path / "default" / "purify_config.json").read_text())
    assert record["step"] == {"arcface112": 1.0, "dlib150": 1.5}
    assert "step" not in json.loads((tmp_path / "s1" / "purify_config.json").read_text())
    capsys.readouterr()
    assert main(["purify", str(src), str(tmp_path / "s1"), "--no-progress", "--device", "cpu"]) == 2
    assert "differs in: step)" in capsys.readouterr().err


def test_empty_input_and_a_file_as_output_are_one_line_errors(photo_tree, tmp_path, weights, capsys):
    """A folder without images is an error, as in `align` (a mistyped path), for purify, cloak and detect;
    an OUT that is a file is refused once, not once per image."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["purify", "--weights", str(weights), str(empty), str(tmp_path / "o"), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert "empty: no images found" in cap.err and "0 images" not in cap.out and "Traceback" not in cap.err
    assert main(["detect", str(empty), "--out", str(tmp_path / "e.csv"), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert "empty: no images found" in cap.err and not (tmp_path / "e.csv").exists()
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert main(["purify", "--weights", str(weights), str(photo_tree), str(afile), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert "afile.txt is a file, not a folder" in cap.err and len(cap.err.strip().splitlines()) == 1
    assert afile.read_text() == "x"


def test_train_purifier_cli_with_a_cloaked_folder(johns_dir, johns_images, tmp_path, capsys):
    paths, _, images = johns_images
    cloaked = synthetic_cloak(images, 0)
    for i, p in enumerate(paths):
        write_image(tmp_path / "cloaked" / p.relative_to(johns_dir).with_suffix(".png"), tensor_to_image(cloaked[i]))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
seed = 1
[data]
root = "{johns_dir}"
heldout_min_images = 12
val_fraction = 0.25
val_images = 4
[[attacks]]
name = "folder"
root = "{tmp_path / 'cloaked'}"
images = 12
[model]
channels = 8
depth = 2
downsample = 1
[loss]
feature_weight = 0.0
[train]
epochs = 3
batch_size = 4
save_every_steps = 0
""")
    out = tmp_path / "run"
    code = main(["train-purifier", "--config", str(cfg), "--out", str(out), "--no-progress", "--set", "train.epochs=2",
                 "--set", "val.every=2", "--export", str(tmp_path / "exported.safetensors")])
    assert code == 0, capsys.readouterr().err
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [2]  # validated every 2 epochs, 2 epochs (--set)
    exported = Purifier.load(tmp_path / "exported.safetensors")
    ds = exported.meta["data_summary"]
    assert ds["attacks"][0]["root"] == str(tmp_path / "cloaked")
    assert len(ds["train_identities"]) == 4 and len(ds["val_identities"]) == 1 and ds["heldout_identities"] == []
    assert ds["train_pairs"]["pairs"] == 12
    # config errors: one line, exit code 2
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[train]", "[train]\nepohcs = 3"))
    assert main(["train-purifier", "--config", str(bad), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "epohcs" in err and "Traceback" not in err


def test_train_purifier_cached_cloaks_only_stops_at_a_missing_cloak(johns_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
[data]
root = "{johns_dir}"
heldout_min_images = 12
cache = "{tmp_path / 'cache'}"
[[attacks]]
name = "fawkes"
mode = "custom"
steps = 2
embedders = ["dlib-resnet29"]
images = 4
""")
    code = main(["train-purifier", "--config", str(cfg), "--prepare-only", "--cached-cloaks-only", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "no cached fawkes-custom cloak" in err and str(johns_dir) in err  # names the input file
    assert not list((tmp_path / "cache").rglob("*.png"))  # nothing was cloaked


def _fawkes_recipe(tmp_path: Path, johns_dir: Path) -> Path:
    """A recipe of one quick Fawkes attack on 2 training and 2 validation chips, cached under tmp_path/cache."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
[data]
root = "{johns_dir}"
heldout_min_images = 12
val_fraction = 0.25
val_images = 2
cache = "{tmp_path / 'cache'}"
[[attacks]]
name = "fawkes"
mode = "custom"
steps = 1
embedders = ["dlib-resnet29"]
images = 2
""")
    return cfg


def test_train_purifier_checks_added_attacks_before_cloaking(johns_dir, tmp_path, capsys):
    cfg = _fawkes_recipe(tmp_path, johns_dir)
    code = main(["train-purifier", "--config", str(cfg), "--prepare-only", "--device", "cpu", "--no-progress",
                 "--add-attack", 'name = "fawkes", mode = "hihg"'])
    err = capsys.readouterr().err
    assert code == 2 and "unknown mode 'hihg'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # the recipe's own attack was not run first


def test_train_purifier_prepare_only_no_progress_shows_no_bars(johns_dir, tmp_path, capsys):
    cfg = _fawkes_recipe(tmp_path, johns_dir)
    base = ["train-purifier", "--config", str(cfg), "--prepare-only", "--device", "cpu"]
    assert main([*base, "--set", f'data.cache="{tmp_path / "c1"}"']) == 0
    assert "cloaking" in capsys.readouterr().err  # bars by default ...
    assert main([*base, "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "cloaking" not in out.err and '"train_pairs"' in out.out  # ... none with --no-progress


@pytest.mark.parametrize("override, message", [
    ("train.epochs=abc", "--set train.epochs: expected an integer, got 'abc'"),
    ("seed=x", "--set seed: expected an integer, got 'x'"),
    ("train.lr=true", "--set train.lr: expected a number, got True"),
])
def test_train_purifier_set_of_the_wrong_type_names_the_set(override, message, tmp_path, capsys):
    code = main(["train-purifier", "--set", override, "--prepare-only", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"puface: error: {message}"  # not the packaged recipe's file
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "default"\n[train]\nepochs = "abc"\n')
    assert main(["train-purifier", "--config", str(bad), "--prepare-only"]) == 2
    assert capsys.readouterr().err.strip() == f"puface: error: {bad}: train.epochs must be an integer, got 'abc'"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", "unknown option(s) in [train]: epoch"),
    ("trian.epochs=2", "unknown top-level option(s): trian"),
])
def test_train_purifier_set_of_an_unknown_key_names_the_set(override, message, tmp_path, capsys):
    code = main(["train-purifier", "--set", override, "--prepare-only", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"default.toml with --set {override}: {message}" in err  # the typo is the --set's


@pytest.mark.parametrize("args, message", [
    (["train-purifier", "--data", "here", "--set", "data.root=there"],
     "--set data.root=there and --data both set data.root; give one of them"),
    (["train-purifier", "--cached-cloaks-only", "--set", "data.cached_only=false"],
     "--set data.cached_only=false and --cached-cloaks-only both set data.cached_only; give one of them"),
    (["train-purifier", "--set", "train.epochs=1", "--set", "train.epochs=2"],
     "--set train.epochs is given twice; give it once"),
    (["train-detector", "--purifier", "p.safetensors", "--set", "data.purifier=q.safetensors"],
     "--set data.purifier=q.safetensors and --purifier both set data.purifier; give one of them"),
])
def test_a_set_beside_an_option_of_the_same_setting_is_refused(args, message, tmp_path, capsys):
    """Review of BP: `--data` or `--purifier` beside a --set of the same setting dropped the --set without a word, and
    a --set given twice kept the last; the three commands' --set have one parser (`cli.options.parse_overrides`)."""
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"puface: error: {message}"
    assert not (tmp_path / "r").exists()


def test_set_none_clears_an_optional_setting_of_either_recipe_and_stays_text_elsewhere():
    """TOML has no null: `--set KEY=none` was the text "none", refused for the purifier's optional counts (no way to
    clear one a recipe sets) and taken by the detector's (data.max_natural = "none", a TypeError when training
    sliced by it). Now `none` clears a setting that takes None, in both recipe loaders, and a wrong type of the
    detector's is refused when the recipe is read."""
    from puface.cli.options import parse_override as _parse_override
    from puface.training.config import load_config
    from puface.training.detector import load_detector_config
    from puface.utils.errors import PufaceError

    sets = dict(map(_parse_override, ("train.max_steps_per_epoch=none", "data.max_per_identity=None",
                                      "data.heldout_min_images=none", "data.cache=none")))
    cfg = load_config("default", sets)
    assert (cfg.train.max_steps_per_epoch, cfg.data.max_per_identity, cfg.data.heldout_min_images) == (None,) * 3
    assert cfg.data.cache == "none"  # a string setting: the text (a folder of that name)
    with pytest.raises(PufaceError, match=r"--set train.epochs: expected an integer, got 'none'"):
        load_config("default", dict([_parse_override("train.epochs=none")]))
    det = load_detector_config("default", dict([_parse_override("data.max_natural=5")]))
    assert det.data["max_natural"] == 5
    assert load_detector_config("default", dict([_parse_override("data.max_natural=none")])).data["max_natural"] is None
    for text, message in (("data.max_natural=abc", "data.max_natural must be an integer or none, got 'abc'"),
                          ("train.epochs=none", "train.epochs must be an integer, got 'none'")):
        with pytest.raises(PufaceError, match=f"with --set {text}: {message}"):
            load_detector_config("default", dict([_parse_override(text)]))


def test_train_purifier_refuses_a_bad_export_before_training(johns_dir, johns_images, tmp_path, capsys):
    """--export below a file (or onto a folder) ended, after the whole training, in a FileExistsError traceback;
    now one line before any work, no run folder made."""
    paths, _, images = johns_images
    cloaked = synthetic_cloak(images[:12], 0)
    for i, p in enumerate(paths[:12]):
        write_image(tmp_path / "cloaked" / p.relative_to(johns_dir).with_suffix(".png"), tensor_to_image(cloaked[i]))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
[data]
root = "{johns_dir}"
heldout_min_images = 12
[[attacks]]
name = "folder"
root = "{tmp_path / 'cloaked'}"
[model]
channels = 8
depth = 2
downsample = 1
[loss]
feature_weight = 0.0
[train]
epochs = 1
batch_size = 4
""")
    (tmp_path / "afile").write_text("x")
    for export, message in ((tmp_path / "afile" / "p.safetensors", "lies below the file"), (tmp_path, "is a folder")):
        code = main(["train-purifier", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                     "--device", "cpu", "--export", str(export)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("attacks.images=10", "--set attacks.images: attacks is a list of 9 entries; pick one by its index, 0 to 8 "
                          "(e.g. attacks.0.images), or give the whole list as TOML"),
    ("attacks.x.images=10", "--set attacks.x.images: attacks is a list of 9 entries; pick one by its index, 0 to 8 "
                            "(e.g. attacks.0.images), or give the whole list as TOML"),
    ("train.epochs.x=1", "--set train.epochs.x: train.epochs is a value (20), not a table"),
])
def test_train_purifier_set_through_a_list_or_a_value_is_one_line(override, message, tmp_path, capsys):
    """--set attacks.0.images=10 ended in an AttributeError traceback ('list' object has no attribute 'setdefault');
    a key through the [[attacks]] list now picks an entry by its index, and a key that cannot be set says how."""
    code = main(["train-purifier", "--set", override, "--prepare-only", "--out", str(tmp_path / "r")])
    assert code == 2 and capsys.readouterr().err.strip() == f"puface: error: {message}"
    assert not (tmp_path / "r").exists()


def test_train_purifier_set_an_attack_entry_by_its_index():
    from puface.training.config import load_config

    cfg = load_config("default", {"attacks.0.images": 10, "attacks.1": {"name": "fawkes", "mode": "low", "images": 5}})
    assert cfg.attacks[0]["images"] == 10 and cfg.attacks[0]["mode"] == "high"
    assert cfg.attacks[1] == {"name": "fawkes", "mode": "low", "images": 5} and len(cfg.attacks) == 9
