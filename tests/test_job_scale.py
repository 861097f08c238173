"""What a folder or shard job costs per file, apart from the network: the start-up (listing, planning), the loop's
bookkeeping and a resume must grow linearly with the data set, without a `stat` storm or state kept per finished
image. Costs are counted (system calls, lookups, live objects) on small trees, not timed; the measured curves on
trees of 10,000 to 1,000,000 files are in docs/RESULTS.md section 16.5."""

from __future__ import annotations

import csv
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import puface.io.jobs as jobs_module
from puface.io.files import list_image_files
from puface.io.images import same_file
from puface.io.jobs import FileJob, LoadedImage, Outcome, plan_mirror, run_folder_job
from puface.io.shards import is_shard_input
from puface.utils.errors import PufaceError


def _names_tree(root: Path, folders: int = 3, per: int = 40) -> int:
    """`folders` identity folders (one nested two deep) of `per` empty .jpg files each; the number of files. Listing
    and planning look at names only, so the files need no content."""
    for i in range(folders):
        d = root / f"id{i}" / ("a/b" if i == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per):
            (d / f"{k:03d}.jpg").write_bytes(b"")
        (d / "notes.txt").write_bytes(b"")
    return folders * per


@pytest.fixture()
def count_stats(monkeypatch):
    """Counts `os.stat` and `os.lstat` calls (pathlib's `is_dir`, `exists`, `resolve` go through them)."""
    calls = {"stat": 0, "lstat": 0}
    real = {"stat": os.stat, "lstat": os.lstat}

    def counting(name):
        def call(*a, **k):
            calls[name] += 1
            return real[name](*a, **k)
        return call

    monkeypatch.setattr(os, "stat", counting("stat"))
    monkeypatch.setattr(os, "lstat", counting("lstat"))
    calls["reset"] = lambda: calls.update(stat=0, lstat=0)  # type: ignore[assignment]
    return calls


def test_listing_a_tree_stats_each_folder_not_each_file(tmp_path, count_stats):
    """The folder listing gives each entry's type: 120 images in 5 folders took 2 stats per file (is_dir, is_file)."""
    n = _names_tree(tmp_path / "in")
    count_stats["reset"]()
    files = list_image_files(tmp_path / "in", unsupported=True)
    assert len(files) == n and files == sorted(files)
    assert count_stats["stat"] + count_stats["lstat"] <= 10  # one per folder (the loop check), not per file


