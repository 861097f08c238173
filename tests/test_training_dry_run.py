"""`--dry-run` of `puface train-purifier`, `train-detector` and `calibrate-detector`: the run's checks and its size,
printed in seconds; nothing cloaked, trained or written (no output folder, the cloak cache unchanged)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from puface.cli import main
from puface.data.split import split_identities


def _snapshot(folder: Path) -> dict[str, float]:
    """Every file under `folder` with its modification time (empty when it does not exist)."""
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def _purifier_recipe(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "pur.toml"
    cfg.write_text(f"""
seed = 1
[data]
root = "{root}"
heldout_min_images = 12
val_fraction = 0.25
val_images = 1
cache = "{tmp_path / 'cache'}"
[[attacks]]
name = "fawkes"
mode = "custom"
steps = 1
embedders = ["dlib-resnet29"]
images = 3
[model]
channels = 8
depth = 2
downsample = 1
[loss]
feature_weight = 0.0
[train]
epochs = 2
batch_size = 1
""")
    return cfg


def _numbers(text: str, pattern: str) -> tuple[int, ...]:
    m = re.search(pattern, text)
    assert m, (pattern, text)
    return tuple(int(g) for g in m.groups())


def test_train_purifier_dry_run_prints_the_size_and_writes_nothing(tmp_path, johns_dir, capsys):
    """Before, train-purifier had no --dry-run (click: 'No such option'): the size of a run and whether its data and
    models were there were learnt by starting it. Now the counts match the folder, the cloaks to make fall as the
    cache fills, and neither OUT nor the cache is written."""
    cfg, out = _purifier_recipe(tmp_path, johns_dir), tmp_path / "run"
    identities = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())
    images = {i: len(list((johns_dir / i).glob("*.jpg"))) for i in identities}
    cmd = ["train-purifier", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress", "--dry-run"]
    assert main(cmd) == 0
    text = capsys.readouterr().out
    n, train_ids, train_images, val_ids, held = _numbers(
        text, r"(\d+) identities; (\d+) training \((\d+) images\), (\d+) validation, (\d+) held out")
    assert n == len(identities) and train_ids + val_ids == n and held == 0 and val_ids >= 1
    train_names = set(identities) - set(split_identities(identities, 0.25, 1, tag="purifier-val")[0])
    assert train_images == sum(images[i] for i in train_names)
    pairs = r"training pairs: (\d+) over 1 attack.*?(\d+) read from the cache, (\d+) to make"
    assert _numbers(text, pairs) == (3, 0, 3)
    assert _numbers(text, r"validation pairs: (\d+) over .*?(\d+) read from the cache, (\d+) to make") == (1, 0, 1)
    assert _numbers(text, r"(\d+) epoch\(s\) x (\d+) optimizer step\(s\) of (\d+) pairs = (\d+) step") == (2, 3, 1, 6)
    assert not out.exists() and not (tmp_path / "cache").exists()
    # the cloaks made by a run are then read from the cache; a dry run leaves the cache as it is
    assert main(["train-purifier", "--config", str(cfg), "--prepare-only", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    cache = _snapshot(tmp_path / "cache")
    assert main(cmd) == 0
    text = capsys.readouterr().out
    assert _numbers(text, pairs) == (3, 3, 0)
    assert _snapshot(tmp_path / "cache") == cache and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "nowhere: data folder not found"),
    (["--set", 'train.init="{tmp}/missing.safetensors"'], "missing.safetensors: purifier checkpoint not found"),
    (["--set", "train.epohcs=2"], "unknown option(s) in [train]: epohcs"),
    (["--set", 'loss.embedders=["no-such-model"]'], "loss.embedders"),
    (["--cached-cloaks-only"], "no cached fawkes-custom cloak"),
])
def test_train_purifier_dry_run_refuses_what_the_run_would(args, message, tmp_path, johns_dir, capsys):
    cfg = _purifier_recipe(tmp_path, johns_dir)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["train-purifier", "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--set", "loss.feature_weight=0.1", "--dry-run", *args])
    out, err = capsys.readouterr()
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def _detector_recipe(tmp_path: Path, root: Path, names: list[str]) -> Path:
    """A recipe on `root` with a small purifier recording names[:4] as trained on and the rest as validation."""
    from puface.purifier import Purifier, RedNetConfig

    torch.manual_seed(0)
    ckpt = Purifier(RedNetConfig(channels=8, depth=4, downsample=1), meta={"data_summary": {
        "train_identities": names[:4], "val_identities": names[4:], "heldout_identities": []}}).save(
        tmp_path / "pur.safetensors")
    cfg = tmp_path / "det.toml"
    cfg.write_text(f'''extends = "default"
attacks = [{{name = "fawkes", mode = "custom", steps = 1, embedders = ["dlib-resnet29"], images = 4}}]
[data]
root = "{root}"
purifier = "{ckpt}"
cache = "{tmp_path / 'cache'}"
calibration_fraction = 0.25
[augment]
natural_variants = ["jpeg:quality=75", "resize:factor=2.0"]
variants_per_chip = 1
storage_variants = []
cloak_strengths = [1.0, 2.0]
[detector]
fpr = 0.05
[train]
epochs = 2
batch_size = 32
''')
    return cfg


def test_train_detector_dry_run_prints_the_size_and_writes_nothing(tmp_path, johns_dir, capsys):
    """train-detector had no --dry-run; now its counts match the folder and the recipe, and nothing is written."""
    names = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())
    cfg, out = _detector_recipe(tmp_path, johns_dir, names), tmp_path / "det"
    count = {i: len(list((johns_dir / i).glob("*.jpg"))) for i in names}
    cal_part, fit = split_identities(names[:4], 0.25, 0, tag="detector-calibration")
    cal = cal_part + names[4:]
    code = main(["train-detector", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert _numbers(text, r"(\d+) to fit, (\d+) to calibrate") == (len(fit), len(cal))
    natural = sum(count[i] for i in fit)
    assert _numbers(text, r"natural: (\d+) chip\(s\), (\d+) sample\(s\)") == (natural, 2 * natural)  # + 1 variant
    # the first 4 chips of the training order: one per training identity (interleaved), those of fit ones fit
    cloaks = r"cloaked images: (\d+) over 1 attack.*?(\d+) read from the cache, (\d+) to make"
    assert _numbers(text, cloaks) == (4, 0, 4)
    assert _numbers(text, r"(\d+) cloak\(s\) validate") == (4 - len(fit),)
    samples = 2 * natural + 2 * len(fit)  # two cloak strengths
    steps = -(-samples // 32)
    assert _numbers(text, r"net: (\d+) epoch\(s\) x (\d+) step\(s\) of 32 samples = (\d+) step\(s\) on (\d+) samples") \
        == (2, steps, 2 * steps, samples)
    chips = sum(count[i] for i in cal)
    assert _numbers(text, r"calibration: (\d+) natural chip\(s\), (\d+) sample") == (chips, 3 * chips)
    assert "FPR target 5.0%" in text
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nowhere"], "nowhere: data folder not found"),
    (["--purifier", "{tmp}/missing.safetensors"], "missing.safetensors: purifier checkpoint not found"),
    (["--set", "train.epohcs=2"], "unknown option(s) in [train]: epohcs"),
    (["--set", "detector.fpr=0.7"], "detector.fpr must be in (0, 0.5)"),
])
def test_train_detector_dry_run_refuses_what_the_run_would(args, message, tmp_path, johns_dir, capsys):
    names = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())
    cfg = _detector_recipe(tmp_path, johns_dir, names)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["train-detector", "--config", str(cfg), "--out", str(tmp_path / "det"), "--device", "cpu",
                 "--dry-run", *args])
    out, err = capsys.readouterr()
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (tmp_path / "det").exists() and not (tmp_path / "cache").exists()


def test_calibrate_detector_dry_run_counts_the_photos_and_writes_nothing(tmp_path, johns_dir, capsys):
    """calibrate-detector had no --dry-run; now it loads the detector, counts NATURAL's photos and says the threshold
    and FPR it would calibrate, with no detector file or scores file written."""
    from puface.detection import load_detector

    out = tmp_path / "mine" / "det.safetensors"
    code = main(["calibrate-detector", str(johns_dir), "--out", str(out), "--dry-run", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert _numbers(text, r"calibration: (\d+) natural photo") == (len(list(johns_dir.glob("*/*.jpg"))),)
    assert f"threshold now {load_detector().threshold():.4f}, FPR target 1.0%" in text
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "nowhere: no such file or folder"),
    (["JOHNS", "--detector", "{tmp}/missing.safetensors"], "missing.safetensors: detector file not found"),
    (["JOHNS", "--purifier", "{tmp}/missing.pt"], "missing.pt: purifier checkpoint not found"),
])
def test_calibrate_detector_dry_run_refuses_what_the_run_would(args, message, tmp_path, johns_dir, capsys):
    args = [a.replace("{tmp}", str(tmp_path)).replace("JOHNS", str(johns_dir)) for a in args]
    code = main(["calibrate-detector", *args, "--out", str(tmp_path / "mine" / "d.safetensors"), "--dry-run"])
    out, err = capsys.readouterr()
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (tmp_path / "mine").exists()


def test_train_detector_dry_run_of_a_recipe_without_a_net_says_so(tmp_path, johns_dir, capsys):
    """A recipe whose score has no net (the packaged `shift`) trains none: the dry run printed the net's epochs and
    steps all the same; now it says there is no net to train, and still counts the calibration chips."""
    names = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())
    cfg = _detector_recipe(tmp_path, johns_dir, names)
    code = main(["train-detector", "--config", str(cfg), "--out", str(tmp_path / "det"), "--device", "cpu",
                 "--set", 'detector.components=["shift:dlib-resnet29"]', "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "no net to train (score: shift:dlib-resnet29)" in text and "epoch(s)" not in text
    assert "calibration: " in text and not (tmp_path / "det").exists()


def test_train_purifier_dry_run_checks_the_run_it_would_resume(tmp_path, johns_dir, capsys):
    """OUT/last.pt of the same config: the dry run says it resumes after its epoch; of another config (--set
    train.epochs=5): the run's refusal, one line; --no-resume: no resume said. OUT is left as it was."""
    from puface.purifier import Purifier, RedNetConfig
    from puface.purifier.checkpoint import make_checkpoint, save_checkpoint
    from puface.training.config import load_config

    path = _purifier_recipe(tmp_path, johns_dir)
    cfg, out = load_config(path), tmp_path / "run"
    model = RedNetConfig(channels=8, depth=2, downsample=1)
    save_checkpoint(out / "last.pt", make_checkpoint(Purifier(model).net.state_dict(), model.as_dict(),
                                                     config=cfg.as_dict(), train_state={"epoch": 1}))
    before = _snapshot(out)
    base = ["train-purifier", "--config", str(path), "--out", str(out), "--device", "cpu", "--dry-run"]
    assert main(base) == 0
    assert f"resumes {out / 'last.pt'} after epoch 1" in capsys.readouterr().out
    assert main([*base, "--set", "train.epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings (train.epochs = 2, now 5)" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--set", "train.epochs=5", "--no-resume"]) == 0
    assert "resumes" not in capsys.readouterr().out
    assert _snapshot(out) == before


def _home_with_weights(tmp_path: Path, monkeypatch) -> Path:
    """A fresh $PUFACE_HOME whose weights/ is the current cache's (linked): the face models load, nothing else there."""
    from puface.utils.paths import cache_dir

    weights = cache_dir("weights")
    home = tmp_path / "home"
    home.mkdir()
    (home / "weights").symlink_to(weights, target_is_directory=True)
    monkeypatch.setenv("PUFACE_HOME", str(home))
    return home


def test_training_dry_runs_on_the_default_cloak_cache_make_no_folder(tmp_path, johns_dir, capsys, monkeypatch):
    """With data.cache = "" (the packaged recipes' default: $PUFACE_HOME/cloaks) a dry run made the cache's folder
    (`CloakCache()` makes it); it only looks cloaks up, so now $PUFACE_HOME is left as it was."""
    pur = _purifier_recipe(tmp_path, johns_dir)
    det = _detector_recipe(tmp_path, johns_dir, sorted(p.name for p in johns_dir.iterdir() if p.is_dir()))
    home = _home_with_weights(tmp_path, monkeypatch)
    before = _snapshot(home)
    for cmd, cfg in (("train-purifier", pur), ("train-detector", det)):
        code = main([cmd, "--config", str(cfg), "--out", str(tmp_path / cmd), "--device", "cpu", "--no-progress",
                     "--set", 'data.cache=""', "--dry-run"])
        out = capsys.readouterr().out
        assert code == 0 and "0 read from the cache" in out, out
        assert _snapshot(home) == before and not (home / "cloaks").exists() and not (tmp_path / cmd).exists()


def test_train_purifier_dry_run_with_prepare_only_is_one_line(tmp_path, johns_dir, capsys):
    """--dry-run with --prepare-only was a click usage error: three lines (usage, 'Try ...', the error); now the
    CLI's one line, exit 2, nothing written."""
    cfg = _purifier_recipe(tmp_path, johns_dir)
    code = main(["train-purifier", "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--dry-run", "--prepare-only"])
    out, err = capsys.readouterr()
    assert code == 2 and err.strip() == "puface: error: --dry-run and --prepare-only: give one", err
    assert out == "" and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_train_purifier_dry_run_refuses_a_cloak_folder_without_cloaks_as_the_run_does(tmp_path, johns_dir, capsys):
    """An [[attacks]] entry name = "folder" whose folder mirrors none of the chosen images: the run stops ('no cloaked
    images found', after making the other attacks' cloaks); the dry run printed '0 cloak(s) found' and exit 0. Now
    the run's one-line error, exit 2."""
    cfg = _purifier_recipe(tmp_path, johns_dir)
    (tmp_path / "empty").mkdir()
    code = main(["train-purifier", "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--add-attack", f'name = "folder", root = "{tmp_path / "empty"}", images = 2', "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert f"{tmp_path / 'empty'}: no cloaked images found that mirror {johns_dir}" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_train_detector_dry_run_refuses_chips_of_another_size_than_the_recipes(tmp_path, johns_dir, capsys):
    """150 px chips with detector.chip_size = 112: the run stops once the first attack's cloaks are made ('cloaks of
    (150, 150) px'); the dry run said nothing of it (exit 0). Now it gives that one-line error, exit 2."""
    cfg = _detector_recipe(tmp_path, johns_dir, sorted(p.name for p in johns_dir.iterdir() if p.is_dir()))
    code = main(["train-detector", "--config", str(cfg), "--out", str(tmp_path / "det"), "--device", "cpu",
                 "--set", "detector.chip_size=112", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "fawkes-custom: cloaks of (150, 150) px; the detector trains on chips of 112 px" in err
    assert not (tmp_path / "det").exists() and not (tmp_path / "cache").exists()


def test_calibrate_detector_dry_run_checks_the_scores_file_as_the_run_does(tmp_path, johns_dir, capsys):
    """The scores file of an earlier calibration by another detector: the run refuses it ('scored by another
    detector'); the dry run did not look at it (exit 0). Now it makes the scoring's checks (detect_folder's dry run):
    that refusal, one line; with the same detector it says how many photos the file already holds. Nothing written."""
    import shutil

    natural = tmp_path / "mine" / "Me"
    natural.mkdir(parents=True)
    for p in sorted(johns_dir.glob("*/*.jpg"))[:3]:
        shutil.copy(p, natural / p.name)
    out = tmp_path / "det" / "d.safetensors"
    assert main(["calibrate-detector", str(natural), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path)
    base = ["calibrate-detector", str(natural), "--out", str(out), "--dry-run"]
    assert main([*base, "--detector", "sharpen"]) == 2
    err = capsys.readouterr().err
    assert "d-calibration.csv: scored by another detector" in err and len(err.strip().splitlines()) == 1, err
    assert main(base) == 0
    text = capsys.readouterr().out
    assert f"3 natural photo(s) in {natural}" in text and f"3 of them already scored in {out.parent}" in text, text
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("state, said", [
    ({"epoch": 2, "step_in_epoch": 0}, "the run is finished (2 epochs), nothing to train"),
    ({"epoch": 1, "step_in_epoch": 1}, "after epoch 1, step 1: 2 step(s) left"),
    (None, "has no training state to resume from"),
])
def test_train_purifier_dry_run_says_what_a_resume_has_left(state, said, tmp_path, johns_dir, capsys):
    """OUT/last.pt of a finished run: the run trains nothing ('the run is finished'), the dry run said it resumes and
    counted every step; one stopped mid-epoch: the steps left; one without a training state: the run's refusal (the
    dry run said 'resumes after epoch 0'). The recipe: 2 epochs x 3 steps."""
    from puface.purifier import Purifier, RedNetConfig
    from puface.purifier.checkpoint import make_checkpoint, save_checkpoint
    from puface.training.config import load_config

    path = _purifier_recipe(tmp_path, johns_dir)
    cfg, out = load_config(path), tmp_path / "run"
    model = RedNetConfig(channels=8, depth=2, downsample=1)
    save_checkpoint(out / "last.pt", make_checkpoint(Purifier(model).net.state_dict(), model.as_dict(),
                                                     config=cfg.as_dict(), train_state=state))
    code = main(["train-purifier", "--config", str(path), "--out", str(out), "--device", "cpu", "--dry-run"])
    text, err = capsys.readouterr()
    assert said in (text if state else err) and code == (0 if state else 2), (text, err)
    if state:
        assert "= 6 step(s)" in text


@pytest.mark.parametrize("dry", [True, False])
def test_a_net_scalar_of_no_face_model_is_refused_before_any_cloak(dry, tmp_path, johns_dir, capsys):
    """net.scalars naming a face model outside detector.embedders: the run refused it only after making the cloaks and
    their features, and the dry run not at all (exit 0). Now both refuse it first: one line, exit 2, no OUT or cloak."""
    cfg = _detector_recipe(tmp_path, johns_dir, sorted(p.name for p in johns_dir.iterdir() if p.is_dir()))
    code = main(["train-detector", "--config", str(cfg), "--out", str(tmp_path / "det"), "--device", "cpu",
                 "--no-progress", "--set", 'net.scalars=["log_shift:sface"]', *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err
    assert code == 2 and "net scalar 'log_shift:sface': expected log_shift:<one of detector.embedders>" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "det").exists() and not (tmp_path / "cache").exists()
