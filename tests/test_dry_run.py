"""`--dry-run` of the folder jobs (`puface purify`, `detect`, `cloak`): the inputs found, what a resume would skip
(the job's own test), what is left and the settings, with the job's refusals, and nothing written."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from puface.cli import main
from puface.io.files import Listing
from puface.io.jobs import plan_mirror


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` (hidden ones too): its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def tree(tmp_path, johns_dir) -> Path:
    """6 johns chips in two identity folders, and two files that are not images."""
    root = tmp_path / "in"
    for p in sorted(johns_dir.glob("*/*.jpg"))[::9][:6]:
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / p.parent.name / p.name)
    (root / "notes.txt").write_text("not an image")
    (next(d for d in sorted(root.iterdir()) if d.is_dir()) / "labels.json").write_text("{}")
    return root


def test_plan_mirror_counts_what_the_walk_met(tree, tmp_path):
    (tree / "anim.gif").write_bytes(b"GIF89a")
    listing = Listing()
    jobs = plan_mirror(tree, tmp_path / "out", rank=1, world_size=2, listing=listing)
    assert (listing.images, listing.unsupported, listing.others, len(jobs)) == (7, 1, 2, 3)
    assert sorted(p.name for p in listing.other_paths) == ["labels.json", "notes.txt"]


def test_purify_dry_run_counts_what_a_resume_skips_and_writes_nothing(tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, said, err = _run(["purify", "--dry-run", str(tree), str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    assert "6 chips found" in said and "2 other file(s) skipped (not images" in said and "notes.txt" in said
    assert "already done in the output (a resume skips them): 0" in said and "to purify: 6" in said
    assert "step: arcface112 1, dlib150 1.5" in said and "device: cpu" in said and "purifier: arcface112 " in said
    assert not out.exists()  # no folder, record or lock

    assert main(["purify", str(tree), str(out), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    for p in sorted(out.rglob("*.jpg"))[:2]:
        p.unlink()
    before = _snapshot(out)
    code, said, err = _run(["purify", "--dry-run", str(tree), str(out)], capsys)
    assert code == 0, err
    assert "a resume skips them): 4" in said and "to purify: 2" in said
    code, said, _ = _run(["purify", "--dry-run", "--rank", "1", "--world-size", "2", str(tree), str(out)], capsys)
    assert code == 0 and "this process (rank 1 of 2): 3 chips" in said
    code, said, _ = _run(["purify", "--dry-run", "--no-resume", str(tree), str(out)], capsys)
    assert code == 0 and "to purify: 6" in said

    # the job's refusals, in its one line: other settings in OUT, OUT inside IN
    code, said, err = _run(["purify", "--dry-run", "--step", "1", str(tree), str(out)], capsys)
    assert code == 2 and "different purifying setting (differs in: step)" in err and len(err.splitlines()) == 1
    code, said, err = _run(["purify", "--dry-run", str(tree), str(tree / "sub")], capsys)
    assert code == 2 and "lies inside the input folder" in err and not (tree / "sub").exists()
    assert _snapshot(out) == before


def test_purify_dry_run_of_shards_counts_this_process_shards(tree, tmp_path, capsys):
    pytest.importorskip("webdataset")
    shards = tmp_path / "shards"
    shards.mkdir()
    chips = sorted(tree.glob("*/*.jpg"))
    for i in range(3):
        with tarfile.open(shards / f"train-{i:03d}.tar", "w") as tf:
            for k, p in enumerate(chips[2 * i: 2 * i + 2]):
                data = p.read_bytes()
                ti = tarfile.TarInfo(f"r{i}{k}.jpg")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    out = tmp_path / "out"
    code, said, err = _run(["purify", "--dry-run", "--rank", "0", "--world-size", "2", str(shards), str(out)], capsys)
    assert code == 0, err
    assert "3 shards found" in said and "this process (rank 0 of 2): 2 shards" in said and "to purify: 2" in said
    assert "records" in said and not out.exists()
    assert main(["purify", "--no-progress", "--rank", "0", "--world-size", "2", str(shards), str(out)]) == 0
    capsys.readouterr()
    code, said, _ = _run(["purify", "--dry-run", str(shards), str(out)], capsys)
    assert code == 0 and "a resume skips them): 2" in said and "to purify: 1" in said


def test_detect_dry_run_counts_the_rows_a_resume_keeps_and_writes_nothing(tree, tmp_path, capsys):
    scores = tmp_path / "scores" / "s.csv"
    scores.parent.mkdir()
    code, said, err = _run(["detect", "--dry-run", str(tree), "--out", str(scores)], capsys)
    assert code == 0, err
    assert "6 images found" in said and "to score: 6" in said and "detector: " in said and "threshold" in said
    assert not any(scores.parent.iterdir())  # no CSV, run file or lock
    assert main(["detect", "--no-progress", str(tree), "--out", str(scores)]) == 0
    capsys.readouterr()
    shutil.copy(next(tree.glob("*/*.jpg")), tree / "new.jpg")
    before = _snapshot(scores.parent)
    code, said, err = _run(["detect", "--dry-run", str(tree), "--out", str(scores)], capsys)
    assert code == 0, err
    assert "a resume skips them): 6" in said and "to score: 1" in said
    code, said, _ = _run(["detect", "--dry-run", "--restart", str(tree), "--out", str(scores)], capsys)
    assert code == 0 and "to score: 7" in said
    other = next(d for d in sorted(tree.iterdir()) if d.is_dir())
    code, said, err = _run(["detect", "--dry-run", str(other), "--out", str(scores)], capsys)
    assert code == 2 and "scores of another input" in err and len(err.splitlines()) == 1
    assert _snapshot(scores.parent) == before


CLOAK = ["cloak", "--mode", "custom", "--th", "0.01", "--steps", "1", "--lr", "20", "--surrogate", "dlib-resnet29"]


def test_cloak_dry_run_counts_what_a_resume_skips_and_writes_nothing(tree, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    for p in sorted(tree.glob("*/*.jpg"))[:3]:
        shutil.copy(p, small / p.name)
    out = tmp_path / "out"
    code, said, err = _run([*CLOAK, "--dry-run", str(small), str(out)], capsys)
    assert code == 0, err
    assert "3 chips found" in said and "to cloak: 3" in said and "surrogates: dlib-resnet29 " in said
    assert "attack: fawkes-custom" in said and not out.exists()
    assert main([*CLOAK, "--no-progress", str(small), str(out)]) == 0
    capsys.readouterr()
    sorted(out.glob("*.png"))[0].unlink()
    before = _snapshot(out)
    code, said, err = _run([*CLOAK, "--dry-run", str(small), str(out)], capsys)
    assert code == 0, err
    assert "a resume skips them): 2" in said and "to cloak: 1" in said
    code, said, err = _run([*CLOAK[:4], "0.02", *CLOAK[5:], "--dry-run", str(small), str(out)], capsys)
    assert code == 2 and "different cloaking setting" in err.splitlines()[-1] and "Traceback" not in err
    assert _snapshot(out) == before


def test_cloak_dry_run_of_a_group_attack_says_groups(tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, said, err = _run(["cloak", "--attack", "opom", "--surrogate", "dlib-resnet29", "--dry-run", str(tree),
                            str(out)], capsys)
    assert code == 0, err
    assert "to cloak: 6" in said and "one group" in said and not out.exists()


def test_dry_run_counts_broken_links_with_the_files_the_job_fails(tree, tmp_path, capsys):
    """A link to a file that does not exist is listed by the job and fails it ("broken link"); the dry run said
    "1 of them in formats puface cannot read" for a GIF beside it and left the link out of that count, so its count of
    the inputs the job lists as failed fell short of the real run's."""
    (tree / "anim.gif").write_bytes(b"GIF89a")
    (tree / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "out"
    code, said, err = _run(["purify", "--dry-run", str(tree), str(out)], capsys)
    assert code == 0, err
    assert "8 chips found" in said and "2 of them cannot be read" in said and "broken link" in said
    code, said, _ = _run(["purify", "--no-progress", str(tree), str(out)], capsys)
    assert code == 1 and "FAILED (2)" in said


def test_dry_run_writes_in_puface_home_only_what_its_help_says(tree, tmp_path, capsys, monkeypatch):
    """The help said "write nothing (no OUT, record or lock) ... Loads the models", but loading a face model the first
    time caches its converted weights in $PUFACE_HOME/weights (`models.weights.cached_state_dict`, as any command
    does): the help now says so, and that file is the only one a dry run writes there (no cloak or evaluation cache)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PUFACE_HOME", str(home))
    code, said, err = _run([*CLOAK, "--dry-run", str(tree), str(tmp_path / "out")], capsys)
    assert code == 0, err
    written = [p.relative_to(home).parts for p in home.rglob("*") if p.is_file()]
    assert written and all(parts[0] == "weights" for parts in written)
    helps = " ".join(_run([c, "--help"], capsys)[1] for c in ("cloak", "purify", "detect", "reproduce"))
    assert helps.count("$PUFACE_HOME/weights") == 4


def test_dry_run_says_when_it_looks_at_no_earlier_output(tree, tmp_path, capsys):
    """With --no-resume (or detect's --restart) every input is done again, and the dry run said "already done in the
    output (a resume skips them): 0" over a full OUT, as if it held nothing; detect's scores file that does not exist
    yet was said "(resumed)". Now: "not looked at (no resume ...)" and "(new)"."""
    scores = tmp_path / "s.csv"
    code, said, err = _run(["detect", "--dry-run", str(tree), "--out", str(scores)], capsys)
    assert code == 0, err
    assert f"scores: {scores} (new)" in said and "a resume skips them): 0" in said
    assert main(["detect", "--no-progress", str(tree), "--out", str(scores)]) == 0
    capsys.readouterr()
    code, said, _ = _run(["detect", "--dry-run", str(tree), "--out", str(scores)], capsys)
    assert code == 0 and "(resumed)" in said and "a resume skips them): 6" in said
    for flag in ("--restart", "--no-resume"):
        code, said, _ = _run(["detect", "--dry-run", flag, str(tree), "--out", str(scores)], capsys)
        assert code == 0 and "already done in the output: not looked at (no resume" in said and "to score: 6" in said
    out = tmp_path / "out"
    code, said, _ = _run(["purify", "--dry-run", "--no-resume", str(tree), str(out)], capsys)
    assert code == 0 and "not looked at (no resume" in said and "to purify: 6" in said


def test_purify_help_names_the_options_its_dry_run_refuses(tree, tmp_path, capsys):
    """`purify --dry-run` refuses --skip-cloaked and --report (their scores decide what is written), which its help
    did not say."""
    code, said, err = _run(["purify", "--dry-run", "--report", str(tree), str(tmp_path / "out")], capsys)
    assert code == 2 and "--dry-run does not cover --skip-cloaked or --report" in err
    assert not (tmp_path / "out").exists()
    helped = " ".join(_run(["purify", "--help"], capsys)[1].split())
    assert "Not with --skip-cloaked or --report" in helped
