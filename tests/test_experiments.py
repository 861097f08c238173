"""Experiment configs: the grid expands as written, bad configs are clear errors, a run writes every
result file, resumes, and refuses to mix results of different configs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from evaluation_helpers import EXPERIMENT_COLOURS_TOML, register_standins, write_colour_faces
from puface.experiments import ExperimentConfig, load_config, run_experiment
from puface.utils.errors import ConfigError, PufaceError
from puface.utils.paths import package_weights
from puface.utils.tomlconfig import extends_chain, packaged_config, packaged_config_names

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = packaged_config_names("experiment")
RECIPES = packaged_config_names("purifier")

GRID_TOML = """
name = "grid"
seeds = [0, 1]

[data]
root = "johns"

[users]
count = 2

[[attacks]]
name = "none"

[[attacks]]
name = "fawkes"
mode = "high"
embedders = ["dlib-resnet29"]

[[attacks]]
name = "lowkey"
label = "lowkey-2"
embedders = ["dlib-resnet29", "sface"]
steps = 10

[victims]
embedders = ["dlib-resnet29", "sface"]

[[trainers]]
name = "nn"

[[trainers]]
name = "e2e"
label = "e2e-50"
steps = 50
victims = ["dlib-resnet29"]

[[defenses]]
name = "none"

[[defenses]]
name = "jpeg"
quality = 60

[[defenses]]
name = "blur:sigma=1+bitdepth:bits=5"
"""


def tools_module(name: str):
    """tools/<name>.py imported as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse(text: str, tmp_path: Path, name: str = "c.toml") -> ExperimentConfig:
    p = tmp_path / name
    p.write_text(text)
    return load_config(p)


def test_grid_expands_as_written(tmp_path):
    cfg = parse(GRID_TOML, tmp_path)
    assert [a.label for a in cfg.attacks] == ["clean", "fawkes-high", "lowkey-2"]
    assert cfg.attacks[2].params == {"steps": 10} and cfg.attacks[2].embedders == ["dlib-resnet29", "sface"]
    assert [t.label for t in cfg.trainers] == ["nn", "e2e-50"] and cfg.trainers[1].params == {"steps": 50}
    assert cfg.trainers[1].victims == ["dlib-resnet29"] and cfg.trainers[0].victims is None
    assert [d.label for d in cfg.defenses] == ["none", "jpeg-q60", "blur-s1+bitdepth-5"]
    grid = cfg.grid()
    # seeds x defenses x attacks x (victims x nn + dlib x e2e)
    assert len(grid) == 2 * 3 * 3 * (2 + 1)
    assert {g["victim"] for g in grid if g["trainer"] == "e2e-50"} == {"dlib-resnet29"}
    assert len({tuple(g.values()) for g in grid}) == len(grid)
    assert grid[0] == {"seed": 0, "attack": "clean", "victim": "dlib-resnet29", "trainer": "nn", "defense": "none"}
    assert {g["defense"] for g in grid} == {"none", "jpeg-q60", "blur-s1+bitdepth-5"}
    assert cfg.users["count"] == 2 and cfg.data["train_fraction"] == 0.7


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("[users]", "[users]\ncuont = 3"), "unknown option"),
        (lambda t: t.replace('label = "lowkey-2"', 'label = "fawkes-high"'), "unique"),
        (lambda t: t + '\n[[defenses]]\nname = "jpeg"\nquality = 60\n', "unique"),
        (lambda t: t.replace("seeds = [0, 1]", 'seeds = ["a"]'), "seeds"),
        (
            lambda t: t.replace('name = "none"\n\n[[attacks]]', 'name = "none"\nmode = "x"\n\n[[attacks]]', 1),
            "takes no settings",
        ),
        (lambda t: t.replace("quality = 60", "quality = 600"), "quality"),
        (lambda t: "bogus = 1\n" + t, "unknown option"),
        (lambda t: t + "\nbogus = 1\n", "give options inside the spec string"),
        (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 1"), "not valid TOML"),
        (lambda t: t.replace('victims = ["dlib-resnet29"]', 'victims = ["arcface"]'), "names victims not in"),
        (lambda t: t.replace("count = 2", "count = -2"), r"\[users\] count must be an integer >= 1, got -2"),
        (lambda t: t.replace("count = 2", "count = 0"), r"\[users\] count must be an integer >= 1"),
        (lambda t: t + "\n[run]\ncloak_batch_size = -1\n", r"\[run\] cloak_batch_size must be an integer >= 1"),
        (lambda t: t + "\n[run]\nbatch_size = 0\n", r"\[run\] batch_size must be an integer >= 1"),
        (
            lambda t: t.replace('root = "johns"', 'root = "johns"\nimage_size = 0'),
            r"\[data\] image_size must be an integer >= 32",
        ),
        (lambda t: t.replace('root = "johns"', 'root = "johns"\nmax_per_identity = 0'), "max_per_identity must be"),
        (lambda t: t.replace('root = "johns"', 'root = "johns"\ntrain_fraction = 1.5'), "train_fraction must be"),
        # an attack's seed and device come from the run (create_attack got them twice: a TypeError traceback)
        (lambda t: t.replace('mode = "high"', 'mode = "high"\nseed = 3', 1), "sets seed; an experiment seeds"),
        (lambda t: t.replace('mode = "high"', 'mode = "high"\ndevice = "cpu"', 1), "sets device"),
    ],
)
def test_bad_configs_are_clear_errors(edit, message, tmp_path):
    with pytest.raises(PufaceError, match=message):
        parse(edit(GRID_TOML), tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["demo", "lfw", "paper"])
def test_the_main_configs_are_packaged_and_name_no_machine_path(name):
    cfg = load_config(name)  # found by name, inside the package
    assert cfg.grid() and cfg.source == packaged_config(name)
    labels = [d.label for d in cfg.defenses]
    assert "none" in labels and any(lab.startswith("puface") for lab in labels)
    assert not Path(str(cfg.data["root"])).is_absolute()  # a data set name or "johns", never a machine's path