def test_listing_keeps_links_hidden_entries_broken_links_and_loops(tmp_path):
    """Same answers as before the listing used the folder's entry types."""
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"")
    (root / "a" / ".hidden.jpg").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "y.jpg").write_bytes(b"")
    (root / "a" / "anim.gif").write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    (other / "z.png").write_bytes(b"")
    (root / "linked").symlink_to(other)  # a link to a folder is followed
    (root / "a" / "loop").symlink_to(root / "a")  # a folder loop: skipped
    (root / "a" / "l.jpg").symlink_to(other / "z.png")  # a link to an image
    (root / "a" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # a broken link
    (root / "a" / "self.jpg").symlink_to(root / "a" / "self.jpg")  # a link loop
    rel = lambda fs: sorted(p.relative_to(root).as_posix() for p in fs)  # noqa: E731
    assert rel(list_image_files(root)) == ["a/l.jpg", "a/x.jpg", "linked/z.png"]
    assert rel(list_image_files(root, unsupported=True)) == ["a/anim.gif", "a/gone.jpg", "a/l.jpg", "a/self.jpg",
                                                             "a/x.jpg", "linked/z.png"]
    assert rel(list_image_files(root, exclude=[other])) == ["a/l.jpg", "a/x.jpg"]


def test_planning_a_job_stats_each_file_once_or_twice(tmp_path, count_stats):
    """The check that no output is an input (`same_file`) resolved both paths of every file when the output did not
    exist yet: an lstat per folder of each path, some 20 system calls per file on a fresh job."""
    n = _names_tree(tmp_path / "in")
    count_stats["reset"]()
    jobs = plan_mirror(tmp_path / "in", tmp_path / "out")
    assert len(jobs) == n
    assert (
        count_stats["stat"] + count_stats["lstat"] <= 2 * n + 60
    )  # the output's stat and the input's (and the folder checks)


def test_same_file_answers(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"1")
    b.write_bytes(b"1")
    os.link(a, tmp_path / "hard.jpg")
    (tmp_path / "soft.jpg").symlink_to(a)
    (tmp_path / "d").mkdir()
    assert same_file(a, a) and same_file(a, tmp_path / "hard.jpg") and same_file(tmp_path / "soft.jpg", a)
    assert not same_file(a, b) and not same_file(a, tmp_path / "missing.jpg")
    assert not same_file(tmp_path / "missing.jpg", a)
    assert same_file(tmp_path / "missing.jpg", tmp_path / "d" / ".." / "missing.jpg")  # neither exists: paths compared
    assert not same_file(tmp_path / "missing.jpg", tmp_path / "other.jpg")
    assert not same_file(a / "below.jpg", b)  # below a file


def test_an_image_folder_is_told_from_shards_without_a_stat_per_image(tmp_path, count_stats):
    """`puface purify` asks whether its input is shards: it stat'ed every file of an image folder."""
    _names_tree(tmp_path / "in")
    count_stats["reset"]()
    assert not is_shard_input(tmp_path / "in")
    assert count_stats["stat"] + count_stats["lstat"] <= 10
    (tmp_path / "in" / "id1" / "x.tar").mkdir()  # a folder of a shard's name is no shard
    assert not is_shard_input(tmp_path / "in")
    (tmp_path / "sh" / "deep").mkdir(parents=True)
    (tmp_path / "sh" / "deep" / "d.TAR").write_bytes(b"")
    assert is_shard_input(tmp_path / "sh")


def test_a_folder_job_lets_go_of_finished_writes(tmp_path, monkeypatch):
    """The job kept the future of every write it submitted until it ended, about 1.7 kB each: 1.7 GB per million
    images. Now those done are let go as it goes: the live ones stay a few batches' worth however many images."""
    live: weakref.WeakSet = weakref.WeakSet()

    class Tracking(ThreadPoolExecutor):
        def submit(self, *a, **k):
            f = super().submit(*a, **k)
            live.add(f)
            return f

    monkeypatch.setattr(jobs_module, "ThreadPoolExecutor", Tracking)
    monkeypatch.setattr(
        jobs_module, "load_for_job", lambda job, data=None: LoadedImage(job, np.zeros((2, 2, 3), np.uint8))
    )
    n, seen = 200, []

    def process(items):
        seen.append(len(live))
        return [Outcome.record(score=1.0) for _ in items]

    jobs = [FileJob(tmp_path / f"{i}.jpg", tmp_path / f"{i}.jpg", Path(f"{i}.jpg")) for i in range(n)]
    rep = run_folder_job(jobs, process, batch_size=2, resume=False, progress=False, io_workers=2,
                         stats_csv=tmp_path / "rows.csv", stats_key="path", stats_status=False)
    assert rep.written == n and len(list(csv.reader(open(tmp_path / "rows.csv")))) == n + 1
    assert max(seen) <= 30, max(seen)  # was n - 2 at the last batch


def test_a_shard_resume_looks_each_row_up_once_per_colon(tmp_path):
    """A resume drops the stats rows of the shards it redoes: each row was compared with every such shard's name
    (a million rows over thousands of shards: billions of comparisons); now each prefix ending at a colon is looked
    up in a set."""
    from puface.io.shards import shard_of

    class Counting(set):
        lookups = 0

        def __contains__(self, x):
            Counting.lookups += 1
            return super().__contains__(x)

    redo = Counting(f"data/shard-{i:05d}.tar" for i in range(0, 2000, 2))
    redo.add("c:/odd:name.tar")
    rows = [f"data/shard-{i:05d}.tar:{k:06d}" for i in range(100) for k in range(10)]
    found = [shard_of(r, redo) for r in rows]
    assert Counting.lookups == len(rows)  # one colon per label: one lookup, whatever the number of shards
    assert found == [f"data/shard-{i:05d}.tar" if i % 2 == 0 else None for i in range(100) for _ in range(10)]
    assert shard_of("c:/odd:name.tar:key:with:colons", redo) == "c:/odd:name.tar"
    assert shard_of("data/shard-00002.tar.bak:k", redo) is None


def test_stale_shard_temporaries_are_found_with_one_listing_per_folder(tmp_path, monkeypatch):
    """A killed writer's `.NAME.PID.tmp` is removed: the output folder was listed (globbed) once per shard written, so
    a folder of 10,000 shards was read 10,000 times; now once."""
    import subprocess
    import tarfile

    pytest.importorskip("webdataset")
    from puface.io.shards import plan_shards, run_shard_job

    (tmp_path / "in").mkdir()
    for i in range(30):
        tarfile.open(tmp_path / "in" / f"s{i:03d}.tar", "w").close()  # shards without records: no image to process
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".s007.tar.{dead.pid}.tmp"
    other = out / f".x.tar.{dead.pid}.tmp"  # not an output of this job
    for p in (stale, other):
        p.write_bytes(b"half")
    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (listed.append(Path(p)), real(p))[1])
    rep = run_shard_job(plan_shards(tmp_path / "in", out), lambda items: [], progress=False)
    assert rep.shards_written == 30 and (out / "s029.tar").is_file()
    assert listed.count(out) == 1
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("job", ["detect", "purify-report"])
def test_a_detection_resume_holds_no_earlier_rows_while_it_scores(job, tmp_path, johns_dir, monkeypatch):
    """A resume read the earlier run's rows (~0.75 kB each) and kept them all through the job, besides reading them
    again at the end: now it keeps their paths alone."""
    import gc
    import shutil

    import puface.detection.folder as det_folder
    from puface.detection import load_detector

    (tmp_path / "in" / "a").mkdir(parents=True)
    shutil.copy(sorted(johns_dir.glob("*/*.jpg"))[0], tmp_path / "in" / "a" / "new.jpg")
    det = load_detector()
    status = ["status"] if job == "purify-report" else []
    fields = ["path", *status, "score", "cloaked", *det_folder.feature_columns(det), "storage", "note"]
    scores = tmp_path / "out" / "detection.csv"
    scores.parent.mkdir()
    with open(scores, "w", newline="") as f:  # rows of files gone from the input since: kept until the end drops them
        w = csv.DictWriter(f, fieldnames=fields, restval="0", extrasaction="ignore")
        w.writeheader()
        w.writerows({"path": f"gone/{i}.jpg", "status": "ok", "storage": "", "note": ""} for i in range(300))
    held = []
    real = det_folder._chip_features

    def counting(*a, **k):
        held.append(sum(1 for o in gc.get_objects() if type(o) is list and o and type(o[0]) is dict
                        and str(o[0].get("path", "")).startswith("gone/")))
        return real(*a, **k)

    monkeypatch.setattr(det_folder, "_chip_features", counting)
    if job == "detect":
        rep = det_folder.detect_folder(tmp_path / "in", scores, detector=det, device="cpu", progress=False)
    else:
        rep = det_folder.purify_folder_detected(tmp_path / "in", tmp_path / "out", skip_cloaked=False, detector=det,
                                                device="cpu", progress=False)
    assert held == [0]
    assert rep.gone == 300 and rep.scored == 1 and [r["path"] for r in rep.rows] == ["a/new.jpg"]


