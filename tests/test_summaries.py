"""`puface report cells`: per-cell tables of a finished experiment (puface.evaluation.summaries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from puface.evaluation import summaries
from puface.utils.errors import ConfigError, PufaceError

HEADER = "attack,victim,trainer,defense,setting,asr_mean,asr_std,normal_acc_mean,normal_acc_std,n,users,seeds,wall_s\n"


def _summary(tmp_path: Path, rows: list[tuple]) -> Path:
    (tmp_path / "summary.csv").write_text(HEADER + "".join(
        f"{a},{v},{t},{d},{s},{asr},0,{acc},0,1,10,1,1.0\n" for a, v, t, d, s, asr, acc in rows))
    return tmp_path


def test_defenses_table_one_attack_per_cell(tmp_path):
    folder = _summary(tmp_path, [
        ("lowkey-ensemble", "sface", "nn", "none", "white-box", 1.0, 0.99),
        ("lowkey-ensemble", "dlib-resnet29", "nn", "none", "white-box", 1.0, 0.99),
        ("lowkey-ensemble", "sface", "nn", "puface", "white-box", 0.25, 0.98),
        ("lowkey-ensemble", "dlib-resnet29", "nn", "puface", "white-box", 0.05, 0.96),
        ("fawkes-high", "dlib-resnet29", "nn", "puface", "white-box", 0.5, 0.5),   # another attack: left out
        ("lowkey-ensemble", "sface", "linear", "puface", "oblivious", 0.9, 0.5),   # not white-box: left out
    ])
    lines = summaries.defenses_table(folder, "lowkey-ensemble").splitlines()
    assert lines[0].startswith("| defense | dlib-resnet29 nn | sface nn | mean white-box ASR |")
    assert lines[2] == "| none | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 99.0 |"
    assert lines[3] == "| puface | 5.0 | 25.0 | 15.0 | 5.0 | 25.0 | 97.0 |"
    out = summaries.defenses_table(folder).splitlines()  # all attacks pooled, no per-cell columns
    assert out[3] == "| puface | 26.7 | 5.0 | 50.0 | 81.3 |"
    with pytest.raises(PufaceError, match="no white-box cells of attack 'lowkey'"):
        summaries.defenses_table(folder, "lowkey")


def test_draws_table_keeps_cells_found_in_every_draw(tmp_path):
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed1").mkdir()
    seed0 = _summary(tmp_path / "seed0", [
        ("fawkes-mid-project", "sface", "nn", "none", "white-box", 0.9, 0.99),
        ("fawkes-mid-project", "sface", "nn", "puface", "white-box", 0.05, 0.98),
        ("fawkes-mid-sq-project", "sface", "nn", "none", "white-box", 1.0, 0.99),   # not in seed 1: left out
        ("fawkes-mid-sq-project", "sface", "nn", "puface", "white-box", 0.0, 0.99),
        ("fawkes-mid", "sface", "nn", "none", "white-box", 0.5, 0.99),              # no -project suffix: left out
        ("fawkes-mid", "sface", "nn", "puface", "white-box", 0.0, 0.99),
    ])
    seed1 = _summary(tmp_path / "seed1", [
        ("fawkes-mid-project", "sface", "nn", "none", "white-box", 1.0, 0.995),
        ("fawkes-mid-project", "sface", "nn", "puface", "white-box", 0.0, 0.99),
        ("fawkes-mid", "sface", "nn", "none", "white-box", 0.5, 0.99),
        ("fawkes-mid", "sface", "nn", "puface", "white-box", 0.0, 0.99),
    ])
    lines = summaries.draws_table([seed0, seed1], "-project").splitlines()
    assert lines[0] == "| attack | victim | trainer | seed0 | seed1 | mean | PuFace, range over draws |"
    assert lines[2:] == ["| fawkes-mid-project | sface | nn | **90.0** | 100.0 | 95.0 | 0.0-5.0 |", "",
                         "normal accuracy 98.0-99.5%, no defense vs PuFace at most 1.00 points apart"]
    with pytest.raises(PufaceError, match="no white-box cell"):
        summaries.draws_table([seed0, seed1], "-nothing")




REPO = Path(__file__).resolve().parents[1]


def test_report_headline_pools_folders_trimmed_to_their_tables(tmp_path, capsys):
    import shutil

    from puface.cli import main

    # the committed folders hold summary.csv and config.toml only: pooled from those
    assert main(["report", "headline", str(REPO / "docs/results/lfw"), str(REPO / "docs/results/lfw-seed1")]) == 0
    assert "| **mean (white-box)** |" in capsys.readouterr().out
    # pooling summaries gives what pooling the runs behind them gives (lfw-ladder also keeps its results.csv)
    full = [REPO / "docs/results/lfw-ladder", REPO / "docs/results/lfw-ladder-seed1"]
    trimmed = []
    for f in full:
        (tmp_path / f.name).mkdir()
        for name in ("summary.csv", "config.toml"):
            shutil.copy(f / name, tmp_path / f.name / name)
        trimmed.append(tmp_path / f.name)
    key = lambda r: tuple(r[k] for k in summaries.GROUP_KEYS)  # noqa: E731
    runs = {key(r): r for r in summaries.load_pooled(full)}
    pooled = {key(r): r for r in summaries.load_pooled(trimmed)}
    assert set(pooled) == set(runs)
    for k, r in pooled.items():
        assert (r["n"], r["seeds"]) == (runs[k]["n"], runs[k]["seeds"])
        for m in ("asr_mean", "asr_std", "normal_acc_mean", "normal_acc_std"):
            assert r[m] == pytest.approx(runs[k][m], abs=1e-12)
    with pytest.raises(PufaceError, match="seed 0 is also in another folder"):
        summaries.load_pooled([trimmed[0], trimmed[0]])
    (trimmed[1] / "config.toml").unlink()
    with pytest.raises(PufaceError, match="config.toml: not found"):
        summaries.load_pooled(trimmed)


def test_report_headline_needs_the_purifier_label_and_names_the_labels_there(tmp_path, capsys):
    from puface.cli import main

    folder = _summary(tmp_path, [("fawkes-high", "dlib-resnet29", "nn", "none", "white-box", 1.0, 0.99),
                                 ("fawkes-high", "dlib-resnet29", "nn", "jpeg-q50", "white-box", 0.5, 0.9)])
    assert main(["report", "headline", str(folder)]) == 2
    assert main(["report", "headline", str(folder), "--puface", "nosuch"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(
        f"{folder}: no defense labelled" in e and "(defenses: jpeg-q50, none)" in e for e in err
    )
    assert "--puface LABEL" in err[0] and "'nosuch'" in err[1]
    # PuFace under its own label, no baseline and no undefended run: dashes, not None or nan
    _summary(tmp_path, [("fawkes-high", "dlib-resnet29", "nn", "mine", "white-box", 0.05, 0.98)])
    assert main(["report", "headline", str(folder), "--puface", "mine"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "nan" not in out
    assert "| **mean (white-box)** | | | | - | **5.0** | - | - | 98.0 | - | |" in out
    assert "no baseline defense in these results; highest white-box ASR with mine: 5.0%" in out


def test_report_headline_names_the_columns_of_another_purifier_label_by_that_label(tmp_path, capsys):
    """`--puface puface-step1.5` shows that defense: its columns must say so, not "PuFace" (the grids' step-1
    purifier, which is also in the folder); the default label keeps the README's "PuFace"."""
    from puface.cli import main

    folder = _summary(tmp_path, [("fawkes-high", "dlib-resnet29", "nn", "none", "white-box", 1.0, 0.99),
                                 ("fawkes-high", "dlib-resnet29", "nn", "puface", "white-box", 0.1, 0.98),
                                 ("fawkes-high", "dlib-resnet29", "nn", "puface-step1.5", "white-box", 0.05, 0.97)])
    assert main(["report", "headline", str(folder), "--puface", "puface-step1.5"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert "| ASR puface-step1.5 |" in head and "| normal acc. puface-step1.5 |" in head and "PuFace" not in head
    assert "| 100.0 | **5.0** |" in out and "highest white-box ASR with puface-step1.5: 5.0%" in out
    assert main(["report", "headline", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| ASR PuFace |" in out.splitlines()[0] and "| 100.0 | **10.0** |" in out


def test_report_cells_cli_writes_the_table(tmp_path, capsys):
    from puface.cli import main

    folder = _summary(tmp_path, [("fawkes-high", "dlib-resnet29", "nn", "none", "white-box", 1.0, 0.99),
                                 ("fawkes-high", "dlib-resnet29", "nn", "puface", "white-box", 0.05, 0.98)])
    assert main(["report", "cells", "defenses", str(folder), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().splitlines()[2] == "| none | 100.0 | 100.0 | 100.0 | 99.0 |"
    assert main(["report", "cells", "compare", str(folder)]) == 2
    assert "needs --other" in capsys.readouterr().err


def test_repeats_table_keeps_each_trainer_as_its_own_cell(tmp_path):
    """Two trainers of one attack and victim are two cells (the 1-NN one must not be overwritten by the linear one)."""
    folder = _summary(tmp_path, [
        ("fawkes", "dlib-resnet29", "nn", "ref", "white-box", 1.0, 0.99),
        ("fawkes", "dlib-resnet29", "linear", "ref", "white-box", 0.5, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "ref-s1", "white-box", 0.8, 0.99),
        ("fawkes", "dlib-resnet29", "linear", "ref-s1", "white-box", 0.3, 0.99),
    ])
    table = summaries.repeats_table(folder)
    assert "fawkes / dlib-resnet29 / linear" in table and "fawkes / dlib-resnet29 / nn" in table
    row = next(line for line in table.splitlines() if line.startswith("| ref |"))
    assert "| ref | 2 | 40.0 [30.0, 50.0] | 90.0 [80.0, 100.0] | 65.0 [55.0, 75.0] |" in row


def test_table_md_counts_protected_users_per_seed_not_over_all_seeds():
    """Two draws of 2 users that share one name: 4 runs per cell = 2 users x 2 seeds, not 3 x 2."""
    from types import SimpleNamespace

    from puface.evaluation.tables import render_tables, summarise_rows

    rows = [{"seed": seed, "user": user, "attack": "clean", "victim": "v", "trainer": "nn", "defense": "none",
             "setting": "clean", "asr": 0.0, "normal_acc": 1.0}
            for seed, users in ((0, ("Ann", "Bob")), (1, ("Ann", "Cid"))) for user in users]
    summary = summarise_rows(rows)
    assert summary[0]["n"] == 4 and summary[0]["users"] == 3
    cfg = SimpleNamespace(
        attacks=[SimpleNamespace(label="clean")],
        victims=["v"],
        trainers=[SimpleNamespace(label="nn")],
        defenses=[SimpleNamespace(label="none")],
        name="two-draws",
        description="",
        seeds=[0, 1],
    )
    assert "over 2 protected user(s) x 2 seed(s)" in render_tables(cfg, summary, [])


def test_report_cells_users_names_an_attack_or_defense_without_runs(tmp_path, capsys):
    from puface.cli import main

    (tmp_path / "results.csv").write_text("seed,user,attack,victim,trainer,defense,setting,asr,normal_acc\n"
                                          "0,Ann,lowkey,v,nn,puface,white-box,0.0,1.0\n")
    assert main(["report", "cells", "users", str(tmp_path), "--attack", "lowkey", "--users", "Ann"]) == 0
    assert "| named (1) | 0.0 | 0.0 |" in capsys.readouterr().out
    for extra in (["--attack", "fawkes"], ["--attack", "lowkey", "--defense", "jpeg"]):
        assert main(["report", "cells", "users", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert "no runs of attack" in err and "Traceback" not in err


def test_report_cells_users_counts_users_not_runs(tmp_path, capsys):
    """A folder of three seeds where Ann is protected in every draw: "named (3)" counted her three runs as three
    users; the label says users, and the runs when there are more of them."""
    from puface.cli import main

    (tmp_path / "results.csv").write_text(
        "seed,user,attack,victim,trainer,defense,setting,asr,normal_acc\n"
        + "".join(f"{seed},{user},lowkey,v,nn,puface,white-box,{asr},1.0\n"
                  for seed, user, asr in ((0, "Ann", 0.0), (0, "Bob", 0.5), (1, "Ann", 0.1), (1, "Cid", 0.2),
                                          (2, "Ann", 0.3))))
    assert main(["report", "cells", "users", str(tmp_path), "--attack", "lowkey", "--users", "Ann"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| named (1 user, 3 runs) | 13.3 | 13.3 |", "| others (2) | 35.0 | 35.0 |",
                         "| all (3 users, 5 runs) | 22.0 | 22.0 |"]


def test_report_on_an_unfinished_run_says_it_has_not_finished(tmp_path, capsys):
    from puface.cli import main

    (tmp_path / "runs.jsonl").write_text('{"run_id": "0|clean|v|nn|none|Ann"}\n')  # interrupted: no tables yet
    assert main(["report", "headline", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has not finished" in err and "resume" in err
    (tmp_path / "runs.jsonl").unlink()
    assert main(["report", "headline", str(tmp_path)]) == 2
    assert "expected a `puface reproduce` output folder" in capsys.readouterr().err


def test_repeats_table_keeps_baselines_whose_labels_end_in_s_and_a_number_apart(tmp_path):
    """blur-s1 and blur-s2 (sigma 1 and 2) are two baselines, not two training seeds of one recipe: with the run's
    config.resolved.json only purifier files (a `weights` option) are grouped as repeats."""
    import json

    folder = _summary(tmp_path, [
        ("fawkes", "dlib-resnet29", "nn", "blur-s1", "white-box", 1.0, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "blur-s2", "white-box", 0.6, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "ref", "white-box", 0.1, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "ref-s1", "white-box", 0.3, 0.99),
    ])
    (folder / "config.resolved.json").write_text(
        json.dumps(
            {
                "defenses": [
                    {"label": "blur-s1", "spec": {"name": "blur", "sigma": 1.0}},
                    {"label": "blur-s2", "spec": {"name": "blur", "sigma": 2.0}},
                    {"label": "ref", "spec": {"name": "puface", "weights": "a.safetensors"}},
                    {"label": "ref-s1", "spec": "puface:weights=b.safetensors"},
                ]
            }
        )
    )
    rows = {line.split(" | ")[0][2:]: line for line in summaries.repeats_table(folder).splitlines()[2:]}
    assert set(rows) == {"blur-s1", "blur-s2", "ref"}
    assert rows["blur-s2"].startswith("| blur-s2 | 1 | 60.0 |") and rows["ref"].startswith(
        "| ref | 2 | 20.0 [10.0, 30.0] |"
    )


def test_table_md_of_a_grid_with_one_baseline_defense_shows_its_numbers():
    """A grid run with one defense that is neither "none" nor the purifier (`evaluate --defense jpeg:quality=75`):
    the paper table has no column for it, so its ASR must come in the per-defense table (it had no number)."""
    from types import SimpleNamespace

    from puface.evaluation.tables import render_tables, summarise_rows

    rows = [{"seed": 0, "user": user, "attack": "lowkey", "victim": "v", "trainer": "nn", "defense": "jpeg-q75",
             "setting": "white-box", "asr": asr, "normal_acc": 0.9} for user, asr in (("Ann", 0.25), ("Bob", 0.75))]
    cfg = SimpleNamespace(
        attacks=[SimpleNamespace(label="lowkey")],
        victims=["v"],
        trainers=[SimpleNamespace(label="nn")],
        defenses=[SimpleNamespace(label="jpeg-q75")],
        name="one-defense",
        description="",
        seeds=[0],
    )
    md = render_tables(cfg, summarise_rows(rows), [])
    assert "| jpeg-q75 | 50.0 ± 35.4 | 90.0 |" in md


def test_table_md_without_none_or_puface_has_no_empty_paper_table():
    """The paper table has columns for "none" and the purifier only: a grid with neither printed it as a bare header
    `| attack | victim | setting | trainer |` with no row (an empty table in report.html too)."""
    from types import SimpleNamespace

    from puface.evaluation.report import markdown_to_html
    from puface.evaluation.tables import render_tables, summarise_rows

    rows = [{"seed": 0, "user": "Ann", "attack": "lowkey", "victim": "v", "trainer": "nn", "defense": d,
             "setting": "white-box", "asr": 0.5, "normal_acc": 0.9} for d in ("jpeg-q75", "blur-s1")]
    cfg = SimpleNamespace(
        attacks=[SimpleNamespace(label="lowkey")], victims=["v"], trainers=[SimpleNamespace(label="nn")],
        defenses=[SimpleNamespace(label="jpeg-q75"), SimpleNamespace(label="blur-s1")],
        name="baselines", description="", seeds=[0],
    )
    md = render_tables(cfg, summarise_rows(rows), [])
    assert "| attack | victim | setting | trainer |" not in md
    assert 'No "none" or PuFace defense in this grid' in md and "| blur-s1 | 50.0 | 90.0 |" in md
    page = markdown_to_html(md)
    assert page.count('<table class="results">') == 1 and "<th>defense</th>" in page


def test_draws_run_with_no_detect_or_another_report_setting_pool(tmp_path):
    """`reproduce CONFIG --seed 1 --no-detect` records [detection] enabled = false in its config: detection (and the
    report's settings, batch sizes) change no ASR or accuracy, so the draw pools with the others; a real grid change
    is still refused."""
    base = {"name": "g", "seeds": [0], "protocol": "training", "data": {"root": "lfw-chips150"},
            "attacks": [{"label": "lowkey"}], "defenses": [{"label": "none"}],
            "run": {"device": None, "batch_size": 64, "cache": True, "output": None},
            "report": {"users": 3}, "detection": {"enabled": True, "detector": "default"}, "source": "/a/g.toml"}
    other = {**base, "seeds": [1], "run": {**base["run"], "batch_size": 16}, "report": {"users": 0},
             "detection": {"enabled": False, "detector": "default"}, "source": "/b/g.toml"}
    folders = []
    for seed, cfg in ((0, base), (1, other)):
        f = tmp_path / f"s{seed}"
        f.mkdir()
        (f / "config.resolved.json").write_text(json.dumps(cfg))
        (f / "results.csv").write_text("seed,user,attack,victim,trainer,defense,setting,asr,normal_acc\n"
                                       f"{seed},Ann,lowkey,v,nn,none,white-box,{0.5 * seed},1.0\n")
        folders.append(f)
    (row,) = summaries.load_pooled(folders)
    assert row["n"] == 2 and row["asr_mean"] == 0.25
    (folders[1] / "config.resolved.json").write_text(json.dumps({**other, "data": {"root": "other"}}))
    with pytest.raises(PufaceError, match="not the same grid"):
        summaries.load_pooled(folders)


def test_report_on_a_folder_whose_csv_is_not_a_runs_is_one_clear_error(tmp_path, capsys):
    """A folder that is not a run folder but holds a summary.csv / results.csv of another program (a benchmark's, a
    spreadsheet's): one error line naming the file and the missing columns, not a KeyError traceback."""
    from puface.cli import main

    (tmp_path / "summary.csv").write_text("image,score\na.png,0.5\n")
    (tmp_path / "results.csv").write_text("image,score\na.png,0.5\n")
    for args in (["headline", str(tmp_path)], ["cells", "defenses", str(tmp_path)],
                 ["cells", "users", str(tmp_path), "--attack", "lowkey"]):
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert (
            "not a `puface reproduce`" in err
            and "missing column(s): " in err
            and "attack, victim" in err
            and "Traceback" not in err
        )


def test_a_cell_without_an_asr_is_no_best_baseline_and_compares_equal_to_itself(tmp_path, capsys):
    """A cell whose users had no test photo has no ASR (NaN; an empty field in summary.csv). `report headline` picked
    such a baseline as the best one (NaN compares false with everything, so min() kept it when it came first), in its
    row too, and `report cells compare` counted the cell as differing between two copies of one run."""
    from puface.cli import main
    from puface.evaluation.tables import summarise_rows, write_csv

    runs = [{"seed": 0, "user": "Ann", "attack": "fawkes", "victim": "v", "trainer": "nn", "defense": d,
             "setting": "white-box", "asr": asr, "normal_acc": 0.9}
            for d, asr in (("none", 1.0), ("puface", 0.1), ("blur", float("nan")), ("jpeg", 0.5))]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / "summary.csv", summarise_rows(runs))
    h = summaries.headline(summaries.load_summary(tmp_path / "a"))
    assert h["best_baseline"] == "jpeg" and h["rows"][0]["row_best"] == "jpeg"
    assert h["means"]["white-box"]["jpeg"] == {"asr": 0.5, "normal_acc": 0.9}
    assert main(["report", "cells", "compare", str(tmp_path / "a"), "--other", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip() == "4 of 4 rows identical (ASR and normal accuracy)"


def test_runs_without_an_asr_are_read_back_from_results_csv_and_left_out(tmp_path, capsys):
    """results.csv writes a run without an ASR (NaN: the user had no test photo) as an empty field; `report headline`
    pooling two draws' results.csv and `report cells users` stopped on it with a ValueError traceback, and
    `report cells defenses` printed "nan" and took min / max over it."""
    from puface.cli import main
    from puface.evaluation.tables import summarise_rows, write_csv

    folders = []
    for seed in (0, 1):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "config.toml").write_text(f'name = "g"\nseeds = [{seed}]\n')
        runs = [
            {
                "run_id": f"{seed}|{u}|{df}",
                "seed": seed,
                "attack": "fawkes",
                "victim": "v",
                "trainer": "nn",
                "defense": df,
                "user": u,
                "setting": "white-box",
                "asr": asr,
                "normal_acc": acc,
            }
            for df, u, asr, acc in (
                ("none", "Ann", 1.0, 0.9),
                ("none", "Bob", float("nan"), 0.8),
                ("puface", "Ann", 0.2 + 0.1 * seed, 0.9),
                ("puface", "Bob", float("nan"), 0.7),
            )
        ]
        write_csv(d / "results.csv", runs)
        write_csv(d / "summary.csv", summarise_rows(runs))
        folders.append(d)
    assert ",Bob,white-box,,0.8" in (folders[0] / "results.csv").read_text()  # NaN is an empty field
    pooled = {r["defense"]: r for r in summaries.load_pooled(folders)}
    assert pooled["puface"]["asr_mean"] == pytest.approx(0.25) and pooled["puface"]["n"] == 2  # Bob's runs left out
    assert pooled["puface"]["normal_acc_mean"] == pytest.approx(0.8) and pooled["none"]["asr_mean"] == 1.0
    assert main(["report", "headline", *map(str, folders)]) == 0
    assert "| fawkes | v | nn | white-box | 100.0 | **25.0** |" in capsys.readouterr().out
    table = summaries.users_table(folders[0], "fawkes", {"Ann"}, "puface").splitlines()
    assert table[2:] == ["| named (1) | 20.0 | 20.0 |", "| all (1) | 20.0 | 20.0 |"]
    # a cell of summary.csv without an ASR: "-" in its column, left out of the mean, min and max
    write_csv(
        folders[0] / "summary.csv",
        summarise_rows(
            [
                {
                    "seed": 0,
                    "user": "Ann",
                    "attack": "fawkes",
                    "victim": v,
                    "trainer": "nn",
                    "defense": "none",
                    "setting": "white-box",
                    "asr": asr,
                    "normal_acc": 0.9,
                }
                for v, asr in (("a", float("nan")), ("b", 0.5), ("c", 1.0))
            ]
        ),
    )
    lines = summaries.defenses_table(folders[0], "fawkes").splitlines()
    assert lines[2] == "| none | - | 50.0 | 100.0 | 75.0 | 50.0 | 100.0 | 90.0 |"


def test_headline_of_a_query_time_run_says_its_asr_counts_cloaked_probes(tmp_path, capsys):
    """At query time ASR is the share of the user's cloaked (and defended) probes not matched: table.md said so, the
    headline table of the same folder printed the numbers without a word, as if they were training-time ASRs."""
    from puface.cli import main

    rows = [("lowkey", "dlib-resnet29", "nn", d, "white-box", asr, 0.99)
            for d, asr in (("none", 1.0), ("puface", 0.05))]
    configs = {"query-toml": ("config.toml", 'protocol = "query"\n'),
               "query-json": ("config.resolved.json", '{"protocol": "query"}'),
               "training": ("config.toml", 'name = "t"\n'), "no-config": None}
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        folder = _summary(tmp_path / name, rows)
        if config:
            (folder / config[0]).write_text(config[1])
        query = name.startswith("query")
        assert main(["report", "headline", str(folder)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        if query:
            assert "cloaked probe photos" in last and last == summaries.QUERY_NOTE
        else:
            assert last.startswith("no baseline defense in these results;"), name
        assert summaries.run_protocol(folder) == ("query" if query else "training")
    assert main(["report", "headline", str(tmp_path / "query-toml"), "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["protocol"] == "query"


def _no_asr_runs(seed: int = 0) -> list[dict]:
    """Runs of one white-box cell where no user has an ASR under no defense (no test photo of theirs) and one user has
    none under the purifier; every run has a normal accuracy (the other identities' test photos)."""
    return [{"seed": seed, "user": u, "attack": "lowkey", "victim": "v", "trainer": "nn", "defense": d,
             "setting": "white-box", "asr": asr, "normal_acc": acc}
            for d, u, asr, acc in (("none", "Ann", float("nan"), 0.9), ("none", "Bob", float("nan"), 0.8),
                                   ("puface", "Ann", 0.2, 0.9), ("puface", "Bob", float("nan"), 0.7))]


def test_table_md_shows_the_normal_accuracy_of_a_cell_where_no_user_has_an_asr():
    """table.md formatted both numbers of a cell with the ASR's count: a cell where no user had an ASR showed "-" for
    its normal accuracy too (yet the mean row below counted it), and a normal accuracy over two runs of which one had
    an ASR lost its ± as if it were one run's."""
    from types import SimpleNamespace

    from puface.evaluation.tables import render_tables, summarise_rows

    summary = summarise_rows(_no_asr_runs())
    assert {r["defense"]: (r["n"], r["normal_acc_n"]) for r in summary} == {"none": (0, 2), "puface": (1, 2)}
    cfg = SimpleNamespace(
        attacks=[SimpleNamespace(label="lowkey")], victims=["v"], trainers=[SimpleNamespace(label="nn")],
        defenses=[SimpleNamespace(label="none"), SimpleNamespace(label="puface")],
        name="no-asr", description="", seeds=[0],
    )
    md = render_tables(cfg, summary, [])
    assert "| lowkey | v | white-box | nn | - | 20.0 | 85.0 ± 7.1 | 80.0 ± 14.1 |" in md
    assert "| none | - | 85.0 |" in md and "| puface | 20.0 | 80.0 |" in md  # the per-defense tables


def test_pooled_summaries_weight_the_normal_accuracy_by_its_own_count(tmp_path):
    """Folders trimmed to summary.csv pooled each cell's normal accuracy with the ASR's count as weight: a cell where
    no user had an ASR lost its normal accuracy (NaN, "-" in `report headline`)."""
    from puface.evaluation.tables import summarise_rows, write_csv

    folders, runs = [], []
    for seed in (0, 1):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "config.toml").write_text(f'name = "g"\nseeds = [{seed}]\n')
        rs = [{**r, "normal_acc": r["normal_acc"] - 0.1 * seed} for r in _no_asr_runs(seed)]
        write_csv(d / "summary.csv", summarise_rows(rs))
        folders.append(d)
        runs += rs
    pooled = {r["defense"]: r for r in summaries.load_pooled(folders)}
    exact = {r["defense"]: r for r in summarise_rows(runs)}
    for d in ("none", "puface"):
        for k in ("asr_mean", "asr_std", "normal_acc_mean", "normal_acc_std"):
            assert pooled[d][k] == pytest.approx(exact[d][k], nan_ok=True), (d, k)
        assert (pooled[d]["n"], pooled[d]["normal_acc_n"]) == (exact[d]["n"], exact[d]["normal_acc_n"])
    assert pooled["none"]["normal_acc_mean"] == pytest.approx(0.8)


def test_report_cells_draws_and_users_take_the_purifiers_label_as_headline_does(tmp_path, capsys):
    """`report headline --puface LABEL` names the purifier's defense label; `report cells draws` had no such option
    (click: "No such option: --puface") and looked for "puface" alone, so the draws of a grid whose purifier has
    another label had "no white-box cell". Now --puface means the same in both, the columns are named as the headline
    names them, and `cells users` shows that defense unless --defense names another."""
    from puface.cli import main

    folders = []
    for seed, (none, pu) in enumerate(((0.9, 0.05), (float("nan"), 0.0))):
        (tmp_path / f"seed{seed}").mkdir()
        folders.append(_summary(tmp_path / f"seed{seed}", [
            ("lowkey", "sface", "nn", "none", "white-box", none, 0.99),
            ("lowkey", "sface", "nn", "puface-step", "white-box", pu, 0.98),
            ("lowkey", "sface", "nn", "puface", "white-box", 0.5, 0.5)]))
    assert main(["report", "cells", "draws", *map(str, folders), "--puface", "puface-step"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| attack | victim | trainer | seed0 | seed1 | mean | puface-step, range over draws |"
    assert lines[2:] == ["| lowkey | sface | nn | **90.0** | - | 90.0 | 0.0-5.0 |", "",
                         "normal accuracy 98.0-99.0%, no defense vs puface-step at most 1.00 points apart"]
    assert main(["report", "cells", "draws", *map(str, folders), "--puface", "pu"]) == 2
    err = capsys.readouterr().err
    assert "no white-box cell with no defense and 'pu'" in err and "puface-step" in err and "Traceback" not in err
    assert main(["report", "headline", str(folders[0]), "--puface", "puface-step"]) == 0
    assert "ASR puface-step" in capsys.readouterr().out

    (tmp_path / "results.csv").write_text("seed,user,attack,victim,trainer,defense,setting,asr,normal_acc\n"
                                          "0,Ann,lowkey,v,nn,puface,white-box,0.5,1.0\n"
                                          "0,Ann,lowkey,v,nn,puface-step,white-box,0.25,1.0\n"
                                          "0,Ann,lowkey,v,nn,jpeg,white-box,1.0,1.0\n")
    for extra, asr in (([], "50.0"), (["--puface", "puface-step"], "25.0"),
                       (["--puface", "puface-step", "--defense", "jpeg"], "100.0")):
        assert main(["report", "cells", "users", str(tmp_path), "--attack", "lowkey", "--users", "Ann", *extra]) == 0
        assert f"| named (1) | {asr} | {asr} |" in capsys.readouterr().out


def test_repeats_table_of_a_folder_trimmed_to_its_config_toml_keeps_baselines_apart(tmp_path):
    """The folders of docs/results/ hold config.toml, not config.resolved.json: `report cells repeats` on them took
    every label ending in -s<N> for a repeat, so docs/results/lfw's blur-s1 (sigma 1) came out as a recipe "blur".
    The config.toml says which defenses name a purifier file (a label left out gets its default: blur-s2)."""
    folder = _summary(tmp_path, [
        ("fawkes", "dlib-resnet29", "nn", "blur-s1", "white-box", 1.0, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "blur-s2", "white-box", 0.6, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "ref", "white-box", 0.1, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "ref-s1", "white-box", 0.3, 0.99),
        ("fawkes", "dlib-resnet29", "nn", "puface-b", "white-box", 0.2, 0.99),
    ])
    (folder / "config.toml").write_text(
        'name = "g"\n\n[[defenses]]\nlabel = "blur-s1"\nname = "blur"\nsigma = 1.0\n\n'
        '[[defenses]]\nname = "blur"\nsigma = 2.0\n\n'
        '[[defenses]]\nlabel = "ref"\nname = "puface"\nweights = "a.safetensors"\n\n'
        '[[defenses]]\nlabel = "ref-s1"\nname = "puface"\nweights = "b.safetensors"\n\n'
        '[[defenses]]\nname = "puface"\nweights = "b.safetensors"\n')
    rows = {line.split(" | ")[0][2:]: line for line in summaries.repeats_table(folder).splitlines()[2:]}
    assert set(rows) == {"blur-s1", "blur-s2", "ref", "puface-b"}
    assert rows["blur-s1"].startswith("| blur-s1 | 1 | 100.0 |") and rows["ref"].startswith(
        "| ref | 2 | 20.0 [10.0, 30.0] |")


def test_headline_never_takes_another_purifier_for_the_best_baseline(tmp_path, capsys):
    """A grid with the purifier at another step, a retrained purifier file or a composition holding the purifier
    (docs/results/lfw-full-step, lfw-jpeg-inputs, lfw-randomised) had one of them as its "best baseline" (`report
    headline docs/results/lfw-full-step`: 'best baseline over the white-box cells: puface-step1.5'), PuFace set
    against itself. Baselines are the defenses without a purifier: by label ("puface...", as the paper table tells
    them) and by the run's config (a retrained file or a composition under any label)."""
    import json

    from puface.cli import main

    cell = ("fawkes-high", "dlib-resnet29", "nn")
    folder = _summary(tmp_path, [(*cell, "none", "white-box", 1.0, 0.99), (*cell, "puface", "white-box", 0.1, 0.99),
                                 (*cell, "puface-step1.5", "white-box", 0.02, 0.99),
                                 (*cell, "mine", "white-box", 0.03, 0.99),
                                 (*cell, "jpeg+pu", "white-box", 0.04, 0.99),
                                 (*cell, "blur-s1", "white-box", 0.6, 0.98),
                                 (*cell, "jpeg-q75", "white-box", 0.8, 0.99)])
    defenses = [{"label": "none", "spec": {"name": "none"}}, {"label": "puface", "spec": {"name": "puface"}},
                {"label": "puface-step1.5", "spec": {"name": "puface", "step": 1.5}},
                {"label": "mine", "spec": {"name": "puface", "weights": "mine.safetensors"}},
                {"label": "jpeg+pu", "spec": "jpeg:quality=75+puface"},
                {"label": "blur-s1", "spec": {"name": "blur", "sigma": 1.0}},
                {"label": "jpeg-q75", "spec": {"name": "jpeg", "quality": 75}}]
    (folder / "config.resolved.json").write_text(json.dumps({"defenses": defenses}))
    assert main(["report", "headline", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "best baseline over the white-box cells: blur-s1;" in out and "| ASR blur-s1 |" in out
    assert "| blur-s1 (60.0) |" in out
    assert summaries.purifier_labels(folder) == {"puface", "puface-step1.5", "mine", "jpeg+pu"}
    # a folder trimmed to its tables: the entries of its config.toml say the same
    (folder / "config.resolved.json").unlink()
    (folder / "config.toml").write_text(
        '[[defenses]]\nname = "none"\n\n[[defenses]]\nname = "puface"\nstep = 1.5\n\n[[defenses]]\nlabel = "mine"\n'
        'name = "puface"\nweights = "mine.safetensors"\n\n[[defenses]]\nlabel = "jpeg+pu"\nname = "jpeg+puface"\n\n'
        '[[defenses]]\nname = "blur"\nsigma = 1.0\n')
    assert summaries.purifier_labels(folder) == {"puface-step1.5", "mine", "jpeg+pu"}
    assert main(["report", "headline", str(folder)]) == 0
    assert "best baseline over the white-box cells: blur-s1;" in capsys.readouterr().out


def _mine_grid(report: dict | None = None):
    """A researcher's grid: no defense and a purifier labelled "mine" (not puface...), one cell each."""
    from puface.evaluation.tables import summarise_rows
    from puface.experiments.config import ExperimentConfig

    raw = {"name": "mine", "attacks": [{"name": "fawkes", "mode": "low"}], "trainers": [{"name": "nn"}],
           "defenses": [{"name": "none"}, {"name": "puface", "label": "mine"}],
           **({"report": report} if report else {})}
    cfg = ExperimentConfig.from_dict(raw, Path("mine.toml"))
    rows = [{"seed": 0, "user": "Ann", "attack": "fawkes-low", "victim": "dlib-resnet29", "trainer": "nn",
             "defense": d, "setting": "white-box", "asr": asr, "normal_acc": 0.9}
            for d, asr in (("none", 1.0), ("mine", 0.25))]
    return cfg, summarise_rows(rows)


def test_table_md_names_a_purifier_left_out_of_the_first_table_and_report_headline_puts_it_in():
    """A purifier labelled "mine" had no column in the first table (columns: none and puface... labels) and no word
    why; now a line names it and `[report] headline = ["mine"]` gives it its columns."""
    from puface.evaluation.tables import render_tables

    cfg, summary = _mine_grid()
    first = render_tables(cfg, summary, []).split("### Every defense")[0]
    assert "ASR mine" not in first
    assert "Not in this table: the purifier defense(s) mine" in first and "headline = [labels]" in first
    cfg, summary = _mine_grid({"headline": ["mine"]})
    first = render_tables(cfg, summary, []).split("### Every defense")[0]
    assert "| ASR no defense | ASR mine |" in first and "| 100.0 | 25.0 |" in first and "Not in this table" not in first


def test_report_headline_of_a_config_must_name_its_defenses():
    with pytest.raises(ConfigError, match=r"mine.toml \[report\]: headline names no defense of the grid: theirs"):
        _mine_grid({"headline": ["theirs"]})
    with pytest.raises(ConfigError, match=r"mine.toml \[report\]: headline must be a list of defense labels"):
        _mine_grid({"headline": "mine"})


def _cell(attack, victim, defense, setting, asr, acc):
    """One summary row of the paper table (trainer nn)."""
    return {"attack": attack, "victim": victim, "trainer": "nn", "defense": defense, "setting": setting,
            "asr_mean": asr, "asr_std": 0.0, "normal_acc_mean": acc, "normal_acc_std": 0.0, "n": 1}


def _mean_row(rows, setting):
    return next(r for r in rows if r[0] == f"**mean ({setting})**")


def test_paper_table_means_leave_out_the_clean_reference():
    """The mean rows average the cloaked cells: the clean reference (no cloak, ASR near 0) is not a cloaked setting."""
    from puface.evaluation.tables import paper_table

    summary = [_cell("clean", "v1", "none", "clean", 0.0, 1.0), _cell("fawkes", "v1", "none", "white-box", 0.8, 0.9),
               _cell("fawkes", "v2", "none", "oblivious", 0.6, 0.7)]
    header, rows = paper_table(summary)
    assert header[4:] == ["ASR no defense", "normal acc. no defense"]
    assert _mean_row(rows, "white-box")[4:] == ["**80.0**", "**90.0**"]
    assert _mean_row(rows, "oblivious")[4:] == ["**60.0**", "**70.0**"]
    assert _mean_row(rows, "all cloaked")[4:] == ["**70.0**", "**80.0**"]


def test_paper_table_means_leave_out_cells_without_a_number():
    """A cell without an ASR (NaN: no protected user had a test photo) is left out of the mean, not made NaN of it."""
    from puface.evaluation.tables import paper_table

    summary = [_cell("fawkes", "v1", "none", "white-box", 0.8, 0.9),
               _cell("fawkes", "v3", "none", "white-box", float("nan"), 0.5)]
    _, rows = paper_table(summary)
    assert _mean_row(rows, "white-box")[4:] == ["**80.0**", "**70.0**"]


def test_paper_table_has_a_column_for_every_defense_labelled_puface():
    """By default the first table's columns are none and every defense labelled puface... (a step-size variant
    too); a baseline such as jpeg is only in the per-defense tables."""
    from puface.evaluation.tables import paper_table

    summary = [_cell("fawkes", "v1", d, "white-box", asr, 0.9)
               for d, asr in (("none", 0.9), ("puface-step1.5", 0.2), ("jpeg", 0.7))]
    header, rows = paper_table(summary)
    assert header[4:] == ["ASR no defense", "ASR puface-step1.5", "normal acc. no defense",
                          "normal acc. puface-step1.5"]
    assert rows[0][4:6] == ["90.0", "20.0"]


def test_headline_picks_the_best_baseline_on_the_white_box_cells_and_reports_purifiers_highest_white_box_asr():
    """The best baseline is the one with the lowest mean ASR over the white-box cells (an oblivious cell where another
    baseline does well does not choose it); the closing number is PuFace's highest white-box ASR, its worst case."""
    def cell(victim, setting, asrs):
        return [{"attack": "fawkes", "victim": victim, "trainer": "nn", "setting": setting, "defense": d,
                 "asr_mean": a, "normal_acc_mean": 0.9} for d, a in zip(("none", "puface", "jpeg", "blur"), asrs)]

    rows = cell("v1", "white-box", (0.9, 0.3, 0.6, 0.8)) + cell("v2", "white-box", (0.9, 0.1, 0.6, 0.8))
    rows += cell("v3", "oblivious", (0.9, 0.05, 0.9, 0.0))  # over every cell blur (0.53) would beat jpeg (0.7)
    h = summaries.headline(rows)
    assert h["best_baseline"] == "jpeg"
    assert h["max_white_box_asr_puface"] == pytest.approx(0.3)
    assert h["means"]["white-box"]["jpeg"]["asr"] == pytest.approx(0.6)
    assert [r["row_best"] for r in h["rows"]] == ["jpeg", "jpeg", "blur"]