def test_a_config_path_still_works(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text(packaged_config("demo").read_text())
    assert load_config(p).grid() == load_config("demo").grid()


def test_show_prints_a_packaged_configs_text_to_copy_and_edit(tmp_path, capsys):
    """`puface reproduce NAME --show > mine.toml` (and `train-purifier` / `train-detector --config NAME --show`) gives
    the packaged file's text, comments kept; the copy runs as the packaged config does, `extends` included."""
    from puface.cli import main
    from puface.training.config import load_config as load_recipe
    from puface.training.detector import load_detector_config

    for name in ("lfw", "lfw-e2e"):  # lfw-e2e: extends = "lfw", found by name from the copy's folder
        assert main(["reproduce", name, "--show"]) == 0
        text = capsys.readouterr().out
        assert text == packaged_config(name).read_text(encoding="utf-8") and text.startswith("#")
        (tmp_path / "mine.toml").write_text(text)
        assert load_config(tmp_path / "mine.toml").fingerprint() == load_config(name).fingerprint()
    assert main(["train-purifier", "--config", "default", "--show"]) == 0
    (tmp_path / "recipe.toml").write_text(capsys.readouterr().out)
    assert load_recipe(tmp_path / "recipe.toml") == load_recipe("default")
    assert main(["train-detector", "--show"]) == 0
    (tmp_path / "detector.toml").write_text(capsys.readouterr().out)
    assert load_detector_config(tmp_path / "detector.toml") == load_detector_config("default")
    assert main(["train-detector", "--list"]) == 0 and "sharpen " in capsys.readouterr().out
    assert main(["reproduce", "nosuch", "--show"]) == 2
    assert "no packaged experiment config has that name" in capsys.readouterr().err


def test_show_of_a_file_that_is_not_text_is_one_line(tmp_path, capsys):
    """`--show` of a file that is not UTF-8 text (a binary or Latin-1 file named as the config) is a one-line error
    naming it, as running it is (it was a UnicodeDecodeError traceback)."""
    from puface.cli import main

    bad = tmp_path / "mine.toml"
    bad.write_bytes(b"# caf\xe9\n\x00\xff\xfe")
    for args in (["reproduce", str(bad), "--show"], ["train-purifier", "--config", str(bad), "--show"],
                 ["train-detector", "--config", str(bad), "--show"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{bad}: " in err and "UTF-8" in err and len(err.strip().splitlines()) == 1, err


def test_lfw_config_is_the_benchmark():
    cfg = load_config("lfw")
    assert cfg.data["min_images"] >= 10 and cfg.data["max_per_identity"]
    assert (cfg.users.get("count") or 0) >= 20 and not cfg.users["allow_purifier_identities"]
    assert {"nn", "linear"} <= {t.name for t in cfg.trainers}
    assert {("fawkes", "high"), ("lowkey", None)} <= {(a.name, a.mode) for a in cfg.attacks}
    assert {"none", "jpeg", "blur", "median", "bitdepth", "noise", "resize", "puface"} <= {
        (d.spec["name"] if isinstance(d.spec, dict) else d.spec.split(":")[0]) for d in cfg.defenses
    }


@pytest.fixture(scope="module")
def colour_experiment(tmp_path_factory):
    register_standins()
    tmp = tmp_path_factory.mktemp("experiment")
    root = write_colour_faces(tmp / "data")
    cfg_path = tmp / "colours.toml"
    cfg_path.write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    out = tmp / "out"
    res = run_experiment(load_config(cfg_path), out, progress=False, echo=lambda s: None)
    return cfg_path, out, res


def test_run_writes_every_result_file(colour_experiment):
    cfg_path, out, res = colour_experiment
    for name in (
        "config.toml",
        "config.resolved.json",
        "runs.jsonl",
        "results.csv",
        "summary.csv",
        "results.json",
        "table.md",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert (out / "config.toml").read_text() == cfg_path.read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 2 * 2 * 3  # users x attacks x trainers x defenses
    results = json.loads((out / "results.json").read_text())  # strict JSON
    assert (
        results["n_runs"] == 24
        and results["wall_s"] > 0
        and set(results["timings_s"]) >= {"defend_s", "embed_s", "train_s"}
    )
    assert all("wall_s" in r for r in rows)
    summary = {(s["attack"], s["trainer"], s["defense"]): s for s in res.summary}
    assert summary["checker", "nn", "none"]["asr_mean"] == 1.0
    assert summary["checker", "nn", "blur-s1"]["asr_mean"] == 0.0
    assert summary["checker", "nn", "bitdepth-4"]["asr_mean"] == 1.0
    assert summary["clean", "linear", "none"]["normal_acc_mean"] == 1.0
    assert summary["checker", "nn", "none"]["setting"] == "white-box"
    assert list(out.glob("examples/0/*/checker/cloaked_0.png"))
    # cloak detection per attack: 2 users x 7 cloaked training images vs the 2 other identities' 14 natural ones
    det = results["detection"]
    assert [(r["attack"], r["n_cloaked"], r["n_natural"]) for r in det["rows"]] == [("checker", 14, 14)]
    assert 0.0 <= det["rows"][0]["auc"] <= 1.0 and len(det["roc"]["checker"]["fpr"]) >= 2
    assert next(csv.DictReader(open(out / "detection.csv")))["attack"] == "checker"
    assert "## Cloak detection" in (out / "table.md").read_text()
    assert "Cloak detection: ROC curves" in (out / "report.html").read_text()


def test_markdown_table_has_the_paper_columns_and_one_row_per_baseline(colour_experiment):
    _, out, res = colour_experiment
    md = (out / "table.md").read_text()
    assert "| attack | victim | setting | trainer | ASR no defense |" in md
    assert "normal acc. no defense" in md and "| **mean (white-box)** |" in md
    assert "| checker | test-colour-texture | white-box | nn | 100.0 ± 0.0 |" in md
    for d in ("none", "blur-s1", "bitdepth-4"):
        assert f"| {d} |" in md
    assert "PSNR vs natural" in md and "Wall time" in md


def test_resume_skips_finished_runs_and_refuses_another_config(colour_experiment, tmp_path):
    cfg_path, out, res = colour_experiment
    lines = (out / "runs.jsonl").read_text().splitlines()
    res2 = run_experiment(load_config(cfg_path), out, progress=False, echo=lambda s: None)
    assert (out / "runs.jsonl").read_text().splitlines() == lines  # nothing recomputed
    assert len(res2.rows) == len(res.rows)
    # image quality and example images of the first session are still reported
    results = json.loads((out / "results.json").read_text())
    assert results["sessions"] == 2 and len(results["image_quality"]) == 2 * 3
    assert "0/Alice/checker" in results["examples"] and "over 2 sessions" in res2.table_md
    changed = tmp_path / "changed.toml"
    changed.write_text(cfg_path.read_text().replace("bits = 4", "bits = 3"))
    with pytest.raises(
        PufaceError, match=r"a config that differs in defenses \(added bitdepth-3; removed bitdepth-4\)"
    ):
        run_experiment(load_config(changed), out, progress=False, echo=lambda s: None)


def test_a_refused_resume_names_what_differs(colour_experiment, tmp_path):
    """A config with one more defense was refused as 'a different config or different model weights', with two
    fingerprints: nothing said what differed, nor that another folder reuses the cached work. Now the refusal names
    the entries added, removed or changed and the settings, and it still refuses (the draws of users may differ)."""
    cfg_path, out, _ = colour_experiment
    lines = (out / "runs.jsonl").read_text().splitlines()
    text = cfg_path.read_text()
    more = tmp_path / "more.toml"
    more.write_text(text + '\n[[defenses]]\nname = "median"\nsize = 3\n')
    with pytest.raises(PufaceError) as e:
        run_experiment(load_config(more), out, progress=False, echo=lambda s: None)
    assert "differs in defenses (added median-3)" in str(
        e.value
    ) and "another output folder (--out; out= in Python)" in str(e.value)
    assert "--restart (restart=True)" in str(e.value)
    users = tmp_path / "users.toml"
    users.write_text(text.replace("[users]\n", "[users]\nmin_test = 2\n"))
    with pytest.raises(PufaceError, match=r"differs in \[users\] min_test \("):
        run_experiment(load_config(users), out, progress=False, echo=lambda s: None)
    assert (out / "runs.jsonl").read_text().splitlines() == lines  # nothing run, nothing lost


def test_config_changes_by_label_and_setting():
    from puface.experiments.results import config_changes

    base = load_config("demo").resolved()
    edited = json.loads(json.dumps(base))
    edited["attacks"][1]["params"]["steps"] = 41
    edited["trainers"].pop()
    edited["data"]["min_images"] = 5
    edited["report"]["users"] = 9  # changes no result
    edited["run"]["batch_size"] = 8  # nor this
    assert config_changes(base, edited) == [
        "attacks (changed fawkes-high-s40)",
        "[data] min_images",
        "trainers (removed linear)",
    ]
    assert config_changes(base, base) == [] and config_changes(None, edited) == []


@pytest.mark.parametrize("trainer, message", [
    ('name = "lineer"', "unknown trainer 'lineer'; choose one of: e2e, linear, nn"),
    ('name = "linear"\nfoo = 1', "trainer 'linear': got an unexpected keyword argument 'foo'"),
    ('name = "nn"\nlabel = "nn-2"\nfoo = 1', "trainer 'nn': got an unexpected keyword argument 'foo'"),
])
def test_bad_trainers_are_refused_before_any_work(trainer, message, tmp_path, monkeypatch):
    """An unknown trainer or option fails before the data are read and the users cloaked."""
    register_standins()
    said: list[str] = []
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace(
        '[[trainers]]\nname = "linear"', f"[[trainers]]\n{trainer}"
    )
    with pytest.raises(PufaceError, match=message):
        run_experiment(parse(text, tmp_path), tmp_path / "o", progress=False, echo=said.append)
    assert said == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("old, new, where, message", [
    ('name = "{a}"\nlabel = "checker"', 'name = "fawks"\nlabel = "checker"', "[[attacks]] 'checker'",
     "unknown attack 'fawks'; choose one of: fawkes, lowkey"),
    ('name = "{a}"\nlabel = "checker"', 'name = "fawkes"\nmode = "low"\nstpes = 3\nlabel = "checker"',
     "[[attacks]] 'checker'", r"fawkes: unknown option\(s\) stpes; known: .*steps"),
    ('name = "linear"', 'name = "lineer"', "[[trainers]] 'lineer'", "unknown trainer 'lineer'; choose one of: e2e"),
    ('name = "bitdepth"', 'name = "bitdepht"', "[[defenses]] 'bitdepht'", "unknown defense 'bitdepht'; choose one"),
    ('[victims]\nembedders = ["{e}"]', '[victims]\nembedders = ["sfaec"]', "[victims] embedders",
     "unknown embedder 'sfaec'; choose one of: .*sface"),
    ('name = "bitdepth"\nbits = 4', 'name = "puface"\nweights = "nope.pt"\nlabel = "mine"', "[[defenses]] 'mine'",
     r"nope.pt: purifier checkpoint not found; .*; a relative path is read from the current folder /"),
])
def test_a_config_files_bad_name_says_which_file_and_entry(old, new, where, message, tmp_path):
    """A mistake in a config file's entry is one line naming the file and the entry, then the valid choices
    (it named neither the file nor the entry: a grid with several attacks left the user to guess which)."""
    from evaluation_helpers import STANDIN_ATTACK, STANDIN_EMBEDDER

    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    old = old.replace("{a}", STANDIN_ATTACK).replace("{e}", STANDIN_EMBEDDER)
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as err:
        run_experiment(path, tmp_path / "o", progress=False, echo=lambda s: None)
    msg = str(err.value)
    assert msg.startswith(f"{path} {where}: ") and "\n" not in msg
    assert re.search(message, msg[len(f"{path} {where}: "):])
    assert not (tmp_path / "o").exists()


def test_protected_users_seen_by_the_purifier_are_refused(tmp_path, monkeypatch):
    """A purifier that records its training identities: named users among them are refused, drawn users avoid them."""
    register_standins()
    import puface.defenses as defenses

    monkeypatch.setattr(defenses.PuFaceDefense, "training_identities", property(lambda self: {"Alice", "Bob"}))
    monkeypatch.setattr(defenses.PuFaceDefense, "_apply", lambda self, x: x.clone())
    monkeypatch.setattr(defenses.PuFaceDefense, "fingerprint", property(lambda self: "test"))
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace(
        'name = "bitdepth"\nbits = 4', 'name = "puface"'
    )
    text = text.replace("[report]", "[report]\nenabled = false")
    named = text.replace("count = 2", 'names = ["Alice", "Carol"]')
    with pytest.raises(PufaceError, match="Alice.*purifier's training data"):
        run_experiment(parse(named, tmp_path, "named.toml"), tmp_path / "o1", progress=False, echo=lambda s: None)
    res = run_experiment(parse(text, tmp_path, "drawn.toml"), tmp_path / "o2", progress=False, echo=lambda s: None)
    assert {r["user"] for r in res.rows} == {"Carol", "Dave"}
    allowed = named.replace("count = 2", "").replace("[users]", "[users]\nallow_purifier_identities = true")
    res = run_experiment(parse(allowed, tmp_path, "allowed.toml"), tmp_path / "o3", progress=False, echo=lambda s: None)
    assert {r["user"] for r in res.rows} == {"Alice", "Carol"}


def test_too_few_users_outside_the_purifiers_training_data_says_why_and_how_to_allow_them(tmp_path, monkeypatch):
    """Every identity excluded as the purifier's training data: the error said only "not among the 2 excluded",
    not what they are nor how to allow them."""
    register_standins()
    import puface.defenses as defenses

    monkeypatch.setattr(defenses.PuFaceDefense, "training_identities", property(lambda self: {"Alice", "Bob"}))
    monkeypatch.setattr(defenses.PuFaceDefense, "fingerprint", property(lambda self: "test"))
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    text = text.replace('name = "bitdepth"\nbits = 4', 'name = "puface"')
    with pytest.raises(PufaceError, match=r"not among the 2 excluded\); excluded: the identities a purifier of the "
                       r"grid was trained on.*\[users\] allow_purifier_identities = true \(evaluate "
                       r"--allow-purifier-identities\)"):
        run_experiment(parse(text.replace("count = 2", "count = 3"), tmp_path), tmp_path / "o", progress=False,
                       echo=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_cli_reproduce_evaluate_and_errors(tmp_path, monkeypatch, capsys):
    from evaluation_helpers import STANDIN_ATTACK, STANDIN_EMBEDDER
    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    root = write_colour_faces(tmp_path / "data")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace("[report]", "[report]\nenabled = false")
    )
    assert main(["reproduce", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| checker | test-colour-texture | white-box | nn | 100.0 ± 0.0 |" in out and "wall time:" in out
    assert (
        main(["reproduce", str(cfg), "--seed", "3", "--seed", "4", "--out", str(tmp_path / "r34"), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    with open(tmp_path / "r34" / "results.csv", newline="") as f:
        assert {row["seed"] for row in csv.DictReader(f)} == {"3", "4"}
    saved_cfg = load_config(tmp_path / "r34" / "config.toml")
    assert saved_cfg.seeds == [3, 4] and saved_cfg.data["root"] == str(root)
    assert (
        tmp_path / "r" / "config.toml"
    ).read_text() == cfg.read_text()  # no override: the file itself, comments kept

    # `puface report headline` pools folders of the same grid run with other seeds, and refuses overlapping seeds
    from puface.evaluation.summaries import load_pooled

    assert main(["reproduce", str(cfg), "--seed", "5", "--out", str(tmp_path / "r5"), "--no-progress"]) == 0
    capsys.readouterr()
    pooled = load_pooled([tmp_path / "r34", tmp_path / "r5"])
    assert pooled and {(r["seeds"], r["n"]) for r in pooled} == {(3, 6)}  # 2 users x 3 seeds per cell
    with pytest.raises(PufaceError, match="seed 3 is also"):
        load_pooled([tmp_path / "r34", tmp_path / "r34"])
    # this grid has no purifier: the headline says which label to compare, then compares the one named
    assert main(["report", "headline", str(tmp_path / "r34"), str(tmp_path / "r5")]) == 2
    assert "no defense labelled 'puface' (defenses: bitdepth-4, blur-s1, none)" in capsys.readouterr().err
    assert main(["report", "headline", str(tmp_path / "r34"), str(tmp_path / "r5"), "--puface", "blur-s1"]) == 0
    assert "| checker | test-colour-texture | nn | white-box | 100.0 |" in capsys.readouterr().out

    saved = tmp_path / "saved.toml"
    shipped_purifier = package_weights("purifier-default.safetensors")
    args = ["evaluate", "--data", str(root), "--users", "2", "--image-size", "32", "--victim", STANDIN_EMBEDDER,
            "--attack", f"{STANDIN_ATTACK}:label=checker,embedders={STANDIN_EMBEDDER}", "--trainer", "nn",
            "--defense", "none", "--defense", "blur:sigma=1", "--out", str(tmp_path / "e"), "--no-progress",
            "--save-config", str(saved), "--detector-purifier", str(shipped_purifier)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| blur-s1 | 0.0 ± 0.0 | 0.0 ± 0.0 | 100.0 |" in out
    again = load_config(saved)
    assert [a.label for a in again.attacks] == ["clean", "checker"] and [d.label for d in again.defenses] == [
        "none",
        "blur-s1",
    ]
    assert again.detection["purifier"] == str(shipped_purifier)

    # --detector: the detection report's detector instead of the config's
    from puface.detection import load_detector

    assert main(["reproduce", str(cfg), "--detector", "edits", "--out", str(tmp_path / "rd"), "--no-progress"]) == 0
    capsys.readouterr()
    first = json.loads((tmp_path / "r" / "results.json").read_text())["detection"]["detector"]
    chosen = json.loads((tmp_path / "rd" / "results.json").read_text())["detection"]["detector"]
    assert first == load_detector().fingerprint() and chosen == load_detector("edits").fingerprint() != first
    assert main(["reproduce", str(cfg), "--detector", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "rx"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "none.safetensors" in err and "Traceback" not in err
    # --detector-purifier: the purifier the detector was calibrated with (here the shipped one, named by its file)
    assert main(["reproduce", str(cfg), "--detector", "edits", "--detector-purifier",
                 str(shipped_purifier), "--out", str(tmp_path / "rp"), "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "rp" / "results.json").read_text())["detection"]["detector"] == chosen
    assert (
        main(
            [
                "reproduce",
                str(cfg),
                "--detector",
                "edits",
                "--detector-purifier",
                str(tmp_path / "nopur.safetensors"),
                "--out",
                str(tmp_path / "rq"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nopur.safetensors" in err and "Traceback" not in err

    assert main(["reproduce", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("puface: error:") and "nope.toml" in err and "Traceback" not in err
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--no-progress", "--out", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_packaged_experiment_config_parses(name):
    from puface.utils.tomlconfig import to_toml, tomllib

    cfg = load_config(name)
    assert cfg.grid(), name
    assert tomllib.loads(to_toml(cfg.raw)) == cfg.raw  # what a run writes as config.toml after overrides
    assert "/work/" not in packaged_config(name).read_text() and "/root/" not in packaged_config(name).read_text()
    # every file it names that puface does not ship (research weights under runs/, a user's face model file) has the
    # command that makes it in the comments of its files, for the error that says it is missing
    from puface.experiments.config import config_files
    from puface.utils.tomlconfig import command_making

    named = set(re.findall(r'"((?:runs/)[^"\s,+]+\.safetensors|[\w.-]+\.(?:pt|onnx))"', to_toml(cfg.raw)))
    named |= set(re.findall(r"weights=(runs/[^\s,+\"]+)", to_toml(cfg.raw)))
    lacking = [n for n in sorted(named) if command_making(n, config_files(packaged_config(name))) is None]
    assert not lacking, f"{name}: no command in its comments makes {lacking}"


@pytest.mark.parametrize("name", RECIPES)
def test_every_packaged_purifier_recipe_parses(name):
    from puface.training.config import load_config as load_purifier_config

    cfg = load_purifier_config(name)
    assert (
        cfg.attacks and cfg.data.root == {"dlib150": "lfw-chips150", "arcface112": "lfw-arcface112"}[cfg.data.template]
    ), name
    assert "/work/" not in packaged_config(name, "purifier").read_text()


def _tiny_purifier(seed: int):
    import torch
    from torch import nn

    from puface.purifier import Purifier, RedNetConfig

    torch.manual_seed(seed)
    p = Purifier(RedNetConfig(channels=4, depth=2, downsample=1), meta={"data_summary": {"heldout_identities": []}})
    for prm in p.parameters():
        nn.init.normal_(prm, std=0.05)
    return p


def test_retrained_weights_behind_the_same_config_do_not_resume(tmp_path):
    """Same config text, different purifier file: the results fingerprint changes (so a run folder made
    with the old weights is not resumed with the new ones); same file: it does not."""
    from puface.experiments.build import build_defense, results_fingerprint

    weights = tmp_path / "p.safetensors"
    _tiny_purifier(0).save(weights)
    cfg = parse(f"""
name = "w"
[data]
root = "johns"
[[attacks]]
name = "fawkes"
mode = "custom"
steps = 2
embedders = ["dlib-resnet29"]
through = "{weights}"
[victims]
embedders = ["dlib-resnet29"]
[[trainers]]
name = "nn"
[[defenses]]
name = "puface"
weights = "{weights}"
""", tmp_path)

    def fingerprint():
        return results_fingerprint(cfg, {}, {d.label: build_defense(d, None) for d in cfg.defenses})

    first, config_only = fingerprint(), cfg.fingerprint()
    assert fingerprint() == first
    _tiny_purifier(1).save(weights)
    assert fingerprint() != first and cfg.fingerprint() == config_only  # the config text alone cannot tell
    # the adaptive attack's purifier counts on its own too
    cfg.defenses = []
    only_attack = fingerprint()
    _tiny_purifier(2).save(weights)
    assert fingerprint() != only_attack


def test_the_ablation_grids_shipped_rows_config_is_that_grid_without_the_ablation_purifiers():
    """lfw-ablations-shipped copies lfw-ablations' grid: the copy must not drift."""
    full, shipped = load_config("lfw-ablations"), load_config("lfw-ablations-shipped")
    for field in ("seeds", "data", "users", "attacks", "victims", "trainers", "run"):
        assert getattr(shipped, field) == getattr(full, field), field
    assert shipped.defenses == full.defenses[:2]
    assert [d.label for d in shipped.defenses] == ["none", "shipped"]


def test_the_ablation_grid_names_purifiers_that_tools_train_ablations_trains():
    """Every ablation row of lfw-ablations is a variant of tools/train_ablations.py, and the adversarially
    trained purifier of lfw-adaptive-trained is its `adaptive` variant."""
    mod = tools_module("train_ablations")
    full = load_config("lfw-ablations")
    rows = {d.label: d.spec.get("weights") for d in full.defenses[2:]}
    cpu = {label.removesuffix("-cpu") for label, w in rows.items() if w.startswith("runs/ablation-v4-cpu/")}
    rows = {label: w for label, w in rows.items() if not label.endswith("-cpu")}
    assert rows and all(w == f"runs/ablation-v4/{label}/best.safetensors" for label, w in rows.items()), rows
    assert cpu <= set(rows)  # CPU-trained copies of GPU-trained rows
    assert {mod.split_name(r)[0] for r in rows} <= set(mod.VARIANTS)
    adaptive = load_config("lfw-adaptive-trained")
    assert {d.spec.get("weights") for d in adaptive.defenses if isinstance(d.spec, dict)} >= {
        "runs/ablation-v4/adaptive/best.safetensors"
    }


CHILD_TOML = """
extends = "grid.toml"
name = "child"

[users]
min_test = 2

[[defenses]]
name = "none"
"""


def test_extends_merges_tables_replaces_lists_and_keeps_its_own_name(tmp_path):
    parent = parse(GRID_TOML, tmp_path, "grid.toml")
    child = parse(CHILD_TOML, tmp_path, "child.toml")
    assert child.name == "child" and child.description == ""
    assert child.users["count"] == 2 and child.users["min_test"] == 2  # [users] merged key by key
    assert [d.label for d in child.defenses] == ["none"]  # [[defenses]] replaced as a whole
    assert [a.label for a in child.attacks] == [a.label for a in parent.attacks]  # not written: inherited
    assert child.seeds == [0, 1] and child.trainers == parent.trainers and "extends" not in child.raw
    # a grandchild, and a parent named by a path in another folder
    (tmp_path / "sub").mkdir()
    grand = parse('extends = "../child.toml"\n[users]\ncount = 1\n', tmp_path / "sub", "grand.toml")
    assert grand.name == "grand" and grand.users == {**child.users, "count": 1} and grand.defenses == child.defenses


def test_extends_a_packaged_config_by_name(tmp_path):
    cfg = parse('extends = "lfw"\nname = "small"\n[users]\ncount = 3\n', tmp_path)
    lfw = load_config("lfw")
    assert cfg.attacks == lfw.attacks and cfg.data == lfw.data and cfg.users["count"] == 3
    assert cfg.description == "" and cfg.name == "small"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"c.toml": 'extends = "nowhere.toml"\n'}, "nowhere.toml: config file not found .named in .*c.toml"),
        ({"c.toml": 'extends = "d.toml"\n', "d.toml": 'extends = "c.toml"\n'}, "round in a circle"),
        ({"c.toml": 'extends = 3\n'}, "extends must be a config file or name"),
        ({"c.toml": 'extends = "d.toml"\n', "d.toml": "seeds = [0\n"}, "d.toml: not valid TOML"),
        ({"c.toml": 'extends = "grid.toml"\n[users]\ncuont = 1\n', "grid.toml": GRID_TOML}, "unknown option"),
    ],
)
def test_bad_extends_are_clear_errors(files, message, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.toml")


def test_a_run_of_an_extending_config_saves_it_resolved(tmp_path):
    """config.toml beside the results must stand alone (the parent may change later): the resolved TOML,
    headed by the chain it came from, which loads back to the same experiment."""
    from puface.experiments import config_text

    parse(GRID_TOML, tmp_path, "grid.toml")
    child = parse(CHILD_TOML, tmp_path, "child.toml")
    text = config_text(child)
    assert text.startswith(f"# {tmp_path / 'child.toml'} -> {tmp_path / 'grid.toml'}, resolved")
    assert "extends" not in text.splitlines()[1:]
    (tmp_path / "results").mkdir()
    saved = parse(text, tmp_path / "results", "config.toml")  # away from grid.toml
    assert saved.fingerprint() == child.fingerprint() and saved.grid() == child.grid()
    # with an override, the header says so
    moved = child.with_seeds([5])
    assert "with command-line overrides" in config_text(moved).splitlines()[0]
    assert "--set" not in config_text(moved).splitlines()[0]  # none was given
    # a config without extends is saved as its own text, comments and all
    plain = parse("# a comment\n" + GRID_TOML, tmp_path, "plain.toml")
    assert config_text(plain) == "# a comment\n" + GRID_TOML


def test_the_saved_config_names_packaged_configs_by_their_place_in_the_package(tmp_path, monkeypatch):
    """`reproduce NAME --out DIR` wrote config.toml headed by the packaged configs' absolute paths on this install
    ("# /.../site-packages/puface/configs/lfw-unseen-surrogate-step.toml -> ..."), a path of one machine in a
    result folder that is committed and shared. Packaged configs are named "puface/configs/NAME.toml" now; a user's
    own file keeps its path as given."""
    import puface
    import puface.experiments
    from puface.cli import main
    from puface.experiments import config_text

    seen = []
    monkeypatch.setattr(puface.experiments, "run_experiment", lambda cfg, *a, **k: seen.append(cfg) or 1 / 0)
    monkeypatch.chdir(tmp_path)
    Path("mine").mkdir()
    Path("mine/grid.toml").write_text('extends = "lfw-unseen"\nname = "mine"\n')
    for ref, chain in (("lfw-unseen-surrogate-step", "lfw-unseen-surrogate-step -> lfw-unseen-surrogate -> lfw-unseen"),
                       ("mine/grid.toml", "lfw-unseen")):
        with pytest.raises(ZeroDivisionError):
            main(["reproduce", ref, "--out", str(tmp_path / "r")])
        header = config_text(seen[-1]).splitlines()[0]
        packaged = " -> ".join(f"puface/configs/{n}.toml" for n in f"{chain} -> lfw".split(" -> "))
        mine = "mine/grid.toml -> " if ref.endswith(".toml") else ""
        assert header == f"# {mine}{packaged}, resolved (extends applied)", header
        assert str(Path(puface.__file__).parent) not in header
    given = tmp_path / "mine" / "grid.toml"  # an absolute path given stays one
    assert config_text(load_config(given)).startswith(f"# {given} -> puface/configs/lfw-unseen.toml ->")


def test_the_lfw_family_extends_the_main_grid():
    """Every packaged lfw-* config starts from lfw (directly or through another), so the data and split
    they share are written once. One may name the same photos in another layout (lfw-arcface112: root and
    image size) or add the photos the chips were cut from (lfw-photos); the selection and split stay lfw's."""
    lfw = load_config("lfw")
    layout = {"lfw-chips150": 150, "lfw-arcface112": 112}
    for name in [n for n in EXPERIMENTS if n.startswith("lfw-")]:
        chain = extends_chain(packaged_config(name))
        assert chain[-1][0].name == "lfw.toml", name
        cfg = load_config(name)
        assert layout[cfg.data["root"]] == cfg.data["image_size"], name
        assert cfg.data.get("photos") in (None, "lfw-photos"), name
        same = {k: v for k, v in cfg.data.items() if k not in ("root", "image_size", "photos", "photos_jpeg")}
        assert same == {k: v for k, v in lfw.data.items() if k not in ("root", "image_size")}, name
        assert cfg.seeds == lfw.seeds and cfg.name == name, name


def test_recipe_suffixes_split_off_repeats():
    """tools/train_ablations.split_name: "k1-s2" is variant k1 with train.seed 2; any label's -sN suffix is
    a repeat for `puface report cells repeats` (evaluation.summaries.recipe_of); other -s... are not."""
    from puface.evaluation.summaries import recipe_of

    mod = tools_module("train_ablations")
    assert mod.split_name("k1-s2") == ("k1", 2) and mod.split_name("k1") == ("k1", None)
    assert mod.split_name("mine-s3") == ("mine-s3", None)  # not a variant there
    assert recipe_of("mine-s3") == "mine" and recipe_of("fawkes-high-sface") == "fawkes-high-sface"
    assert recipe_of("-s1") == "-s1"


def test_list_edits_drop_and_add_entries_of_the_parent(tmp_path):
    parse(GRID_TOML, tmp_path, "grid.toml")
    child = parse(
        'extends = "grid.toml"\ndrop_attacks = ["lowkey-2"]\ndrop_defenses = ["jpeg-q60"]\n'
        '[[add_attacks]]\nname = "fawkes"\nmode = "low"\nembedders = ["dlib-resnet29"]\n',
        tmp_path,
        "edit.toml",
    )
    assert [a.label for a in child.attacks] == ["clean", "fawkes-high", "fawkes-low"]
    assert [d.label for d in child.defenses] == ["none", "blur-s1+bitdepth-5"]
    with pytest.raises(ConfigError, match="drop_attacks names 'nope', not among its attacks .clean, fawkes-high"):
        parse('extends = "grid.toml"\ndrop_attacks = ["nope"]\n', tmp_path, "bad.toml")


def test_data_root_comes_from_a_folder_puface_data_or_says_how_to_get_it(tmp_path, monkeypatch):
    from puface.data.datasets import resolve_data_root

    (tmp_path / "sets" / "lfw-chips150").mkdir(parents=True)
    monkeypatch.delenv("PUFACE_DATA", raising=False)
    with pytest.raises(PufaceError, match="data set 'lfw-chips150' not found.*PUFACE_DATA .not set.*puface align"):
        resolve_data_root("lfw-chips150")
    monkeypatch.setenv("PUFACE_DATA", str(tmp_path / "sets"))
    assert resolve_data_root("lfw-chips150") == tmp_path / "sets" / "lfw-chips150"
    assert resolve_data_root(tmp_path / "sets") == tmp_path / "sets"  # a folder is a folder
    with pytest.raises(PufaceError, match="somewhere: data folder not found"):
        resolve_data_root("somewhere")
    with pytest.raises(PufaceError, match="no data given"):
        resolve_data_root("")


def test_a_relative_data_root_not_found_says_it_is_read_from_the_current_folder(tmp_path, monkeypatch):
    """A config beside its data, `[data] root = "../people"`, was refused with "not a folder here": here is the
    folder puface runs in (while `extends` is read from the config's folder), and the message now says so."""
    from puface.data.datasets import resolve_data_root

    monkeypatch.delenv("PUFACE_DATA", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(PufaceError) as e:
        resolve_data_root("../people")
    assert f"not a folder under the current folder {tmp_path / 'work'}" in str(e.value)
    assert "not the config file's folder" in str(e.value)
    with pytest.raises(PufaceError, match="data folder not found: no such folder; pass --data DIR"):
        resolve_data_root(tmp_path / "people")  # an absolute path: nothing else was looked at


def test_a_relative_data_root_of_an_extended_config_is_read_from_the_current_folder(tmp_path, monkeypatch):
    """A relative `[data] root` set in an extended config of another folder is read from the current folder, as the
    child's own is (never from either config file's folder), and the error says so; it also looked in
    `$PUFACE_HOME/data/<root>` (where `puface data fetch` puts data sets) without saying so, and names it now. A
    folder attack's relative root said only "folder of cloaked images not found"; it names the current folder too."""
    from puface.data.datasets import resolve_data_root

    for folder in ("base/faces/a", "sub/faces/a", "work"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "base" / "base.toml").write_text('extends = "demo"\n[data]\nroot = "faces"\n')
    (tmp_path / "sub" / "child.toml").write_text('extends = "../base/base.toml"\nname = "child"\n')
    monkeypatch.delenv("PUFACE_DATA", raising=False)
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    root = load_config(tmp_path / "sub" / "child.toml").data["root"]
    with pytest.raises(PufaceError) as e:
        resolve_data_root(root)
    said = str(e.value)
    assert said.startswith("faces: data folder not found: not a folder under the current folder "
                           f"{tmp_path / 'work'}, which a relative path is read from (not the config file's folder, "
                           "nor an extended config's), nor in $PUFACE_DATA (not set), nor in $PUFACE_HOME/data "
                           f"({tmp_path / 'home' / 'data'}); pass --data DIR"), said
    assert "\n" not in said
    monkeypatch.chdir(tmp_path / "sub")
    assert resolve_data_root(root).resolve() == tmp_path / "sub" / "faces"
    from puface.attacks.folder import FolderCloaks  # ([[attacks]] name = "folder", root = DIR: the same rule)

    with pytest.raises(PufaceError, match=f"^cloaked: folder of cloaked images not found under the current folder "
                                          f"{tmp_path / 'sub'}, which a relative path is read from"):
        FolderCloaks("cloaked")


def test_a_folder_attacks_root_under_the_home_folder_is_found(tmp_path, monkeypatch):
    """`root = "~/cloaked"` of a folder attack was looked for as a folder named '~' under the current folder (and the
    error said it was read from there), though a `[data] root` of "~/faces" is found in the home folder; both expand
    ~ now."""
    from puface.attacks.folder import FolderCloaks
    from puface.data.datasets import resolve_data_root

    for folder in ("home/cloaked", "home/faces/a", "work"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_data_root("~/faces") == tmp_path / "home" / "faces"
    assert FolderCloaks("~/cloaked").root == tmp_path / "home" / "cloaked"


def test_a_typo_with_restart_leaves_the_earlier_results_alone(colour_experiment, tmp_path):
    """A bad spec value is one clear error raised before the output folder is touched: a --restart with a
    typo must not discard the finished runs or overwrite the recorded config."""
    cfg_path, out, _ = colour_experiment
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg_path.read_text().replace('label = "checker"', 'label = "checker"\namplitude = "abc"'))
    with pytest.raises(PufaceError, match="amplitude must be a number, got 'abc'"):
        run_experiment(load_config(bad), copy, progress=False, echo=lambda s: None, restart=True)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_evaluate_save_config_into_a_new_folder_or_onto_a_folder(tmp_path, capsys):
    """`evaluate --save-config new/c.toml` ended in a FileNotFoundError traceback, `--save-config DIR` in an
    IsADirectoryError one; now the first is written (its folder made), the second is a one-line error."""
    from puface.cli import main

    nope = str(tmp_path / "nope")  # data that are not there: the run stops after the config is saved
    assert main(["evaluate", "--data", nope, "--save-config", str(tmp_path / "new" / "c.toml"), "--no-progress"]) == 2
    assert (
        'root = "' in (tmp_path / "new" / "c.toml").read_text() and "data folder not found" in capsys.readouterr().err
    )
    assert main(["evaluate", "--data", nope, "--save-config", str(tmp_path / "new"), "--no-progress"]) == 2
    assert "new: cannot write" in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_or_cannot_be_made_is_a_clear_error(tmp_path):
    """`evaluate --out FILE` (and reproduce) ended in a FileExistsError traceback; now one PufaceError naming it."""
    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    (tmp_path / "afile").write_text("keep me")
    for out, message in ((tmp_path / "afile", "afile is a file, not a folder"),
                         (tmp_path / "afile" / "sub", "lies below the file")):
        with pytest.raises(PufaceError, match=message):
            run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_resuming_over_changed_data_is_refused(tmp_path):
    """The runs of a folder hold for the images they read: after a change under the data folder a resume is
    refused (unchanged data resumes)."""
    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    out = tmp_path / "out"
    run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    said: list[str] = []
    run_experiment(parse(text, tmp_path), out, progress=False, echo=said.append)
    assert any(s.startswith("resuming:") for s in said)
    next(p for p in sorted(root.rglob("*.png"))).unlink()
    with pytest.raises(PufaceError, match="results of other data"):
        run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)


def test_an_image_changed_in_place_at_its_size_is_seen_and_times_are_not(tmp_path):
    """The data check reads contents: two images swapped (every path and size as it was) refuse a resume, which the
    earlier paths-and-sizes fingerprint let through; new file times alone (a copy made with cp -r) do not. A folder
    written before contents were recorded resumes, and records them."""
    import os

    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    out = tmp_path / "out"
    run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    for p in root.rglob("*.png"):
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**12))
    said: list[str] = []
    run_experiment(parse(text, tmp_path), out, progress=False, echo=said.append)
    assert any(s.startswith("resuming:") for s in said)
    by_size: dict[int, list[Path]] = {}
    for p in sorted(root.rglob("*.png")):
        by_size.setdefault(p.stat().st_size, []).append(p)
    a, b = next(ps for ps in by_size.values() if len(ps) > 1 and ps[0].read_bytes() != ps[1].read_bytes())[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(PufaceError, match="images changed in place"):
        run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "data_content"}))
    said.clear()
    run_experiment(parse(text, tmp_path), out, progress=False, echo=said.append)  # an older folder: paths and sizes
    assert any(s.startswith("resuming:") for s in said)
    assert json.loads((out / "state.json").read_text())["data_content"] != state["data_content"]


def test_reproduce_records_its_detection_overrides_in_the_saved_config(tmp_path, monkeypatch):
    """--detector, --detector-purifier and --no-detect change the run's detection table, so OUT/config.toml
    (what a rerun reads) must say them."""
    import puface.experiments
    from puface.cli import main
    from puface.experiments import config_text

    seen = []
    monkeypatch.setattr(puface.experiments, "run_experiment", lambda cfg, *a, **k: seen.append(cfg) or 1 / 0)
    for extra in (["--detector", "edits", "--detector-purifier", "mine.safetensors"], ["--no-detect"]):
        with pytest.raises(ZeroDivisionError):
            main(["reproduce", "demo", "--out", str(tmp_path / "r"), *extra])
        (tmp_path / "saved.toml").write_text(config_text(seen[-1]))
        saved = load_config(tmp_path / "saved.toml")
        assert saved.detection == seen[-1].detection and saved.fingerprint() == load_config("demo").fingerprint()
    assert seen[0].detection["detector"] == "edits" and seen[0].detection["purifier"] == "mine.safetensors"
    assert seen[1].detection["enabled"] is False


def test_restart_sets_aside_everything_the_discarded_runs_wrote(tmp_path):
    """--restart after the data changed (the way out a refused resume names): the new tables hold the new runs only.
    Before, only runs.jsonl was set aside: the discarded users' image quality and examples (details.jsonl) were
    summed into the new tables and the report's grid, and the discarded session into the wall time."""
    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace(
        "[run]", "[detection]\nenabled = false\n\n[run]"
    )
    out = tmp_path / "out"
    run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    users = json.loads((out / "results.json").read_text())["users"]["0"]
    gone = users[0]
    (root / gone).rename(root / "Zed")
    res = run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None, restart=True)
    results = json.loads((out / "results.json").read_text())
    assert gone not in results["users"]["0"] and results["sessions"] == 1 and "resumed" not in res.table_md
    assert {k.split("/")[1] for k in results["examples"]} <= set(results["users"]["0"])
    assert all(q["n"] == 14 for q in results["image_quality"])  # 2 users x 7 training images
    assert gone not in (out / "report.html").read_text()
    assert len(list(out.glob("details.*.discarded.jsonl"))) == 1 and len(list(out.glob("runs.*.discarded.jsonl"))) == 1


def test_resuming_with_other_face_models_behind_the_same_names_is_refused(tmp_path, monkeypatch):
    """A run folder resumed only when the config text, the victims' and purifiers' weights and the data were the
    same. An attack's surrogate file that no victim is (replaced by other weights), and a victim's sidecar (its
    normalisation corrected), were not compared: the resume went on and its table mixed runs of two models. Both
    are refused now; unchanged models resume."""
    import torch
    from torch import nn

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    root = write_colour_faces(tmp_path / "data", per_identity=6)

    def save_model(path: Path, seed: int, scale: float = 1.0) -> None:
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 8)
        ).eval()
        torch.jit.script(net).save(str(path))
        path.with_suffix(".json").write_text(json.dumps({"input_size": [32, 32], "scale": scale, "mean": 0, "std": 1}))

    victim, surrogate = tmp_path / "victim.pt", tmp_path / "surrogate.pt"
    save_model(victim, 0)
    save_model(surrogate, 1)
    text = (
        EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
        .replace(
            'name = "bitdepth"\nbits = 4',
            'name = "bitdepth"\nbits = 4\n\n[[attacks]]\nname = "fawkes"\nmode = "custom"\n'
            f'steps = 1\nembedders = ["{surrogate}"]',
        )
        .replace('[victims]\nembedders = ["', f'[victims]\nembedders = ["{victim}", "')
    )
    out = tmp_path / "out"
    cfg = parse(text, tmp_path)
    assert [a.name for a in cfg.attacks][-1] == "fawkes" and str(victim) in cfg.victims
    run_experiment(cfg, out, progress=False, echo=lambda s: None)
    said: list[str] = []
    run_experiment(parse(text, tmp_path), out, progress=False, echo=said.append)
    assert any(s.startswith("resuming:") for s in said)
    save_model(surrogate, 2)  # other weights under the surrogate's name
    with pytest.raises(PufaceError, match="other face models"):
        run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)
    save_model(surrogate, 1)
    save_model(victim, 0, scale=255.0)  # the victim's sidecar corrected
    with pytest.raises(PufaceError, match="other face models"):
        run_experiment(parse(text, tmp_path), out, progress=False, echo=lambda s: None)


def test_image_quality_counts_identical_images_apart_from_the_psnr_mean(colour_experiment):
    """The clean images with no defense are the natural ones: their PSNR is infinite, recorded at the 99 dB cap, and
    table.md showed "99.00 ± 0.00" (and averaged the cap with real values where some images were identical)."""
    from puface.evaluation.tables import quality_table

    _, out, res = colour_experiment
    md = (out / "table.md").read_text()
    assert "| clean | none | identical (∞) | 1.0000 ± 0.0000 | 14 |" in md and "99.00" not in md
    assert "counted apart (identical), not averaged" in md
    quality = {(q["attack"], q["defense"]): q for q in json.loads((out / "results.json").read_text())["image_quality"]}
    assert quality["clean", "none"]["psnr_identical"] == quality["clean", "none"]["n"] == 14
    assert quality["clean", "none"]["psnr_mean"] is None  # no image differs: no mean
    assert quality["checker", "none"]["psnr_identical"] == 0 and quality["checker", "none"]["psnr_mean"] < 99.0
    # some identical: the mean and deviation of the others, the identical ones named
    _, rows = quality_table([{"attack": "a", "defense": "d", "psnr_mean": 30.0, "psnr_std": 2.0, "ssim_mean": 0.9,
                              "ssim_std": 0.01, "n": 5, "psnr_identical": 2}])
    assert rows[0][2] == "30.00 ± 2.00 (2 identical left out)"


def test_labels_whose_pipes_would_give_two_cells_one_run_id_are_refused():
    """Run ids join (seed, attack, victim, trainer, defense, user) with `|` and resume skips the ids found in
    runs.jsonl: attack "x|a" with victim "b", trainer "t" and attack "x" with victim "a", trainer "b|t" are one id,
    so the second cell was never run (taken as done). Such a grid is refused; a `|` that makes no clash is kept."""
    raw = {
        "attacks": [{"name": "none", "label": "x"}, {"name": "none", "label": "x|a"}],
        "victims": {"embedders": ["a", "b"]},
        "trainers": [{"name": "nn", "label": "t"}, {"name": "nn", "label": "b|t"}],
        "defenses": ["none"],
    }
    with pytest.raises(ConfigError, match="two cells would share one id"):
        ExperimentConfig.from_dict(raw)
    raw["trainers"][1]["label"] = "t|b"
    cfg = ExperimentConfig.from_dict(raw)
    assert [t.label for t in cfg.trainers] == ["t", "t|b"] and len(cfg.grid()) == 8


def test_example_images_of_labels_that_differ_only_by_colon_or_slash_are_two_files(tmp_path):
    """Example files were named by the kind with ":" -> "-" and "/" -> "_": defenses labelled "jpeg:75" and "jpeg-75"
    (or "a/b" and "a_b") wrote one file, the second defense's images standing for both in the report."""
    import numpy as np
    import torch
    from PIL import Image

    from puface.experiments.results import ResultsFolder

    cfg = ExperimentConfig.from_dict(
        {
            "attacks": ["none"],
            "trainers": ["nn"],
            "defenses": [
                {"name": "jpeg", "label": "jpeg:75"},
                {"name": "jpeg", "label": "jpeg-75"},
                {"name": "blur", "label": "a/b"},
                {"name": "blur", "label": "a_b"},
            ],
        }
    )
    kinds = ["defense:jpeg:75", "defense:jpeg-75", "defense:a/b", "defense:a_b", "cloaked"]
    with ResultsFolder(tmp_path / "out", cfg, "fp") as folder:
        for value, kind in enumerate(kinds):
            folder.add_example(0, "Ann", "fawkes", kind, torch.full((1, 3, 8, 8), 10 * value, dtype=torch.uint8))
    paths = {kind: folder.examples()["0/Ann/fawkes"][kind][0] for kind in kinds}
    assert len(set(paths.values())) == len(kinds)
    for value, kind in enumerate(kinds):  # each file holds its own kind's images
        assert (np.asarray(Image.open(tmp_path / "out" / paths[kind])) == 10 * value).all()
    # a label without ":" or "/" keeps the name it had
    assert paths["defense:jpeg-75"].endswith("/defense-jpeg-75_0.png") and paths["cloaked"].endswith("/cloaked_0.png")


def test_an_attack_label_never_writes_example_images_outside_the_output_folder(tmp_path):
    """Example images went to examples/<seed>/<user>/<attack label>/ with the label as it was: a config's label
    "../../x" wrote them beside the output folder, "/elsewhere/x" anywhere on the disk, "a/b" into nested folders.
    Each label is now one folder under examples/, the labels apart, and a rebuilt report names it by its label."""
    import torch

    from puface.experiments.report_folder import _examples
    from puface.experiments.results import ResultsFolder

    far = tmp_path / "far"
    labels = ["../../up", str(far), "..", ".", "a/b", "a_b", "a\\b", "x" * 300, "fawkes-high"]
    cfg = ExperimentConfig.from_dict({"attacks": [{"name": "none", "label": a} for a in labels], "trainers": ["nn"],
                                      "defenses": ["none"]})
    out = tmp_path / "run" / "out"
    with ResultsFolder(out, cfg, "fp") as folder:
        for a in labels:
            for kind in ("natural", "cloaked"):
                folder.add_example(0, "Ann", a, kind, torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
    written = sorted(p for p in tmp_path.rglob("*.png"))
    assert len(written) == 2 * len(labels)
    assert all(p.parent.parent == out / "examples" / "0" / "Ann" for p in written), written
    assert not far.exists()
    paths = folder.examples()
    assert len({paths[f"0/Ann/{a}"]["cloaked"][0] for a in labels}) == len(labels)
    assert paths["0/Ann/fawkes-high"]["cloaked"] == ["examples/0/Ann/fawkes-high/cloaked_0.png"]  # a plain label kept
    rebuilt = _examples(out, ["none"], labels)
    assert {k: v["cloaked"] for k, v in rebuilt.items()} == {k: v["cloaked"] for k, v in paths.items()}


def test_the_cli_and_table_md_say_which_wall_time_each_gives(tmp_path, monkeypatch, capsys):
    """The CLI printed "wall time: N s" (this command, writing tables and report included) right after table.md's
    "Wall time: M s" (the grid's runs, summed over every session of the folder): two numbers, neither saying which."""
    import re

    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(write_colour_faces(tmp_path / "data"))))
    args = ["reproduce", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--no-detect"]
    assert main(args) == 0 and main(args) == 0  # the second resumes: a session with no runs
    out = capsys.readouterr().out.splitlines()
    table = next(line for line in reversed(out) if line.startswith("Wall time:"))
    assert re.fullmatch(
        r"Wall time: \d+ s \(\d+\.\d min\) running the grid \(loading, cloaking, defending, training, "
        r"detection; writing these tables and the report not counted\), summed over 2 sessions \(resumed\)\.",
        table,
    )
    assert table in (tmp_path / "r" / "table.md").read_text()
    assert re.fullmatch(
        r"wall time: \d+ s \(\d+\.\d min\) for this command, writing the tables and report included", out[-1]
    )


def test_a_trainer_whose_fits_changed_does_not_resume_its_old_runs(tmp_path, monkeypatch):
    """The linear probe's fits changed (every fit starts cold since algorithm 2); a folder holding its earlier runs must
    not be resumed beside new ones: the results fingerprint holds the versions of the grid's trainers above 1, and a
    grid of trainers at version 1 keeps the fingerprint it had before versions existed."""
    from puface.evaluation.trainers import LinearProbe, NearestNeighbour
    from puface.experiments.build import results_fingerprint

    grid = 'name = "t"\n[data]\nroot = "johns"\n[[attacks]]\nname = "none"\n[victims]\nembedders = ["dlib-resnet29"]\n'
    linear = parse(
        grid + '[[trainers]]\nname = "nn"\n[[trainers]]\nname = "linear"\n[[defenses]]\nname = "none"\n', tmp_path
    )
    nn_only = parse(grid + '[[trainers]]\nname = "nn"\n[[defenses]]\nname = "none"\n', tmp_path)
    now = results_fingerprint(linear, {}, {}), results_fingerprint(nn_only, {}, {})
    assert LinearProbe.algorithm == 2 and NearestNeighbour.algorithm == 1
    monkeypatch.setattr(LinearProbe, "algorithm", 1, raising=False)  # the warm-started probe's runs
    assert results_fingerprint(linear, {}, {}) != now[0]
    assert results_fingerprint(nn_only, {}, {}) == now[1]
    monkeypatch.setattr(NearestNeighbour, "algorithm", 2, raising=False)
    assert results_fingerprint(nn_only, {}, {}) != now[1]
    # e2e fits take the run's seed since algorithm 2 (seed 0 for every draw before): a folder of its earlier runs is
    # not resumed beside new ones either
    from puface.evaluation.trainers import EndToEnd

    e2e = parse(grid + '[[trainers]]\nname = "e2e"\n[[defenses]]\nname = "none"\n', tmp_path)
    seeded = results_fingerprint(e2e, {}, {})
    assert EndToEnd.algorithm == 2
    monkeypatch.setattr(EndToEnd, "algorithm", 1, raising=False)
    assert results_fingerprint(e2e, {}, {}) != seeded


def test_runs_of_another_config_are_not_taken_as_done(colour_experiment, tmp_path):
    """A folder whose state.json was lost (copied without it) kept another config's rows in runs.jsonl: their run ids
    counted as done, so a config of other defenses skipped the runs whose ids matched (none, blur-s1) and then left
    them out of its tables (rows of another fingerprint): summary.csv lacked two of its three defenses, silently.
    Only this config's runs count as done now."""
    cfg_path, out, res = colour_experiment
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "state.json").unlink()
    changed = tmp_path / "changed.toml"
    changed.write_text(cfg_path.read_text().replace("bits = 4", "bits = 3"))
    res2 = run_experiment(load_config(changed), copy, progress=False, echo=lambda s: None)
    assert len(res2.rows) == len(res.rows)
    assert {s["defense"] for s in res2.summary} == {"none", "blur-s1", "bitdepth-3"}
    assert {s["defense"]: s["users"] for s in res2.summary} == {"none": 2, "blur-s1": 2, "bitdepth-3": 2}


def test_dry_run_states_the_grid_size_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """A newcomer had no way to see how big a grid is before starting it (`paper`: 54,000 runs and ~11,000 cloaks
    over three seeds, GPU hours): no --dry-run, and a run said nothing of its size. Now `reproduce --dry-run` checks
    the config and data, prints users x attacks x defenses x cells = runs and the images to cloak, and writes no
    output folder; a real run prints the same line per seed, with the runs already finished on a resume."""
    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    root = write_colour_faces(tmp_path / "data")
    cfg = tmp_path / "c.toml"
    cfg.write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "r"
    assert main(["reproduce", str(cfg), "--dry-run", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    grid = ("grid: 2 user(s) x 2 attack(s) x 3 defense(s) x 2 (victim, trainer) cell(s) = 24 run(s); "
            "14 image(s) to cloak")
    assert grid in said and "2 seed(s) (0, 1): 48 run(s) in all" in said and "Dry run" in said
    assert not out.exists()

    lines: list[str] = []
    run_experiment(load_config(cfg), out, progress=False, echo=lines.append)
    assert sum(grid in s for s in lines) == 2  # one line per seed
    lines.clear()
    run_experiment(load_config(cfg), out, progress=False, echo=lines.append)
    assert any("= 24 run(s), 24 finished; 0 image(s) to cloak" in s for s in lines)


def test_a_missing_named_data_set_says_every_place_looked_in(tmp_path, monkeypatch):
    """`reproduce lfw` without the data said "not a folder here, not in $PUFACE_DATA (not set)", though it also looks
    in $PUFACE_HOME/data, where `puface data fetch` puts the data set: a user who fetched it under another
    $PUFACE_HOME was not told where it was looked for. Now the error names that folder too."""
    from puface.data.datasets import resolve_data_root

    monkeypatch.delenv("PUFACE_DATA", raising=False)
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PufaceError) as e:
        resolve_data_root("lfw-chips150")
    assert f"nor in $PUFACE_HOME/data ({tmp_path / 'home' / 'data'})" in str(e.value)
    assert "puface data fetch lfw" in str(e.value)


def test_reproduce_set_overrides_a_setting_for_a_small_run(tmp_path, monkeypatch, capsys):
    """`puface reproduce` had no --set (train-purifier and calibrate-detector have one): a newcomer who wanted `lfw`
    with 2 users had to write a config file. Now --set KEY=VALUE overrides a setting (an [[attacks]] entry by its
    index), is recorded in OUT/config.toml and table.md's heading, and a bad key or value is one line naming the
    --set."""
    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    root = write_colour_faces(tmp_path / "data")
    cfg = tmp_path / "c.toml"
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace("[report]", "[report]\nenabled = false")
    cfg.write_text(text.replace('name = "colours"', 'name = "colours"\ndescription = "2 users."'))
    out = tmp_path / "r"
    assert main(["reproduce", str(cfg), "--set", "users.count=1", "--set", "attacks.1.label=chk", "--out", str(out),
                 "--no-progress", "--no-detect"]) == 0
    capsys.readouterr()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["user"] for r in rows}) == 1 and {r["attack"] for r in rows} == {"clean", "chk"}
    saved = load_config(out / "config.toml")
    head = (out / "config.toml").read_text().splitlines()[0]  # names the --set given (it once listed "--set" always)
    assert saved.users["count"] == 1 and "(--set users.count=1; --set attacks.1.label=chk; data root" in head
    # table.md's heading, the config's description, says the grid was changed (it said "2 users" for 1)
    assert "2 users. Changed by --set users.count=1, attacks.1.label=chk." in (out / "table.md").read_text()
    for bad, message in ((["users.cuont=1"], "--set users.cuont=1: unknown option"),
                         (["users.count=two"], "--set users.count=two: .*count must be an integer"),
                         (["attacks.label=x"], "--set attacks.label: attacks is a list of 2 entries")):
        assert main(["reproduce", str(cfg), "--set", *bad, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_reproduce_set_errors_name_the_set_and_an_option_of_the_same_setting_is_refused(tmp_path, monkeypatch,
                                                                                          capsys):
    """Review of BP: a --set error found while an entry was built named the config file alone ("c.toml [victims]
    embedders: unknown embedder"), as if the file held the typo; `--set =3` said "unknown option(s) in c.toml: "
    (an empty name); a --set given twice kept the last, and `--set data.root=A --data B` (likewise seeds / --seed,
    run.device / --device) ran on B without a word. Now the errors name the --set, and the others are refused."""
    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    root = write_colour_faces(tmp_path / "data")
    cfg = tmp_path / "c.toml"
    cfg.write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    cases = (
        (["--set", 'victims.embedders=["nope"]'],
         re.escape("c.toml with --set victims.embedders=['nope'] [victims] embedders: unknown embedder 'nope'")),
        (["--set", "trainers.0.k=abc"], "c.toml with --set trainers.0.k=abc \\[\\[trainers\\]\\] 'nn': .*'k'"),
        (["--set", "=3"], re.escape("--set expects SECTION.KEY=VALUE, got '=3'")),
        (["--set", "users.count=1", "--set", "users.count=2"], "--set users.count is given twice"),
        (["--set", "data.root=elsewhere", "--data", str(root)],
         "--set data.root=elsewhere and --data both set data.root; give one of them"),
        (["--set", "data={root='elsewhere'}", "--data", str(root)], "and --data both set data.root"),
        (["--set", "seeds=[1]", "--seed", "2"], "--set seeds=\\[1\\] and --seed both set seeds"),
        (["--set", "run.device='cpu'", "--device", "cpu"], "and --device both set run.device"),
    )
    for args, message in cases:
        assert main(["reproduce", str(cfg), "--dry-run", "--no-progress", *args]) == 2, args
        assert re.search(message, capsys.readouterr().err), args
    # a table without the option's setting goes with the option
    assert main(["reproduce", str(cfg), "--dry-run", "--no-progress", "--no-detect", "--set",
                 "data={image_size=32}", "--data", str(root)]) == 0
    assert "2 user(s)" in capsys.readouterr().out


def test_a_wrong_detector_is_refused_before_a_restart_sets_the_earlier_runs_aside(colour_experiment, tmp_path,
                                                                                   capsys):
    """Review of BP: the detector was loaded after the output folder was opened, so `reproduce --restart --detector
    typo.safetensors` renamed every earlier result file `.discarded` and then stopped on the missing detector; and
    `--dry-run` ("check the config") passed it. Now it is loaded before the folder is touched, the dry run included
    (not with --no-detect, which does not use it)."""
    from puface.cli import main

    cfg_path, out, _ = colour_experiment
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = sorted(p.name for p in copy.iterdir())
    missing = str(tmp_path / "typo.safetensors")
    for extra in (["--restart"], ["--dry-run"]):
        assert main(["reproduce", str(cfg_path), "--out", str(copy), "--detector", missing, "--no-progress",
                     *extra]) == 2
        assert "typo.safetensors: detector file not found" in capsys.readouterr().err
        assert sorted(p.name for p in copy.iterdir()) == before
    assert main(["reproduce", str(cfg_path), "--out", str(copy), "--detector", missing, "--no-progress",
                 "--dry-run", "--no-detect"]) == 0


def test_the_paper_configs_list_line_says_it_is_sized_for_a_gpu(capsys):
    """`reproduce --list` showed `paper` as "Paper-scale grid: 50 protected users x 3 seeds, ..." with no word that
    it is sized for one GPU (its file's comment says so, which --list does not show), so a newcomer on a laptop
    could start it. Its --list line now says so."""
    from puface.cli import main

    assert main(["reproduce", "--list"]) == 0
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.startswith("paper ")]
    assert "GPU" in line


def test_the_paper_configs_list_line_states_its_size_and_no_unmeasured_duration(capsys):
    """Review of BP: paper's --list line said "sized for one GPU (hours)", a duration nothing measured; by the measured
    CPU rate of an end-to-end fit (RESULTS 15.10: about 77 s for 200 steps of 16 images) its 15,060 fits of 2,000
    steps of 64 images are some 500 CPU-days. The line now gives the grid's size, counted here from the config as
    `Protocol.plan` counts it (users x grid cells; an e2e fit per cloaked run, one per defense and victim for the
    clean reference), and no duration."""
    from puface.cli import main

    cfg = load_config("paper")
    cells, users = cfg.grid(), int(cfg.users["count"])
    clean = {a.label for a in cfg.attacks if a.is_clean}
    e2e = [c for c in cells if c["trainer"] == "e2e"]
    fits = sum(1 if c["attack"] in clean else users for c in e2e)
    steps = {t.params.get("steps") for t in cfg.trainers if t.name == "e2e"}
    assert main(["reproduce", "--list"]) == 0
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.startswith("paper ")]
    assert f"{len(cells) * users:,} runs ({fits:,} end-to-end fine-tunes of {steps.pop():,} steps)" in line
    assert not re.search(r"hour|minute|day", line)


def test_a_missing_weights_file_names_the_command_the_configs_comments_give(tmp_path, monkeypatch, capsys):
    """`reproduce lfw-three-models --dry-run` without runs/purifier-three-models/ said only "checkpoint not found; give
    a checkpoint file ... or a shipped purifier's name", though the config's own comments hold the command that
    makes it; a saved OUT/config.toml (its header names the config it came from) said the same. Now the one line
    ends with that command, found in the comments of the config's files (its extends chain, or those a saved
    config's header names); a missing file no comment makes keeps the plain message."""
    from puface.cli import main
    from puface.experiments import config_text

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    root = write_colour_faces(tmp_path / "data")
    make = "puface train-purifier --config default --data faces/ --out runs/mine"
    base = tmp_path / "base.toml"
    first, rest = make.split(" --data ")
    base.write_text(f"# Train it first:\n#   {first} \\\n#       --data {rest}\n"
                    + EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace(
                        'name = "bitdepth"\nbits = 4', 'name = "puface"\nweights = "runs/mine/best.safetensors"'))
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\nname = "child"\n')
    for cfg, where in ((base, base), (child, base)):
        assert main(["reproduce", str(cfg), "--dry-run", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "runs/mine/best.safetensors: purifier checkpoint not found" in err
        assert err.endswith(f"; it is made by `{make}` (the comments of {where})"), err
    # a saved config: written with an override (so resolved, headed by the files it came from), read back
    saved = tmp_path / "saved.toml"
    saved.write_text(config_text(load_config(child).with_overrides({"users.count": 1})))
    assert saved.read_text().startswith(f"# {child} -> {base} with command-line overrides")
    assert main(["reproduce", str(saved), "--dry-run", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"; it is made by `{make}` (the comments of {base})")
    # no comment makes it: the message as before
    base.write_text(base.read_text().replace("runs/mine/best", "runs/other/best"))
    assert main(["reproduce", str(base), "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs/other/best.safetensors: purifier checkpoint not found" in err and "it is made by" not in err


def test_a_missing_data_folder_names_the_command_the_configs_comments_give(tmp_path, monkeypatch, capsys):
    """`reproduce docs/studies/2026-12-05-sharp-photos/lfw-sharp.toml --data lfw-chips150-sharp/` without that folder
    said only "data folder not found ... pass --data DIR", though the config's comments hold the script that makes it
    (as a missing weights file's error gives its command). Now the one line ends with that command, from the config's
    own comments or an extended config's; a command that only reads the folder (`--data DIR`) is not taken for it;
    [data] photos alike; a folder no comment makes keeps the plain message."""
    from puface.cli import main

    register_standins()
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PUFACE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    root = write_colour_faces(tmp_path / "data")
    make = "python tools/make_set.py data/ derived-set/"
    base = tmp_path / "base.toml"
    base.write_text("# Run it on the derived set:\n#   puface reproduce base.toml --data derived-set/ --out runs/x\n"
                    f"# made first by:\n#   {make}\n" + EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\nname = "child"\n')
    for cfg in (base, child):
        assert main(["reproduce", str(cfg), "--data", "derived-set/", "--dry-run", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"puface: error: {cfg} [data] root: derived-set")
        assert "data folder not found" in err and err.endswith(f"; it is made by `{make}` (the comments of {base})")
    # published photos ([data] photos) missing: the same
    photos = tmp_path / "photos.toml"
    photos.write_text("# Cut the photos first:\n#   python tools/photos.py --out photo-set\n"
                      'extends = "base.toml"\nname = "photos"\n[data]\nphotos = "photo-set"\n')
    assert main(["reproduce", str(photos), "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "[data] photos: photo-set: data folder not found" in err
    assert err.endswith("; it is made by `python tools/photos.py --out photo-set` (the comments of "
                        f"{photos})"), err
    # no comment makes it: the message as before
    assert main(["reproduce", str(base), "--data", "elsewhere", "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "elsewhere: data folder not found" in err and "it is made by" not in err


@pytest.mark.parametrize("named, expected", [
    ("runs/a/best.safetensors", "puface train-purifier --config x --out runs/a"),      # the file's folder
    ("runs/grid/k1/best.safetensors", "python tools/t.py --only ref,k1 --out runs/grid"),  # a folder above + its name
    ("runs/grid/k6/best.safetensors", "python tools/t.py"),                             # named in a trailing comment
    ("runs/grid/zz/best.safetensors", None),            # under runs/grid, but no command names zz or runs/grid/<...>
    ("faceres.pt", "python tools/export.py faceres.json $PUFACE_MODELS/faceres.pt"),   # a file in $PUFACE_MODELS
    ("runs/published/v5.safetensors", "bash tools/published.sh runs/published"),
    ("runs/aa/best.safetensors", None),                                                 # runs/a is not runs/aa
])
def test_command_making_finds_the_command_that_writes_a_file(named, expected, tmp_path):
    from puface.utils.tomlconfig import command_making

    f = tmp_path / "c.toml"
    f.write_text("# A grid. Make its files first:\n"
                 "#   puface train-purifier --config x --out runs/a\n"
                 "#   python tools/t.py --only ref,k1 --out runs/grid\n"
                 "#   python tools/t.py                     # runs/grid/k6/best.safetensors\n"
                 "#   python tools/export.py faceres.json \\\n#       $PUFACE_MODELS/faceres.pt\n"
                 "# Needs runs/published (bash tools/published.sh runs/published) for v5:\n"
                 "#   bash tools/published.sh runs/published\n"
                 "name = \"c\"   # python tools/not-a-comment-line.py runs/aa\n")
    found = command_making(named, [f])
    assert (found and found[0]) == expected and (found is None or found[1] == f)


@pytest.mark.parametrize("config, named, expected", [
    # the study reads lfw-chips150/ and makes lfw-chips150-sharp/: only the second is its output
    ("docs/studies/2026-12-05-sharp-photos/lfw-sharp.toml", "lfw-chips150-sharp/",
     "python docs/studies/2026-12-05-sharp-photos/make_sharp_set.py lfw-chips150/ lfw-chips150-sharp/"),
    ("docs/studies/2026-12-05-sharp-photos/lfw-sharp.toml", "lfw-chips150", None),
    # `puface reproduce lfw-arcface112 ... --out runs/lfw-arcface112`: the config's name and another folder
    ("lfw-arcface112", "lfw-arcface112", None),
    # "runs/ablation-v4/<name>/best.safetensors" in a trailing comment: <name> alone is not every name
    ("lfw-ablations", "lfw-chips150", None),
    ("lfw-ablations", "runs/ablation-v4/k1/best.safetensors", "python tools/train_ablations.py"),
    # "# puface demo: the whole pipeline on ... (dlib's "johns", ...)" is prose, not a command
    ("demo", "johns", None),
    ("lfw-photos", "lfw-photos", "puface data fetch lfw        (lfw-photos/ and lfw-chips150/ in $PUFACE_DATA or "
     "$PUFACE_HOME/data)"),
])
def test_command_making_takes_no_command_that_reads_or_only_resembles_the_folder(config, named, expected):
    """A missing data folder's error names the command the config's comments give for making it (audit BX), but
    `command_making` took a command that reads the folder (`make_sharp_set.py lfw-chips150/ OUT` for lfw-chips150),
    one writing another folder of the same last name (`--out runs/lfw-arcface112` for lfw-arcface112), one whose
    trailing comment has a bare `<name>` (train_ablations.py for lfw-chips150), and the prose line "puface demo: the
    whole pipeline ..." as the makers. They now give none (the plain message); real makers are kept."""
    from puface.experiments.config import config_files
    from puface.utils.tomlconfig import command_making

    path = Path(__file__).resolve().parent.parent / config if config.endswith(".toml") else packaged_config(config)
    found = command_making(named, config_files(path))
    assert (found and found[0]) == expected


def test_reproduce_set_none_clears_an_optional_setting_as_if_absent(tmp_path):
    """`reproduce --set data.max_per_identity=none` was refused ("must be an integer >= 1, got 'none'"), where
    train-purifier's --set clears an optional setting that way. Now `none` clears a setting whose default is None (the
    config then runs as if the key were absent, its saved config.toml and fingerprint alike) and stays text elsewhere,
    for the config's own check to refuse."""
    from puface.experiments import config_text

    cfg = parse(GRID_TOML.replace("[data]", "[data]\nmax_per_identity = 3"), tmp_path, "grid.toml")
    assert cfg.data["max_per_identity"] == 3
    cleared = cfg.with_overrides({"data.max_per_identity": "none"})
    assert cleared.data["max_per_identity"] is None
    absent = parse(GRID_TOML, tmp_path, "plain.toml")
    assert absent.data.get("max_per_identity") is None
    (tmp_path / "out").mkdir()
    saved = parse(config_text(cleared), tmp_path / "out", "config.toml")
    assert saved.data["max_per_identity"] is None and saved.fingerprint() == cleared.fingerprint()
    users = cfg.with_overrides({"users.count": "none"})  # a section the fingerprint reads as written
    assert users.users == parse(GRID_TOML.replace("count = 2\n", ""), tmp_path, "nocount.toml").users != cfg.users
    (tmp_path / "out2").mkdir()
    assert parse(config_text(users), tmp_path / "out2", "config.toml").fingerprint() == users.fingerprint()
    with pytest.raises(ConfigError, match="min_train"):
        cfg.with_overrides({"users.min_train": "none"})