def test_a_rank_plans_only_its_own_share(tmp_path, monkeypatch):
    """With --rank/--world-size every process listed and planned the whole tree (three paths per file, ~0.7 kB: a
    million files took ~1 GB in each process) and then kept every world-size-th job. Now a rank makes only its own
    jobs, the same share as before (`shard` of the whole plan: outputs and CSVs of earlier runs resume as they were),
    and `detect`'s jobs likewise; the paths of every file are still known where the job needs them (`names`)."""
    import puface.detection.folder as det_folder
    from puface.io.jobs import shard

    n = _names_tree(tmp_path / "in")
    whole = plan_mirror(tmp_path / "in", tmp_path / "out")
    made = []
    real = jobs_module.FileJob

    def counting(*a, **k):
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(jobs_module, "FileJob", counting)
    monkeypatch.setattr(det_folder, "FileJob", counting)
    shares = []
    for rank in range(4):
        made.clear()
        names: set[str] = set()
        mine = plan_mirror(tmp_path / "in", tmp_path / "out", rank=rank, world_size=4, names=names)
        assert mine == shard(whole, rank, 4) and len(made) == n // 4
        assert names == {j.rel.as_posix() for j in whole}
        made.clear()
        names = set()
        detect_jobs = det_folder._jobs(tmp_path / "in", rank, 4, names)
        assert [j.rel for j in detect_jobs] == [j.rel for j in mine] and len(made) == n // 4
        assert names == {j.rel.as_posix() for j in whole}
        shares.append(mine)
    assert sorted(j.rel for s in shares for j in s) == sorted(j.rel for j in whole)
    with pytest.raises(PufaceError, match="no images found"):
        (tmp_path / "empty").mkdir()
        plan_mirror(tmp_path / "empty", tmp_path / "out", rank=1, world_size=4)


