"""`puface report html RUN`: a run folder's report.html rebuilt from the files the folder holds (nothing run again):
from results.json as the run wrote it, from a folder trimmed to its CSVs and config (docs/results/), and one clear
error for a folder without results."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from evaluation_helpers import STANDIN_EMBEDDER
from puface.cli import main

TABLE = re.compile(r'<table class="results">.*?</table>', re.S)
FIGURE = re.compile(r"<figure>.*?</figure>", re.S)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_deleted_report_is_rebuilt_as_the_run_wrote_it_and_nothing_else_is_touched(colour_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(colour_run, folder)
    wrote = (folder / "report.html").read_bytes()
    (folder / "report.html").unlink()
    before = _files(folder)
    assert main(["report", "html", str(folder)]) == 0
    assert f"written: {folder / 'report.html'}" in capsys.readouterr().out
    after = _files(folder)
    assert after.pop("report.html") == wrote  # the same page, byte for byte: charts, ROC curves, image grids
    assert after == before  # no other file written or changed (no temporary file left)

    # --out: the page elsewhere, the run folder untouched
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", "html", str(folder), "--out", str(out)]) == 0
    assert out.read_bytes() == wrote and _files(folder) == {**before, "report.html": wrote}

    # --out onto one of the run's own files: refused, the file kept
    assert main(["report", "html", str(folder), "--out", str(folder / "table.md")]) == 2
    assert "is one of the run's own files" in capsys.readouterr().err
    assert _files(folder) == {**before, "report.html": wrote}


def test_a_folder_trimmed_to_its_csvs_and_config_renders_the_same_tables(colour_run, tmp_path):
    """docs/results/ folders keep config.toml, summary.csv, table.md (some results.csv, detection.csv): no
    results.json, no config.resolved.json, no examples."""
    wrote = (colour_run / "report.html").read_text()
    for keep in (("config.toml", "summary.csv", "table.md"),
                 ("config.toml", "summary.csv", "results.csv", "detection.csv", "table.md")):
        folder = tmp_path / str(len(keep))
        folder.mkdir()
        for name in keep:
            shutil.copy(colour_run / name, folder / name)
        assert main(["report", "html", str(folder)]) == 0
        page = (folder / "report.html").read_text()
        assert sorted(p.name for p in folder.iterdir()) == sorted((*keep, "report.html"))
        assert TABLE.findall(page) == TABLE.findall(wrote) and len(TABLE.findall(page)) >= 3
        charts = re.findall(r'<img class="chart" src="[^"]*" alt="bar chart: ([^"]*)"', page)
        assert charts == re.findall(r'<img class="chart" src="[^"]*" alt="bar chart: ([^"]*)"', wrote)
        assert charts == [f"ASR and normal accuracy (%) per defense: victim {STANDIN_EMBEDDER}, trainer {t}"
                          for t in ("nn", "linear")]
        # what it lacks is said, not printed as zeros; the ROC curves live only in results.json
        assert "results.json is not in this folder" in page and "wall time running the grid" not in page
        assert "Cloak detection: ROC curves" in wrote and "Cloak detection: ROC curves" not in page
        assert "<figure>" not in page
        if "results.csv" in keep:  # the protected users and runs, as the run wrote them
            users = re.search(r"protected users: seed 0: [^<]*", wrote)
            assert users is not None and users.group(0) in page
            assert re.search(r"runs: (\d+)", page).group(1) == re.search(r"runs: (\d+)", wrote).group(1)
            assert "no run environment, timings or ROC curves (the detection table gives AUC" in page


def test_a_trimmed_folder_with_its_examples_gets_the_same_image_grids(colour_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.toml", "summary.csv", "table.md"):
        shutil.copy(colour_run / name, folder / name)
    shutil.copytree(colour_run / "examples", folder / "examples")
    assert main(["report", "html", str(folder)]) == 0
    page, wrote = (folder / "report.html").read_text(), (colour_run / "report.html").read_text()
    assert FIGURE.findall(wrote) and sorted(FIGURE.findall(page)) == sorted(FIGURE.findall(wrote))
    assert re.findall(r"<h3>[^<]*seed[^<]*</h3>", page) == re.findall(r"<h3>[^<]*seed[^<]*</h3>", wrote)


def test_a_folder_without_results_is_one_clear_error(colour_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "html", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"puface: error: {empty / 'summary.csv'}: not found (expected a `puface reproduce` output folder)"

    unfinished = tmp_path / "unfinished"  # a run stopped before its tables: told to resume it
    unfinished.mkdir()
    shutil.copy(colour_run / "runs.jsonl", unfinished / "runs.jsonl")
    assert main(["report", "html", str(unfinished)]) == 2
    assert "has not finished" in capsys.readouterr().err

    for missing in ("config.toml", "table.md"):  # the CSVs without what the page needs beside them: named
        folder = tmp_path / f"no-{missing}"
        folder.mkdir()
        for name in {"config.toml", "summary.csv", "table.md"} - {missing}:
            shutil.copy(colour_run / name, folder / name)
        assert main(["report", "html", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"puface: error: {folder / missing}: not found") and "\n" not in err
        assert not (folder / "report.html").exists()

    broken = tmp_path / "broken"
    shutil.copytree(colour_run, broken)
    (broken / "report.html").unlink()
    (broken / "results.json").write_text('{"name": "cut')
    assert main(["report", "html", str(broken)]) == 2
    assert f"{broken / 'results.json'}: cannot be read as JSON" in capsys.readouterr().err
    assert not (broken / "report.html").exists()


def test_a_roc_chart_from_results_json_takes_its_nulls(monkeypatch):
    """results.json writes NaN as null (strict JSON): an attack without an AUC or operating point is drawn without
    them, not a TypeError when the report is rebuilt from the file."""
    from puface.evaluation.report import roc_chart

    det = {"rows": [{"attack": "a", "auc": None, "fpr": None, "tpr": None}], "roc": {"a": {"fpr": [0, 1],
                                                                                        "tpr": [0, 1]}}}
    uri = roc_chart(det)
    assert uri is not None and uri.startswith("data:image/png;base64,")


def test_every_committed_result_folder_carries_the_config_its_report_is_built_from(tmp_path, capsys):
    """The five docs/results/v6-candidates/ens-v6*-seed* folders kept summary.csv and table.md but no config.toml, so
    `puface report html` on them stopped at "config.toml: not found". Each now carries the config that made it
    (recovered from git: the two ens-v6-*.toml of commit e405d9a, --seed N). Every committed result folder: a config
    whose name and seeds are its table's and whose defense labels are its summary's; a v6 page builds from it."""
    import csv

    from puface.experiments.config import load_config

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    folders = sorted({p.parent for name in ("summary.csv", "results.csv") for p in results.rglob(name)})
    assert len(folders) >= 70 and sum(f.parent.name == "v6-candidates" for f in folders) == 5
    for folder in folders:
        assert (folder / "config.toml").is_file(), folder
        cfg = load_config(folder / "config.toml").resolved()
        table = (folder / "table.md").read_text(encoding="utf-8")
        heading = re.search(r"^## (.+?): .*\(seeds ([0-9, ]+)\)", table, re.M | re.S)
        assert heading is not None and heading.group(1) == cfg["name"], folder
        assert [int(s) for s in heading.group(2).split(",")] == cfg["seeds"], folder
        summary = folder / ("summary.csv" if (folder / "summary.csv").is_file() else "results.csv")
        with summary.open(encoding="utf-8", newline="") as f:
            defenses = {row["defense"] for row in csv.DictReader(f)}
        assert defenses == {d["label"] for d in cfg["defenses"]}, folder
    for seed in ("ens-v6c-seed1", "ens-v6t-seed2"):
        out = tmp_path / f"{seed}.html"
        assert main(["report", "html", str(results / "v6-candidates" / seed), "--out", str(out)]) == 0, \
            capsys.readouterr().err
        page = out.read_text(encoding="utf-8")
        assert "lfw-lowkey-ensemble-v6-" in page and "v6-ref-s1" in page
        assert "results.json is not in this folder" in page


def test_a_results_json_naming_a_picture_outside_the_run_folder_does_not_put_it_in_the_report(colour_run, tmp_path):
    """The report's image grids read each example image at the path results.json gives, as it was: a run folder from
    elsewhere whose results.json named "/home/you/photo.png" or "../photo.png" put that picture, read from this
    machine, into the report.html rebuilt here. Such a path is now named as not inside the run folder, left out."""
    import json

    folder = tmp_path / "run"
    shutil.copytree(colour_run, folder)
    results = json.loads((folder / "results.json").read_text())
    key = next(k for k, v in results["examples"].items() if "cloaked" in v)
    natural = results["examples"][key]["natural"]
    shutil.copy(folder / natural[0], tmp_path / "private.png")
    natural[0] = str(tmp_path / "private.png")
    natural[1:2] = ["../private.png"] if len(natural) > 1 else []
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "report.html").unlink()
    assert main(["report", "html", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert f"{tmp_path / 'private.png'} (not a path inside the run folder)" in page
    if len(natural) > 1:
        assert "../private.png (not a path inside the run folder)" in page
