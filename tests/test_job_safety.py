"""What a folder or shard job promises about its output folder when runs are resumed, redone or interrupted:
a resume never mixes in outputs of another input or of an unfinished redo with other settings, a CSV row
stands only for an output that was written, two inputs never share one output, and a killed run's partial
files do not stay behind."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import click
import pytest

import puface.purifier.folder as purifier_folder
from puface.cli import main
from puface.io.jobs import REDO_KEY, Outcome, plan_mirror, run_folder_job

from purifier_support import visible_purifier_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small purifier that visibly changes images (random non-zero weights)."""
    return visible_purifier_file(tmp_path_factory.mktemp("w") / "p.pt")


def _tree(johns_dir: Path, root: Path, start: int) -> Path:
    """Two identity folders of two chips each, the chips from `start` on (same names for every start)."""
    src = sorted(johns_dir.glob("*/*.jpg"))
    for k, p in enumerate(src[start : start + 4]):
        (root / f"id{k // 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / f"id{k // 2}" / f"{k % 2}.jpg")
    return root


def _purify(*args) -> list[str]:
    return ["purify", *map(str, args), "--no-progress", "--device", "cpu"]


def test_resuming_into_an_output_folder_of_another_input_is_refused(johns_dir, tmp_path, weights, capsys, monkeypatch):
    """Same file names, other photos: the outputs of the first input must not pass as the second's."""
    a, b, out = _tree(johns_dir, tmp_path / "a", 0), _tree(johns_dir, tmp_path / "b", 20), tmp_path / "out"
    assert main(_purify(a, out, "--weights", weights)) == 0
    first = (out / "id0" / "0.jpg").read_bytes()
    capsys.readouterr()
    assert main(_purify(b, out, "--weights", weights)) == 2
    err = capsys.readouterr().err
    assert "holds outputs of another input" in err and str(a.resolve()) in err and "--no-resume" in err
    assert (out / "id0" / "0.jpg").read_bytes() == first
    monkeypatch.chdir(tmp_path)  # the same input named from another folder is the same input
    assert main(_purify("a", "out", "--weights", weights)) == 0
    assert "0 purified, 4 already done" in capsys.readouterr().out
    assert main(_purify(b, out, "--weights", weights, "--no-resume")) == 0
    assert (out / "id0" / "0.jpg").read_bytes() != first
    assert json.loads((out / "purify_config.json").read_text())["input"] == str(b.resolve())


def test_an_interrupted_redo_with_other_settings_cannot_be_resumed(johns_dir, tmp_path, weights, capsys, monkeypatch):
    """--no-resume with other settings, stopped half way, leaves outputs of both settings: a plain resume of
    either setting is refused until a --no-resume run ends; a redo with the same settings needs no mark."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    assert main(_purify(src, out, "--weights", weights)) == 0
    real = purifier_folder.run_folder_job

    def stopped(jobs, process, **kw):  # writes the first image with the new setting, then Ctrl-C
        real(jobs[:1], process, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(purifier_folder, "run_folder_job", stopped)
    assert main(_purify(src, out, "--weights", weights, "--step", "2", "--no-resume")) == 130
    assert json.loads((out / "purify_config.json").read_text())[REDO_KEY] is True
    monkeypatch.setattr(purifier_folder, "run_folder_job", real)
    capsys.readouterr()
    for extra in ([], ["--step", "2"]):
        assert main(_purify(src, out, "--weights", weights, *extra)) == 2
        assert "stopped before it ended" in capsys.readouterr().err
    assert main(_purify(src, out, "--weights", weights, "--step", "2", "--no-resume")) == 0
    record = json.loads((out / "purify_config.json").read_text())
    assert REDO_KEY not in record and record["step"] == 2
    assert main(_purify(src, out, "--weights", weights, "--step", "2")) == 0  # a plain resume again
    monkeypatch.setattr(purifier_folder, "run_folder_job", stopped)
    assert main(_purify(src, out, "--weights", weights, "--step", "2", "--no-resume")) == 130
    assert REDO_KEY not in json.loads((out / "purify_config.json").read_text())  # same settings: nothing mixed


def _identity(items):
    return [Outcome.ok(it.image, mean=float(it.image.mean())) for it in items]


def test_a_csv_row_stands_only_for_a_written_output(johns_dir, tmp_path, capsys):
    """An output that cannot be written (a file where its folder should be; a folder where it should be) is
    reported once, with the cause, gets no row, and is done on the next run; its row then appears once."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    out.mkdir()
    (out / "id1").write_bytes(b"in the way")  # blocks id1/0.jpg and id1/1.jpg
    (out / "id0" / "1.jpg").mkdir(parents=True)  # a folder where an output goes
    stats = out / "stats.csv"
    rep = run_folder_job(plan_mirror(src, out), _identity, batch_size=4, stats_csv=stats, progress=False,
                         log=lambda m: None)
    assert rep.written == 1 and len(rep.failed) == 3
    why = dict((p.relative_to(src).as_posix(), w) for p, w in rep.failed)
    assert (
        f"{out / 'id1'} is a file, not a folder" in why["id1/0.jpg"]
        and why["id1/0.jpg"].count(str(out / "id1" / "0.jpg")) == 1
    )
    assert "id0/1.jpg" in why  # not taken for an output already written
    rows = stats.read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("id0/0.jpg,ok,")
    (out / "id1").unlink()
    (out / "id0" / "1.jpg").rmdir()
    rep = run_folder_job(plan_mirror(src, out), _identity, batch_size=4, stats_csv=stats, progress=False)
    assert rep.written == 3 and rep.resumed == 1 and not rep.failed
    names = sorted(r.split(",")[0] for r in stats.read_text().splitlines()[1:])
    assert names == ["id0/0.jpg", "id0/1.jpg", "id1/0.jpg", "id1/1.jpg"]


def test_stats_columns_without_a_stats_csv_write_the_outputs_alone(johns_dir, tmp_path):
    """`stats_fields` fixes the columns of a stats CSV; with no `stats_csv` there is none, and the job writes its
    outputs (it raised AttributeError 'NoneType' object has no attribute 'parent' before running; found by mypy)."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    rep = run_folder_job(
        plan_mirror(src, out), _identity, batch_size=4, progress=False, stats_fields=["file", "status"]
    )
    assert rep.written == 4 and not rep.failed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "id0/0.jpg", "id0/1.jpg", "id1/0.jpg", "id1/1.jpg"]


def test_purify_report_resumed_over_a_plain_run_scores_every_image(johns_dir, tmp_path, capsys):
    """Outputs written by a plain `purify` carry no score: a resume with --report scores them, so its summary
    covers every image; a second --report run finds them all done."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    assert main(_purify(src, out)) == 0
    capsys.readouterr()
    assert main(_purify(src, out, "--report")) == 0
    rows = (out / "detection.csv").read_text().splitlines()
    assert len(rows) == 5 and sorted(r.split(",")[0] for r in rows[1:]) == [
        "id0/0.jpg",
        "id0/1.jpg",
        "id1/0.jpg",
        "id1/1.jpg",
    ]
    assert "of 4 images" in capsys.readouterr().out
    assert main(_purify(src, out, "--report")) == 0
    assert "0 purified, 4 already done" in capsys.readouterr().out
    assert len((out / "detection.csv").read_text().splitlines()) == 5


def _tar(path: Path, chip: bytes, key: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        ti = tarfile.TarInfo(f"{key}.jpg")
        ti.size = len(chip)
        tf.addfile(ti, io.BytesIO(chip))
    return path


def test_shards_of_one_name_from_several_folders_are_kept_apart(johns_dir, tmp_path, weights):
    from puface.io.shards import is_shard_input, plan_shards

    chip = sorted(johns_dir.glob("*/*.jpg"))[0].read_bytes()
    _tar(tmp_path / "a" / "data.tar", chip, "k0")
    _tar(tmp_path / "b" / "data.tar", chip, "k1")
    _tar(tmp_path / "b" / "more.tar", chip, "k2")
    for spec, want in ((f"{{{tmp_path}/a,{tmp_path}/b}}/data.tar", ["a/data.tar", "b/data.tar"]),
                       (f"{{{tmp_path}/a/data,{tmp_path}/b/more}}.tar", ["a/data.tar", "b/more.tar"]),
                       (f"{tmp_path}/b/*.tar", ["data.tar", "more.tar"])):
        jobs = plan_shards(spec, tmp_path / "out")
        assert sorted(j.dst.relative_to(tmp_path / "out").as_posix() for j in jobs) == want, spec
    out = tmp_path / "out"
    assert main(_purify(f"{{{tmp_path}/a,{tmp_path}/b}}/data.tar", out, "--weights", weights)) == 0
    assert (out / "a" / "data.tar").is_file() and (out / "b" / "data.tar").is_file()
    assert is_shard_input(f"{tmp_path}/a/data.{{tar,parquet}}")
    assert not is_shard_input(f"{tmp_path}/a/*.{{tar,jpg}}")


def test_a_killed_shard_writers_partial_file_is_removed(johns_dir, tmp_path, weights):
    chip = sorted(johns_dir.glob("*/*.jpg"))[0].read_bytes()
    src = _tar(tmp_path / "in" / "data.tar", chip, "k0")
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".data.tar.{dead.pid}.tmp"
    stale.write_bytes(b"half a shard")
    assert main(_purify(src.parent, out, "--weights", weights)) == 0
    assert (out / "data.tar").is_file() and not stale.exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    from puface import cli as cli_module

    def abort(**kw):
        raise click.exceptions.Abort()

    monkeypatch.setattr(cli_module.cli, "main", abort)
    assert cli_module.main(["purify"]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err



def test_a_job_into_the_output_folder_of_another_job_is_refused(johns_dir, tmp_path, weights, capsys):
    """`cloak --format same` into a `purify` output folder: a resume took the purified images of the same names for
    cloaks already done (reported "3 already done"), a redo overwrote them; both are refused, the images kept."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    assert main(_purify(src, out, "--weights", weights)) == 0
    purified = {p: p.read_bytes() for p in out.rglob("*.jpg")}
    capsys.readouterr()
    for extra in ([], ["--no-resume"]):
        assert main(_cloak("--format", "same", *extra, src, out)) == 2
        err = capsys.readouterr().err
        assert "holds the outputs of `puface purify` (purify_config.json)" in err and "another output folder" in err
    assert {p: p.read_bytes() for p in out.rglob("*.jpg")} == purified
    assert not (out / "cloak_config.json").exists()


def _cloak(*args) -> list[str]:
    return ["cloak", "--surrogate", "dlib-resnet29", "--no-progress", "--device", "cpu", *map(str, args)]


def _stats(out: Path) -> list[dict]:
    import csv

    with open(out / "cloak_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cloak_redone_or_resumed_keeps_one_stats_row_per_image(johns_dir, tmp_path, capsys):
    """--no-resume with other settings starts the stats afresh (the new columns too); a group attack whose
    identity holds an unreadable photo is done once its readable photos are cloaked, not redone on every run."""
    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    fast = ["--mode", "custom", "--th", "0.01", "--steps", "1", "--lr", "20"]
    assert main(_cloak(*fast, src, out)) == 0
    assert main(_cloak(*fast, "--steps", "2", "--surrogate", "sface", "--no-resume", src, out)) == 0
    rows = _stats(out)
    assert sorted(r["file"] for r in rows) == ["id0/0.jpg", "id0/1.jpg", "id1/0.jpg", "id1/1.jpg"]
    assert all(r.get("shift_sface") not in (None, "") for r in rows)

    (src / "id1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    group = tmp_path / "group"
    assert main(_cloak("--attack", "opom", "--steps", "1", src, group)) == 1
    capsys.readouterr()
    assert main(_cloak("--attack", "opom", "--steps", "1", src, group)) == 1  # the broken photo is listed again
    cap = capsys.readouterr()
    assert "0 cloaked, 4 already done" in cap.out and "broken.jpg" in cap.out
    assert sorted(r["file"] for r in _stats(group)) == ["id0/0.jpg", "id0/1.jpg", "id1/0.jpg", "id1/1.jpg"]


def test_a_cloak_folder_records_its_reference_and_is_read_by_its_recorded_names(johns_dir, tmp_path, capsys):
    """A resume against another --reference is refused (the outputs were optimised against the first); a redo in
    another format leaves the old files, and `--cloaked` readers take the recorded name."""
    from puface.attacks.folder import FolderCloaks

    src, out = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out"
    ref_a, ref_b = _tree(johns_dir, tmp_path / "ref_a", 8), _tree(johns_dir, tmp_path / "ref_b", 12)
    fast = ["--attack", "unlearnable", "--steps", "1", "--epsilon", "4"]
    assert main(_cloak(*fast, "--reference", ref_a, src, out)) == 0
    assert json.loads((out / "cloak_config.json").read_text())["reference"] == str(ref_a.resolve())
    capsys.readouterr()
    assert main(_cloak(*fast, "--reference", ref_b, src, out)) == 2
    assert "differs in: reference" in capsys.readouterr().err

    plain = tmp_path / "plain"
    fawkes = ["--mode", "custom", "--th", "0.01", "--steps", "1", "--lr", "20"]
    assert main(_cloak(*fawkes, "--format", "same", src, plain)) == 0
    assert main(_cloak(*fawkes, "--no-resume", src, plain)) == 0  # now PNG: the .jpg files stay beside them
    assert (plain / "id0" / "0.jpg").is_file() and (plain / "id0" / "0.png").is_file()
    found = FolderCloaks(plain).find(src / "id0" / "0.jpg", src)
    assert found == plain / "id0" / "0.png"


def test_a_slow_jobs_summary_gives_seconds_per_image():
    """23 LowKey cloaks in 2010 s were summed up as '(2009.6 s, 0.0 images/s)'; a job slower than an image a second
    now says seconds per image, a faster one images per second as before."""
    from puface.io.jobs import JobReport

    assert JobReport(total=23, written=23, seconds=2009.6).summary("cloaked").endswith("(2009.6 s, 87.4 s/image)")
    assert JobReport(total=40, written=40, seconds=8.0).summary().endswith("(8.0 s, 5.0 images/s)")
    assert JobReport(total=3, resumed=3, seconds=0.5).summary().endswith("(0.5 s, 0.0 images/s)")  # nothing written


def _clashing_tree(johns_dir: Path, root: Path) -> Path:
    """id0/a.jpg and id0/a.png (both a.png as cloaks), a folder sorted between them (id0/a.k/), other files around."""
    chip = sorted(johns_dir.glob("*/*.jpg"))[0]
    for rel in ("id0/0.jpg", "id0/a.jpg", "id0/a.k/a.jpg", "id0/a.k/b.jpg", "id0/a.png", "id0/b.jpg", "id1/a.png",
                "id1/a/a.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(chip, root / rel)
    return root


def test_a_ranks_cloak_plan_refuses_two_inputs_of_one_output_as_the_files_stream_past(johns_dir, tmp_path):
    """`cloak` with --rank planned the whole tree in every process (200,000 files, rank 0 of 4: 424 MB and 8 s CPU
    against purify's streamed plan, 77 MB and 2 s), because its check that no two inputs get one output name needed
    every name. The check now streams (`plan_mirror(clash=)`, `unique_outputs`: the names of the folders the walk is
    in, a folder's files interleaved with its sub-folders), so a rank holds its share alone, and still refuses a
    clash whichever ranks' files meet; files of one name in other folders never clash."""
    from puface.attacks.folder import output_namer
    from puface.utils.errors import PufaceError

    src, out = _clashing_tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    rename = output_namer("fawkes")
    for rank, world_size in ((0, 1), (0, 2), (1, 2), (2, 3)):
        with pytest.raises(PufaceError) as e:
            plan_mirror(src, out, rename=rename, rank=rank, world_size=world_size, clash="rename one")
        assert str(e.value) == f"{src / 'id0/a.jpg'} and {src / 'id0/a.png'} would both be written to " \
                               f"{out / 'id0/a.png'}; rename one"
    (src / "id0/a.png").unlink()
    whole = plan_mirror(src, out, rename=rename, clash="rename one")
    assert [j.rel.as_posix() for j in whole] == ["id0/0.jpg", "id0/a.jpg", "id0/a.k/a.jpg", "id0/a.k/b.jpg",
                                                 "id0/b.jpg", "id1/a/a.jpg", "id1/a.png"]
    for rank in (0, 1, 2):
        assert plan_mirror(src, out, rename=rename, rank=rank, world_size=3, clash="x") == whole[rank::3]
    assert not out.exists()


def _case_tree(johns_dir: Path, root: Path) -> Path:
    """id0/x.JPG and id0/x.jpg, id0/Y.jpg and id0/y.png (one output name in letter case as cloaks: Y.png / y.png),
    folders id1/ and ID1/ (each with a.jpg), and files of other names around."""
    chip = sorted(johns_dir.glob("*/*.jpg"))[0]
    for rel in ("id0/x.JPG", "id0/x.jpg", "id0/Y.jpg", "id0/y.png", "id0/z.jpg", "ID1/a.jpg", "id1/a.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(chip, root / rel)
    return root


def test_plan_refuses_outputs_of_one_name_but_for_letter_case_on_a_disk_that_ignores_case(johns_dir, tmp_path,
                                                                                            monkeypatch):
    """A/x.JPG and A/x.jpg are two outputs on Linux but one on a disk that ignores case (macOS, Windows, exFAT):
    the second overwrote the first there, or was skipped as done. Where the output folder's disk ignores case the
    plan refuses them (purify's names, cloak's renamed ones, folders too), one line naming both inputs."""
    from puface.attacks.folder import output_namer
    from puface.utils.errors import PufaceError

    monkeypatch.setattr("puface.io.jobs.is_case_insensitive", lambda folder: True, raising=False)
    src, out = _case_tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    with pytest.raises(PufaceError) as e:
        plan_mirror(src, out)
    assert str(e.value) == (f"{src / 'id0/x.JPG'} and {src / 'id0/x.jpg'} would both be written to "
                            f"{out / 'id0/x.jpg'}: their output names differ only in letter case, and the output "
                            "folder's disk ignores case; rename one")
    (src / "id0/x.JPG").unlink()
    with pytest.raises(PufaceError) as e:
        plan_mirror(src, out)
    assert str(e.value).startswith(f"{src / 'ID1/a.jpg'} and {src / 'id1/a.jpg'} would both be written to "
                                   f"{out / 'id1'}: their output folders differ only in letter case")
    shutil.rmtree(src / "ID1")
    assert len(plan_mirror(src, out)) == 5  # Y.jpg and y.png: two names as they are
    for rank in (0, 1):  # any process's files
        with pytest.raises(PufaceError) as e:
            plan_mirror(src, out, rename=output_namer("fawkes"), rank=rank, world_size=2, clash="rename one, or x")
        assert str(e.value).startswith(f"{src / 'id0/Y.jpg'} and {src / 'id0/y.png'} would both be written to "
                                       f"{out / 'id0/y.png'}: ")
        assert str(e.value).endswith("; rename one, or x")
    assert not out.exists()


def test_plan_warns_once_of_outputs_of_one_name_but_for_letter_case_on_a_disk_that_keeps_case(johns_dir, tmp_path,
                                                                                               caplog):
    """On a disk that keeps case (Linux's) such outputs are distinct, as their inputs are, so the plan keeps them all
    and logs one warning with their count and the first pair (copied to a disk that ignores case, one of each pair
    would be lost)."""
    src, out = _case_tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    with caplog.at_level("WARNING", logger="puface.io.jobs"):
        jobs = plan_mirror(src, out)
    assert len(jobs) == 7
    warnings = [r.getMessage() for r in caplog.records if r.name == "puface.io.jobs"]
    assert warnings == [f"warning: 2 output paths differ from another only in letter case (the first: "
                        f"{src / 'id0/x.JPG'} and {src / 'id0/x.jpg'} (their output names differ only in letter "
                        "case)): a disk that ignores case (macOS, Windows, exFAT) would keep one of each; rename them "
                        "before copying the outputs there"]
    caplog.clear()
    shutil.rmtree(src / "ID1")
    (src / "id0/x.JPG").unlink()
    with caplog.at_level("WARNING", logger="puface.io.jobs"):
        plan_mirror(src, out)
    assert not [r for r in caplog.records if r.name == "puface.io.jobs"]


def test_is_case_insensitive_looks_up_a_name_with_its_case_swapped(tmp_path):
    """False on a disk that keeps case, for a folder and for one not made yet; True where the swapped name is the
    same folder (imitated here by a link, as no disk here ignores case)."""
    from puface.io.files import is_case_insensitive

    (tmp_path / "abc").mkdir()
    assert is_case_insensitive(tmp_path / "abc") is False
    assert is_case_insensitive(tmp_path / "abc" / "not" / "yet") is False
    (tmp_path / "ABC").symlink_to("abc")
    assert is_case_insensitive(tmp_path / "abc" / "new") is True
    (tmp_path / "123").mkdir()
    assert is_case_insensitive(tmp_path / "123") is is_case_insensitive(tmp_path)  # no letter: the folder above


def test_cloak_with_ranks_refuses_two_inputs_of_one_output_before_writing(johns_dir, tmp_path, capsys):
    """The same through the CLI: rank 1 of 2, whose share holds neither file, is refused in one line naming both."""
    src, out = _clashing_tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    assert main(_cloak(src, out, "--rank", 1, "--world-size", 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"{src / 'id0/a.jpg'} and {src / 'id0/a.png'} would both be written to "
                            f"{out / 'id0/a.png'}; rename one, or use --format same")
    assert not out.exists()


def test_an_output_sub_folder_linked_outside_the_output_folder_is_not_written_through(johns_dir, tmp_path, weights,
                                                                                       capsys):
    """OUT/id1 -> /elsewhere: its files fail, one line each (the run goes on with the others; it wrote them into
    /elsewhere before); a link that stays inside OUT, and OUT itself a link, are written through as before."""
    src, out, elsewhere = _tree(johns_dir, tmp_path / "in", 0), tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "real0").mkdir(parents=True)
    (out / "id1").symlink_to(elsewhere, target_is_directory=True)
    (out / "id0").symlink_to(out / "real0", target_is_directory=True)  # inside OUT: fine
    said: list[str] = []
    rep = run_folder_job(plan_mirror(src, out), _identity, batch_size=4, progress=False, log=said.append)
    assert rep.written == 2 and len(rep.failed) == 2
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (out / "real0").iterdir()) == ["0.jpg", "1.jpg"]
    for p, why in rep.failed:
        assert p.parent.name == "id1" and "leads outside the output folder" in why and str(elsewhere) in why
    assert len([m for m in said if m.startswith("error:")]) == 2
    # the command: exit 1, one error line per file, nothing in /elsewhere (also below a folder not made yet there)
    shutil.rmtree(src / "id0")
    (src / "id1" / "deeper").mkdir()
    shutil.copy(src / "id1" / "0.jpg", src / "id1" / "deeper" / "2.jpg")
    linked_root = tmp_path / "linked_out"
    linked_root.symlink_to(out, target_is_directory=True)  # OUT a link the user names: written through
    assert main(_purify(src, linked_root, "--weights", weights, "--no-resume")) == 1
    err = capsys.readouterr().err
    assert err.count("leads outside the output folder") == 3
    assert list(elsewhere.iterdir()) == []