def test_the_streamed_listing_is_the_sorted_one(tmp_path):
    """`iter_image_files` gives the files in the order of the sorted listing (a rank's share is taken from it as it
    comes): sub-folders' files where the folder's name falls among its files, names that share a prefix."""
    from puface.io.files import iter_image_files

    root = tmp_path / "in"
    for rel in ("a/x.jpg", "a b/y.jpg", "a.jpg", "a-b.png", "a0/z.jpg", "A/w.jpg", "b.jpg", "a/c/d.jpg", "a/e.jpg",
                "ab/f.jpg", "a.d/g.jpg", "é/h.jpg", "z/.hidden.jpg", "z/n.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    streamed = list(iter_image_files(root))
    assert streamed == sorted(streamed) and len(streamed) == 12
    assert list_image_files(root) == streamed


def test_the_end_of_a_detection_job_holds_no_rows(tmp_path):
    """The end of `detect` (and `purify --skip-cloaked/--report`) read every row of the scores CSV as a dict and kept
    them in the report (`DetectReport.rows`, ~1.4 kB each: 1.4 GB at a million images); now the rows stream past
    and are counted, the file is rewritten from a second read, and `rows` reads the file when asked. Same files."""
    import random
    import tracemalloc
    from types import SimpleNamespace

    from puface.detection.folder import Thresholds, _finish, summarise_identities
    from puface.io.jobs import JobReport

    rnd = random.Random(0)
    fields = ["path", "score", "cloaked", "psnr", "shift_dlib-resnet29", "net", "storage", "note"]
    scores = tmp_path / "scores.csv"
    n = 10_000
    with open(scores, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for i in range(n):  # a decision of an earlier threshold (0.9): rewritten at this one (1.0)
            s = rnd.uniform(0.5, 1.5)
            w.writerow([f"id{i % 37:03d}/img_{i:06d}.jpg", f"{s:.9g}", int(s > 0.9), "41.5", "0.01", "0.2",
                        "jpeg:quality=93,subsampling=4:2:0", ""])
        w.writerow(["id000/cut.jpg", "1.2"])  # a row cut by a kill: dropped
    (tmp_path / "in").mkdir()
    det = SimpleNamespace(threshold=lambda fpr=None, storage="": 1.0)
    tracemalloc.start()
    rep = _finish(scores, fields, Thresholds(det, 0.01), 0.01, JobReport(), tmp_path / "in", None, "stub")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 300 * n, peak / n  # ~1,000 bytes per row before
    rows = list(csv.DictReader(open(scores, newline="")))
    assert len(rows) == n and all(r["cloaked"] == str(int(float(r["score"]) > 1.0)) for r in rows)
    assert rep.scored == n and rep.flagged == sum(r["cloaked"] == "1" for r in rows) and rep.no_face == 0
    assert rep.rows == rows
    assert rep.identities == summarise_identities(rows, "in") and len(rep.identities) == 37
    idents = list(csv.DictReader(open(rep.identities_csv, newline="")))
    assert [r["identity"] for r in idents] == [i["identity"] for i in rep.identities]
    assert [float(r["mean_score"]) for r in idents] == [i["mean_score"] for i in rep.identities]


def test_every_multi_process_job_splits_by_one_rule(tmp_path, monkeypatch):
    """The rank share rule (every world_size-th item, starting at rank) was written four times (`shard`, the stream
    `_share`, `i % world_size == rank` in detect's jobs, `jobs[rank::world_size]` in purify_shards); now `io.jobs.share`
    is its one home. Each job's share is the earlier formula's, item for item, for world sizes 1 to 5: the files of
    plan_mirror and detect (a resumed output or scores CSV keeps its rank's files), and purify_shards' shards."""
    import tarfile

    import puface.detection.folder as det_folder
    import puface.io.shards as shards_module
    import puface.purifier.folder as pur_folder
    from puface.io.jobs import share, shard

    n = _names_tree(tmp_path / "in", folders=3, per=7)
    whole = plan_mirror(tmp_path / "in", tmp_path / "out")
    (tmp_path / "sh").mkdir()
    for k in range(7):
        with tarfile.open(tmp_path / "sh" / f"{k:03d}.tar", "w"):
            pass
    taken: list = []

    def fake_run(jobs, *a, **k):
        taken.append(list(jobs))
        raise RuntimeError("stop")

    monkeypatch.setattr(shards_module, "run_shard_job", fake_run)
    monkeypatch.setattr(pur_folder, "ray_batch_process", lambda *a, **k: None)
    all_shards = shards_module.plan_shards(tmp_path / "sh", tmp_path / "sh-out")
    assert len(all_shards) == 7
    for w in range(1, 6):
        parts = []
        for r in range(w):
            old = [j for i, j in enumerate(whole) if i % w == r]
            assert old == whole[r::w] == shard(whole, r, w) == list(share(iter(whole), r, w))
            names: set[str] = set()
            assert plan_mirror(tmp_path / "in", tmp_path / "out", rank=r, world_size=w, names=names) == old
            assert names == {j.rel.as_posix() for j in whole}
            names = set()
            assert [j.rel for j in det_folder._jobs(tmp_path / "in", r, w, names)] == [j.rel for j in old]
            assert names == {j.rel.as_posix() for j in whole}
            parts.append(old)
            taken.clear()
            with pytest.raises(RuntimeError, match="stop"):
                pur_folder.purify_shards(tmp_path / "sh", tmp_path / f"sh-out{w}", rank=r, world_size=w,
                                         device="cpu", progress=False)
            assert [j.src.name for j in taken[0]] == [j.src.name for j in all_shards[r::w]]
        assert sorted(j.rel for p in parts for j in p) == sorted(j.rel for j in whole) and len(whole) == n
    one: set[str] = set()
    f = whole[3].src
    assert [j.rel for j in det_folder._jobs(f, 0, 1, one)] == [Path(f.name)] and one == {f.name}
