"""Folder jobs under kills, restarts and several processes on one output folder: a resume after a kill leaves
every output with its CSV row, once."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from puface.cli import main

from purifier_support import visible_purifier_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small purifier that visibly changes images (random non-zero weights)."""
    return visible_purifier_file(tmp_path_factory.mktemp("w") / "p.pt")


def _tree(johns_dir: Path, root: Path, n: int = 4) -> Path:
    for k, p in enumerate(sorted(johns_dir.glob("*/*.jpg"))[:n]):
        (root / f"id{k // 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / f"id{k // 2}" / f"{k % 2}.jpg")
    return root


def _purify(*args) -> list[str]:
    return ["purify", *map(str, args), "--no-progress", "--device", "cpu"]


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.jpg"))}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_written_before_a_kill_get_their_rows_on_resume(johns_dir, tmp_path, weights, capsys):
    """A job adds a batch's rows once all its outputs are in place, so a kill -9 in between leaves outputs
    without rows (with the local engine, typically the last batch's: its rows wait for the next batch). The
    resume redoes those images (the same bytes) and writes their rows: one row per image, none lost."""
    src = _tree(johns_dir, tmp_path / "in")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_purify(src, ref, "--weights", weights, "--stats", ref / "stats.csv")) == 0
    assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv", "--batch-size", "2")) == 0
    lines = (out / "stats.csv").read_text().splitlines(keepends=True)
    (out / "stats.csv").write_text("".join(lines[:3]))  # what the kill left: 4 outputs, the first batch's 2 rows
    capsys.readouterr()
    assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv", "--batch-size", "2")) == 0
    assert "2 purified, 2 already done" in capsys.readouterr().out
    assert _outputs(out) == _outputs(ref)
    assert sorted(_rows(out / "stats.csv"), key=str) == sorted(_rows(ref / "stats.csv"), key=str)


def test_a_group_cloaked_before_a_kill_gets_its_rows_on_resume(johns_dir, tmp_path, capsys):
    """A group attack (OPOM) writes an identity's rows after all its cloaks: a kill in between left the group's
    cloaks without rows, and the resume took the group for done. It is redone (the same bytes) with its rows."""
    src, out = _tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    cloak = ["cloak", "--attack", "opom", "--steps", "1", "--surrogate", "dlib-resnet29", "--no-progress",
             "--device", "cpu", src, out]
    assert main(list(map(str, cloak))) == 0
    cloaks = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}
    rows = _rows(out / "cloak_stats.csv")
    kept = [r for r in rows if not r["file"].startswith("id1/")]
    with open(out / "cloak_stats.csv", "w", newline="") as f:  # what the kill left: id1's cloaks, not its rows
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    capsys.readouterr()
    assert main(list(map(str, cloak))) == 0
    assert "2 cloaked, 2 already done" in capsys.readouterr().out
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")} == cloaks
    assert sorted(r["file"] for r in _rows(out / "cloak_stats.csv")) == [
        "id0/0.jpg",
        "id0/1.jpg",
        "id1/0.jpg",
        "id1/1.jpg",
    ]


#: Code that makes a process lock as an older puface did, and as systems without open-file-description locks do
_POSIX_LOCKS = "import puface.io.jobs; puface.io.jobs._OFD = False\n"


def _holder(out: Path, rank: int, world_size: int, posix: bool = False):
    """Another process that claims `out` as a job does (`claim_output`) and holds it until stopped; with `posix`, by
    POSIX record locks (`_POSIX_LOCKS`)."""
    import subprocess
    import sys

    code = (
        (_POSIX_LOCKS if posix else "")
        + "import sys, time; from pathlib import Path; from puface.io.jobs import claim_output; "
        f"release = claim_output(Path({str(out)!r}), {rank}, {world_size}); print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_on_one_output_folder_is_refused(johns_dir, tmp_path, weights, capsys):
    """Two runs started on one OUT by mistake both wrote every output and every stats row (44 rows for 34 images in
    a real run); the second is refused with a clear message, ranks of one job run side by side, one rank twice
    does not, and a killed holder leaves the folder free."""
    src, out = _tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    holder = _holder(out, 0, 1)
    try:
        assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv")) == 2
        assert "another puface process is writing into this folder" in capsys.readouterr().err
        assert not list(out.rglob("*.jpg")) and not (out / "stats.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    holder = _holder(out, 0, 2)
    try:
        assert main(_purify(src, out, "--weights", weights, "--rank", "0", "--world-size", "2")) == 2
        assert "as rank 0" in capsys.readouterr().err
        assert main(_purify(src, out, "--weights", weights)) == 2
        assert main(_purify(src, out, "--weights", weights, "--rank", "1", "--world-size", "2")) == 0
        assert len(list(out.rglob("*.jpg"))) == 2
    finally:
        holder.kill()
        holder.wait()
    assert main(_purify(src, out, "--weights", weights)) == 0  # killed -9: its claim went with it
    assert len(list(out.rglob("*.jpg"))) == 4
    assert not (out / ".puface.lock").exists()  # the last process removes it


def _claimed_elsewhere(out: Path, rank: int, world_size: int, posix: bool = False) -> str:
    """What a separate process gets when it claims `out` as `rank` of `world_size` (with `posix`, by POSIX record locks:
    `_POSIX_LOCKS`): "claimed" (then released) or the refusal's message."""
    import subprocess
    import sys

    code = (
        (_POSIX_LOCKS if posix else "")
        + "from pathlib import Path; from puface.io.jobs import claim_output\n"
        "from puface.utils.errors import PufaceError\n"
        f"try:\n    claim_output(Path({str(out)!r}), {rank}, {world_size})()\n    print('claimed')\n"
        "except PufaceError as e:\n    print(e)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.mark.parametrize("ofd", [True, False])
def test_one_output_claimed_twice_in_one_process_is_refused(tmp_path, monkeypatch, ofd):
    """The claim's locks (POSIX `lockf`) belong to the process: a second job on one output in the same process (two
    threads of a Python session, a notebook starting a job while one runs) was let in, the same rank twice and the
    whole folder twice alike, and both wrote every output. It is refused now with a one-line message (by the
    open-file-description locks, or where there are none by the process's record of its claims), and the folder
    stays claimed by the first until it ends: a separate process (locking the other way) is refused too."""
    import puface.io.jobs as jobs
    from puface.utils.errors import PufaceError

    if ofd and not jobs._ofd_locks(tmp_path):
        pytest.skip("no open-file-description locks here")
    monkeypatch.setattr(jobs, "_OFD", ofd)
    out = tmp_path / "out"
    for rank, world_size, refusal in ((0, 1, "into this folder;"), (1, 2, "into this folder as rank 1")):
        first = jobs.begin_settings(out / "purify_config.json", {"step": 1}, resume=True, kind="purifying", rank=rank,
                                    world_size=world_size)
        try:
            with pytest.raises(PufaceError, match="another puface job in this process is writing into this folder"):
                jobs.claim_output(out, rank, world_size)
            assert refusal in _claimed_elsewhere(out, rank, world_size, posix=ofd)  # the refusal let nothing go
        finally:
            first()
        assert not (out / ".puface.lock").exists()
        assert _claimed_elsewhere(out, rank, world_size) == "claimed"


def test_releasing_one_of_two_ranks_held_in_one_process_keeps_the_other(tmp_path):
    """Two ranks of one job claimed in one process: releasing one closed its lock file, and closing any descriptor
    of a file drops every POSIX lock the process holds on it, so the other rank's claim went silently and a separate
    process was let in as that rank. The other rank now stays claimed until it is released itself."""
    from puface.io.jobs import claim_output

    out = tmp_path / "out"
    zero, one = claim_output(out, 0, 2), claim_output(out, 1, 2)
    try:
        zero()
        assert "as rank 1" in _claimed_elsewhere(out, 1, 2)
        assert _claimed_elsewhere(out, 0, 2) == "claimed"
        assert (out / ".puface.lock").exists()  # the last one out removes it, not the first
    finally:
        one()
    assert not (out / ".puface.lock").exists()
    assert _claimed_elsewhere(out, 1, 2) == "claimed"


def test_two_ranks_starting_and_ending_in_two_threads_are_not_refused(tmp_path):
    """Two threads of one process claim and release rank 0 and rank 1 of one file in a loop, as two processes do in
    `test_a_rank_starting_as_another_ends_is_not_refused`: no start is refused and none waits. (A release that held
    this process's claims record while closing its file kept the other thread's claim waiting at the gate for its
    file's removal: about one start in a thousand waited 2 s and was refused.)"""
    import threading

    scores, got = tmp_path / "scores.csv", {}

    def loop(rank: int) -> None:
        got[rank] = _claim_rank1_in_a_loop(scores, 0.8, rank)

    threads = [threading.Thread(target=loop, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(starts > 200 and refused == [] for starts, refused in got.values()), got
    assert not scores.with_name(".scores.csv.lock").exists()


def test_without_open_file_description_locks_one_process_claims_an_output_once(tmp_path, monkeypatch):
    """Where the system has only POSIX locks (macOS), which cannot keep two claims of one process apart, a second
    claim of one output in the process is refused, another rank included (its release would drop the first's locks),
    with a one-line message; once the first is released, the output can be claimed again."""
    import puface.io.jobs as jobs
    from puface.utils.errors import PufaceError

    monkeypatch.setattr(jobs, "_OFD", False)
    out = tmp_path / "out"
    zero = jobs.claim_output(out, 0, 2)
    try:
        with pytest.raises(PufaceError, match="another puface job in this process .* cannot keep two claims of one "
                                              "process apart") as e:
            jobs.claim_output(out, 1, 2)
        assert "\n" not in str(e.value)
        assert "as rank 0" in _claimed_elsewhere(out, 0, 2)
    finally:
        zero()
    jobs.claim_output(out, 1, 2)()
    assert not (out / ".puface.lock").exists()


def test_the_lock_layout_is_checked_against_the_kernel(monkeypatch):
    """`struct flock` is packed by hand for open-file-description locks: the layout used is the kernel's here (on
    Linux, which has them), and a wrong one (packed without alignment, as a first guess might be) is caught by the
    check, so the claim falls back to POSIX locks instead of locking the wrong bytes."""
    import struct
    import sys

    import puface.io.jobs as jobs

    if not sys.platform.startswith("linux"):
        pytest.skip("open-file-description locks are Linux's")
    assert jobs._probe_ofd_locks()
    for layout in ("=hhqqi", "hhqiq", "hhllhh"):
        monkeypatch.setattr(jobs, "_FLOCK", struct.Struct(layout))
        assert not jobs._probe_ofd_locks(), layout


def test_the_lock_probe_runs_on_the_output_folders_file_system(tmp_path, monkeypatch):
    """Whether open-file-description locks work was probed once per process on a file in the system's temporary
    folder, and the claim then locked that way in the output folder, which may be a mount that locks otherwise (NFS,
    FUSE): there a second job of the process on the output would be let in. The probe now runs in the lock file's
    folder: where it fails there (here a probe that fails for the output folder only, as on such a mount), the claim
    locks by POSIX locks and refuses the second job from the process's record of its claims."""
    import sys
    import tempfile

    import puface.io.jobs as jobs
    from puface.utils.errors import PufaceError

    if not sys.platform.startswith("linux"):
        pytest.skip("open-file-description locks are Linux's")
    out, elsewhere = tmp_path / "out", tmp_path / "tmp"
    elsewhere.mkdir()
    real, asked = jobs._probe_ofd_locks, []

    def probe(folder=None):
        asked.append(folder)
        where = Path(folder if folder is not None else tempfile.gettempdir()).resolve()
        return False if where == out.resolve() else real(folder) if folder is not None else real()

    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    monkeypatch.setattr(jobs, "_probe_ofd_locks", probe)
    monkeypatch.setattr(jobs, "_OFD", None)
    monkeypatch.setattr(jobs, "_OFD_BY_DEVICE", {}, raising=False)
    first = jobs.claim_output(out)
    try:
        with pytest.raises(PufaceError, match="another puface job in this process .* cannot keep two claims of one "
                                              "process apart"):
            jobs.claim_output(out)
    finally:
        first()
    assert [Path(f).resolve() for f in asked] == [out.resolve()]
    assert list(out.iterdir()) == [] and list(elsewhere.iterdir()) == []


def test_the_lock_probe_runs_once_per_file_system(tmp_path, monkeypatch):
    """The probe's answer is kept per file system (st_dev): claims in two folders of one file system probe once, a
    claim on another file system (tmpfs) probes there, and the probe leaves no file behind."""
    import os
    import sys
    import tempfile

    import puface.io.jobs as jobs

    shm = Path("/dev/shm")
    if not sys.platform.startswith("linux") or not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    real, asked = jobs._probe_ofd_locks, []

    def probe(folder=None):
        asked.append(os.stat(folder if folder is not None else tempfile.gettempdir()).st_dev)
        return real(folder) if folder is not None else real()

    monkeypatch.setattr(jobs, "_probe_ofd_locks", probe)
    monkeypatch.setattr(jobs, "_OFD", None)
    monkeypatch.setattr(jobs, "_OFD_BY_DEVICE", {}, raising=False)
    with tempfile.TemporaryDirectory(dir=shm) as other:
        folders = [tmp_path / "a", tmp_path / "b", Path(other) / "c"]
        for folder in folders + folders:
            jobs.claim_output(folder, 1, 2)()
            assert list(folder.iterdir()) == []
        assert sorted(asked) == sorted({tmp_path.stat().st_dev, shm.stat().st_dev})
        assert jobs._ofd_locks(Path(other)) == jobs._ofd_locks(tmp_path) == real(str(tmp_path))


def test_a_failed_lock_probe_leaves_no_descriptor_and_no_file(tmp_path, monkeypatch):
    """The probe opens its temporary file twice: where the second open failed (EMFILE, a process at its limit of open
    files) the first descriptor stayed open for the life of the process. The probe now says False (POSIX locks) and
    leaves neither a descriptor nor its file in the temporary folder."""
    import errno
    import os
    import sys
    import tempfile

    import puface.io.jobs as jobs

    if not sys.platform.startswith("linux"):
        pytest.skip("counts /proc/self/fd")
    real_open = os.open

    def at_the_limit(path, flags, *a, **k):
        if flags == os.O_RDWR:  # the probe's second open (mkstemp's own adds O_CREAT | O_EXCL)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "open", at_the_limit)
    assert not jobs._probe_ofd_locks()
    monkeypatch.setattr(os, "open", real_open)
    assert set(os.listdir("/proc/self/fd")) <= before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("posix_holds", [True, False])
def test_claims_by_posix_and_open_file_description_locks_exclude_each_other(tmp_path, posix_holds):
    """A process claiming with open-file-description locks and one with POSIX record locks (an older puface, or a
    system without the former) share an output as two processes of one kind do: the same rank, a claim of the whole
    output beside a rank, and another world size are refused either way round, other ranks run side by side, and a
    rank asking which others run sees the other kind's."""
    import puface.io.jobs as jobs
    from puface.utils.errors import PufaceError

    if not jobs._ofd_locks(tmp_path):
        pytest.skip("no open-file-description locks here")
    out = tmp_path / "out"
    holder = _holder(out, 0, 2, posix=posix_holds)
    try:
        for rank, world_size, refusal in ((0, 2, "as rank 0"), (0, 1, "writing into this folder;"),
                                          (1, 3, "another --world-size")):
            assert refusal in _claimed_elsewhere(out, rank, world_size, posix=not posix_holds)
            if not posix_holds:
                with pytest.raises(PufaceError, match=refusal):
                    jobs.claim_output(out, rank, world_size)
        assert _claimed_elsewhere(out, 1, 2, posix=not posix_holds) == "claimed"
        mine = jobs.claim_output(out, 1, 2)
        assert mine.others_running() == 1
        mine()
    finally:
        holder.kill()
        holder.wait()


def test_a_forked_child_does_not_keep_its_parents_claim(tmp_path):
    """An open-file-description lock goes with the last descriptor of its open file, and a forked child (a data
    loader's worker, multiprocessing) holds a copy of the parent's: killed -9, the parent's claim would have stayed
    while the child lived (POSIX locks never pass to a child). The child closes its copy at the fork."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import os, time; from pathlib import Path; from puface.io.jobs import claim_output\n"
        f"c = claim_output(Path({str(out)!r}))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    time.sleep(60); os._exit(0)\n"
        "print(pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert "writing into this folder" in _claimed_elsewhere(out, 0, 1)
        parent.kill()
        parent.wait()
        assert _claimed_elsewhere(out, 0, 1) == "claimed"
    finally:
        parent.kill()
        parent.wait()
        os.kill(child, signal.SIGKILL)


def test_a_killed_runs_temporary_outputs_are_removed_on_resume(johns_dir, tmp_path, weights):
    """An output is written under a temporary name and renamed into place; kill -9 in between left the temporary
    file for good (a real run: one `.NAME.PID.THREAD.tmp` after the resume). The resume removes those of its own
    outputs whose process is gone, never a live process's."""
    import os
    import subprocess

    src, out = _tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    assert main(_purify(src, out, "--weights", weights)) == 0
    (out / "id1" / "0.jpg").unlink()  # the output the kill interrupted
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / "id1" / f".0.jpg.{dead.pid}.140000000000.tmp"
    stale.write_bytes(b"half an image")
    live = out / "id1" / f".0.jpg.{os.getppid()}.140000000000.tmp"  # a process that still runs
    live.write_bytes(b"being written")
    assert main(_purify(src, out, "--weights", weights)) == 0
    assert (out / "id1" / "0.jpg").is_file() and not stale.exists() and live.exists()


def test_processes_starting_one_csv_together_keep_each_others_rows(tmp_path):
    """Ranks sharing a stats CSV (purify --rank --stats, shards too) each begin the file when they write their first
    rows if it did not exist when they started: the later one truncated the rows the other had added (a real run of
    two shard ranks: 23 rows for 34 records). Now it keeps the file and its header."""
    from puface.io.jobs import _StatsCSV

    path = tmp_path / "stats.csv"
    first, second = _StatsCSV(path), _StatsCSV(path)  # both started before the file existed
    second.add([{"file": "b.jpg", "v": 1}])
    first.add([{"file": "a.jpg", "v": 2}])
    assert sorted((r["file"], r["v"]) for r in _rows(path)) == [("a.jpg", "2"), ("b.jpg", "1")]


def _slowed_rewrite(module: str, call: str, tmp_path: Path):
    """Another process that rewrites a CSV with `call` (Python, after `from pathlib import Path`), its rewrite held
    between reading the file and renaming the new one into place until the test lets it go (files as barriers)."""
    import subprocess
    import sys

    read, go = tmp_path / "read", tmp_path / "go"
    code = ("import time; from pathlib import Path; import puface.io.images as images; import " + module + " as m\n"
            "real = images.atomic_write_bytes\n"
            "def slow(path, data):\n"
            f"    Path({str(read)!r}).touch()\n"
            f"    while not Path({str(go)!r}).exists(): time.sleep(0.01)\n"
            "    real(path, data)\n"
            "m.atomic_write_bytes = slow\n" + call)
    p = subprocess.Popen([sys.executable, "-c", code])
    while not read.exists():
        assert p.poll() is None, "the rewriting process ended before its rewrite"
        import time

        time.sleep(0.01)
    return p, go


@pytest.mark.parametrize("rewrite", ["drop", "detect"])
def test_rows_appended_while_another_process_rewrites_the_csv_are_kept(tmp_path, rewrite):
    """Ranks share a CSV; one rewrites it (dropping the rows of its shard to redo on a resume or --no-resume, detect's
    start-of-run and end-of-run rewrites) while another appends: the appended rows went into the file the rename
    replaced (lost). Appends and rewrites now take the file's lock: the append waits for the rewrite and goes into the
    new file."""
    import threading

    from puface.io.jobs import _StatsCSV

    path = tmp_path / "stats.csv"
    path.write_text("path,score\r\nredo.jpg,1\r\nkeep.jpg,2\r\n")
    if rewrite == "drop":
        p, go = _slowed_rewrite("puface.io.jobs", f"m._StatsCSV(Path({str(path)!r})).drop('path', {{'redo.jpg'}})",
                                tmp_path)
    else:
        p, go = _slowed_rewrite("puface.detection.folder", f"m._start_rows(Path({str(path)!r}), ['path', 'score'], "
                                "False, {'redo.jpg'})", tmp_path)
    appender = threading.Thread(target=lambda: _StatsCSV(path).add([{"path": "new.jpg", "score": 3}]))
    appender.start()
    appender.join(timeout=2)  # done at once without the lock; with it, it waits for the rewrite
    go.touch()
    assert p.wait(timeout=60) == 0
    appender.join(timeout=60)
    assert not appender.is_alive()
    assert sorted(r["path"] for r in _rows(path)) == ["keep.jpg", "new.jpg"]


def test_rows_appended_after_a_cut_last_line_start_a_line_of_their_own(tmp_path):
    """A kill in the middle of a large append (rows of more than one write) leaves the last line cut: the next append
    joined its first row onto it, so that row was lost into the cut one. It now starts on a new line."""
    from puface.io.jobs import _StatsCSV

    path = tmp_path / "stats.csv"
    path.write_text("file,status,v\r\na.jpg,ok,1\r\nb.jpg,o")  # b.jpg's row cut by the kill
    _StatsCSV(path).add([{"file": "c.jpg", "status": "ok", "v": 3}])
    assert [r for r in _rows(path) if r["file"] in ("a.jpg", "c.jpg")] == [
        {"file": "a.jpg", "status": "ok", "v": "1"}, {"file": "c.jpg", "status": "ok", "v": "3"}]


def test_an_image_whose_row_was_cut_by_a_kill_is_redone_on_resume(johns_dir, tmp_path, weights, capsys):
    """A cut row (its columns short) counted as recorded, so the resume kept it cut for good. The resume now redoes
    that image (the same bytes) and replaces the cut row with a whole one."""
    src = _tree(johns_dir, tmp_path / "in")
    out = tmp_path / "out"
    assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv")) == 0
    whole = _rows(out / "stats.csv")
    text = (out / "stats.csv").read_text()
    (out / "stats.csv").write_text(text[: text.rstrip().rfind(",")])  # the last row cut inside its last columns
    capsys.readouterr()
    assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv")) == 0
    assert "1 purified, 3 already done" in capsys.readouterr().out
    assert sorted(_rows(out / "stats.csv"), key=str) == sorted(whole, key=str)


def test_processes_of_different_world_sizes_on_one_output_folder_are_refused(tmp_path):
    """Rank 0 of 2 and rank 1 of 3 write overlapping files (shares of other splits), but their rank bytes differ, so
    both were let in. A process now announces its world size in the lock: another world size is refused, either way
    round; the same world size still runs side by side, and the folder is free again once the holder ends."""
    from puface.io.jobs import claim_output
    from puface.utils.errors import PufaceError

    out = tmp_path / "out"
    for held, refused, fine in (((0, 2), (1, 3), (1, 2)), ((2, 3), (1, 2), (0, 3))):
        holder = _holder(out, *held)
        try:
            with pytest.raises(PufaceError, match="another --world-size"):
                claim_output(out, *refused)
            claim_output(out, *fine)()
        finally:
            holder.kill()
            holder.wait()
    claim_output(out, *refused)()
    assert not (out / ".puface.lock").exists()


def test_ranks_starting_with_other_settings_at_once_do_not_both_pass_the_check(tmp_path):
    """Two ranks started at the same instant with other settings could both pass the settings check before either
    wrote its record (the folder then held outputs of both). The check and write are now one step between the
    processes sharing the folder: the second sees the first's record and is refused."""
    import subprocess
    import sys
    import threading
    import time

    from puface.io.jobs import begin_settings
    from puface.utils.errors import PufaceError

    out, checked, go = tmp_path / "out", tmp_path / "checked", tmp_path / "go"
    code = (
        "import time; from pathlib import Path; import puface.io.jobs as jobs\n"
        "real = jobs.check_settings\n"
        "def slow(*a, **k):\n"
        "    real(*a, **k)\n"
        f"    Path({str(checked)!r}).touch()\n"
        f"    while not Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        "jobs.check_settings = slow\n"
        f"jobs.begin_settings(Path({str(out / 'purify_config.json')!r}), {{'step': 1}}, resume=True, kind='purifying', "
        "rank=0, world_size=2)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code])
    while not checked.exists():
        assert first.poll() is None
        time.sleep(0.01)
    result: list = []

    def second() -> None:
        try:
            result.append(begin_settings(out / "purify_config.json", {"step": 2}, resume=True, kind="purifying",
                                         rank=1, world_size=2))
        except PufaceError as e:
            result.append(e)

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=2)  # done at once without the settings lock; with it, it waits for the first's write
    go.touch()
    assert first.wait(timeout=60) == 0
    t.join(timeout=60)
    assert isinstance(result[0], PufaceError) and "different purifying setting" in str(result[0])
    assert json.loads((out / "purify_config.json").read_text()) == {"step": 1}


@pytest.mark.parametrize("ofd", [True, False])
def test_jobs_run_unlocked_where_the_file_system_takes_no_locks(johns_dir, tmp_path, weights, monkeypatch, ofd):
    """NFS or Lustre mounted without locking: every lock call fails with ENOLCK. The folder claim, the settings lock and
    the CSV locks then do nothing, and the job runs as before there were locks (with open-file-description locks, and
    with the POSIX locks of systems without them)."""
    import errno
    import fcntl

    import puface.io.jobs as jobs

    if ofd and not jobs._ofd_locks(tmp_path):
        pytest.skip("no open-file-description locks here")

    def no_locks(*a, **k):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(jobs, "_OFD", ofd)
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(fcntl, "fcntl", no_locks)
    src, out = _tree(johns_dir, tmp_path / "in"), tmp_path / "out"
    for rank in (0, 1):
        assert main(_purify(src, out, "--weights", weights, "--stats", out / "stats.csv", "--rank", rank,
                            "--world-size", 2)) == 0
    assert len(_outputs(out)) == 4 and len(_rows(out / "stats.csv")) == 4


def test_a_failed_job_leaves_its_folder_to_other_processes(johns_dir, tmp_path, weights):
    """A job that fails (or is interrupted) in a Python session that goes on (IPython and Jupyter keep the last
    exception, and with it the job's frames) held its claim on OUT: another process was refused with 'another
    puface process is writing into this folder' though nothing wrote. The claim now goes with the failure; the
    settings record stays as it was."""
    import subprocess
    import sys

    from puface.purifier.folder import purify_folder

    src, out = _tree(johns_dir, tmp_path / "in", n=2), tmp_path / "out"

    def broken():
        raise RuntimeError("the prepare step failed")

    with pytest.raises(RuntimeError) as kept:  # `kept` holds the exception, as an interactive session does
        purify_folder(src, out, weights=weights, device="cpu", progress=False, prepare=broken)
    assert (out / "purify_config.json").is_file()
    code = ("from pathlib import Path; from puface.io.jobs import claim_output; "
            f"claim_output(Path({str(out)!r}))(); print('claimed')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "claimed", r.stderr
    assert kept.value is not None


@pytest.mark.parametrize("ofd", [True, False])
def test_a_job_whose_last_settings_write_fails_leaves_its_folder(tmp_path, monkeypatch, ofd):
    """The end of a redo (`JobFinish`) writes the plain settings record, then releases the claim: a failed write
    (disk full, the folder made read-only meanwhile) skipped the release, and in a Python session that keeps the
    exception the folder stayed claimed: the session's next job on it was refused with 'another puface job in this
    process is writing into this folder', another process with 'another puface process'. The claim now goes either
    way; the record stays the unfinished redo's."""
    import puface.io.jobs as jobs
    from puface.utils.errors import PufaceError

    if ofd and not jobs._ofd_locks(tmp_path):
        pytest.skip("no open-file-description locks here")
    monkeypatch.setattr(jobs, "_OFD", ofd)
    out, record = tmp_path / "out", tmp_path / "out" / "purify_config.json"
    jobs.begin_settings(record, {"step": 1}, resume=True, kind="purifying")()
    finish = jobs.begin_settings(record, {"step": 2}, resume=False, kind="purifying")  # a redo: the end rewrites

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(jobs, "atomic_write_bytes", full)
    with pytest.raises(OSError) as kept:  # `kept` holds the exception and the job's frames, as a session does
        finish()
    assert json.loads(record.read_text())[jobs.REDO_KEY] is True
    assert _claimed_elsewhere(out, 0, 1, posix=ofd) == "claimed"
    try:
        jobs.claim_output(out)()
    except PufaceError as e:
        pytest.fail(str(e))
    assert kept.value is not None and finish is not None


def test_a_job_that_writes_no_file_leaves_temporaries_in_its_input_alone(tmp_path):
    """`detect` runs a folder job whose jobs' dst is the input file itself (it writes CSV rows, no image): the
    clean-up of a killed run's temporaries deleted `.NAME.PID.THREAD.tmp` files beside the input images, in a
    folder puface only reads (another program, maybe `puface purify` on another machine, may be writing it)."""
    import subprocess

    from PIL import Image

    from puface.io.jobs import FileJob, Outcome, run_folder_job

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    dead = subprocess.Popen(["true"])
    dead.wait()
    other = src / f".a.png.{dead.pid}.140000000000.tmp"
    other.write_bytes(b"another program's half-written file")
    rep = run_folder_job(
        [FileJob(src / "a.png", src / "a.png", Path("a.png"))],
        lambda items: [Outcome.record(x=1) for _ in items],
        resume=False,
        stats_csv=tmp_path / "rows.csv",
        stats_key="path",
        progress=False,
    )
    assert rep.written == 1 and other.exists()


def _file_holder(path: Path, rank: int, world_size: int, ended: bool = False):
    """Another process that claims the scores CSV `path` as `detect --rank` does (`claim_file`) and holds it until
    stopped; `ended`: it says its share is done (`Claim.ended`), as a rank does once its rows are all in."""
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path; from puface.io.jobs import claim_file; "
        f"c = claim_file(Path({str(path)!r}), {rank}, {world_size}); {'c.ended(); ' if ended else ''}"
        "print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_ranks_sharing_a_scores_csv_restart_and_summarise_together(johns_dir, tmp_path, capsys):
    """Ranks given one --out share the scores CSV: `detect --restart` in one of them deleted the file with the rows the
    others had written, and each wrote the per-identity summary at its end from the rows there so far (only the last
    one's was complete). Now a restart drops only the rank's own rows, and a rank that ends while another is still
    scoring says so and leaves the summary to the last."""
    src, scores = _tree(johns_dir, tmp_path / "in"), tmp_path / "scores.csv"
    idents = tmp_path / "scores-identities.csv"
    detect = ["detect", str(src), "--out", str(scores), "--no-progress", "--device", "cpu", "--world-size", "2"]
    holder = _file_holder(scores, 1, 2)  # rank 1 still scoring
    try:
        assert main([*detect, "--rank", "0"]) == 0
        assert "1 other process(es) sharing" in capsys.readouterr().out
        assert not idents.exists()  # no summary of half the input
    finally:
        holder.kill()
        holder.wait()
    assert sorted(r["path"] for r in _rows(scores)) == ["id0/0.jpg", "id1/0.jpg"]
    assert main([*detect, "--rank", "1", "--restart"]) == 0
    assert "other process" not in capsys.readouterr().out
    assert sorted(r["path"] for r in _rows(scores)) == ["id0/0.jpg", "id0/1.jpg", "id1/0.jpg", "id1/1.jpg"]
    assert sum(int(r["images"]) for r in _rows(idents)) == 4


def test_restart_of_a_ranks_own_scores_file_starts_it_afresh(johns_dir, tmp_path, monkeypatch, capsys):
    """Without --out each rank writes its own scores.rank<r>.csv: --restart there kept the rows of files the rank no
    longer takes (a file added to the input moves the later ones to other ranks), scores of the run it was to discard
    (another detector's too: a restart skips that check), judged and summarised with its own. Its file starts afresh,
    as with one process; a shared --out still keeps the other ranks' rows (the test above)."""
    src = _tree(johns_dir, tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    detect = ["detect", str(src), "--no-progress", "--device", "cpu", "--world-size", "2", "--rank", "0"]
    assert main(detect) == 0
    scores = tmp_path / "scores.rank0.csv"
    rows = _rows(scores)
    assert sorted(r["path"] for r in rows) == ["id0/0.jpg", "id1/0.jpg"]
    for r in rows:  # as if an earlier detector had scored it
        r["score"] = "99.0" if r["path"] == "id1/0.jpg" else r["score"]
    with open(scores, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    shutil.copy(src / "id0" / "1.jpg", src / "id0" / "00.jpg")  # sorts before id0/1.jpg: id1/0.jpg goes to rank 1
    capsys.readouterr()
    assert main([*detect, "--restart"]) == 0
    assert " of 3 images judged cloaked" in capsys.readouterr().out
    assert sorted(r["path"] for r in _rows(scores)) == ["id0/0.jpg", "id0/1.jpg", "id1/1.jpg"]
    assert sum(int(r["images"]) for r in _rows(tmp_path / "scores.rank0-identities.csv")) == 3


def test_a_rank_that_ended_its_share_is_not_waited_for(tmp_path):
    """`Claim.others_running`: the other ranks holding their share of a shared file, less those that said `ended`."""
    from puface.io.jobs import claim_file

    scores = tmp_path / "scores.csv"
    for ended, running in ((False, 1), (True, 0)):
        holder = _file_holder(scores, 1, 3, ended=ended)
        try:
            mine = claim_file(scores, 0, 3)
            assert mine.others_running() == running
            mine.ended()
            assert mine.others_running() == running  # its own share never counts, ended or not
            mine()
        finally:
            holder.kill()
            holder.wait()


def _claim_rank1_in_a_loop(scores, seconds: float, rank: int = 1) -> tuple[int, list[str]]:
    """Claim and release rank 1 (or `rank`) of 2 of `scores` for `seconds`: (starts, the refusals' messages)."""
    import time

    from puface.io.jobs import claim_file
    from puface.utils.errors import PufaceError

    starts, refused, t = 0, [], time.time()
    while time.time() - t < seconds:
        starts += 1
        try:
            claim_file(scores, rank, 2)()
        except PufaceError as e:
            refused.append(str(e))
    return starts, refused


def test_asking_which_ranks_run_does_not_refuse_a_rank_starting(tmp_path):
    """`Claim.others_running` tested another rank's byte of the lock file by locking it for a moment, so a rank
    claiming its share at that instant was refused as a duplicate ("another puface process is writing this file as
    rank 1"): with rank 0 asking in a loop, about one start of rank 1 in four was refused. Now the byte is tested
    without being locked (F_TEST), and no start is refused; an ended rank is still seen (the test above)."""
    import subprocess
    import sys

    scores = tmp_path / "scores.csv"
    code = (
        "import time; from pathlib import Path; from puface.io.jobs import claim_file; "
        f"c = claim_file(Path({str(scores)!r}), 0, 2); print('held', flush=True); t = time.time()\n"
        "while time.time() - t < 1.5: c.others_running()\n"
    )
    asker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert asker.stdout.readline().strip() == "held"
        starts, refused = _claim_rank1_in_a_loop(scores, 0.8)
        assert starts > 200 and refused == [], (starts, len(refused), refused[:1])
    finally:
        asker.kill()
        asker.wait()


def test_a_rank_starting_as_another_ends_is_not_refused(tmp_path):
    """The last process out locked the whole lock file for a moment to remove it, and a rank claiming its share at that
    instant (or looking for other world sizes) was refused: with rank 0 starting and ending in a loop, 261 of 28,270
    starts of rank 1 in 1.5 s were refused ("as rank 0", "with another --world-size"), and two ranks looking for other
    world sizes at once refused each other too. A starting process now waits out a removal and another's start (the
    gate byte), so no start is refused, and the last one out still removes the file."""
    import subprocess
    import sys

    scores = tmp_path / "scores.csv"
    code = (
        "import time; from pathlib import Path; from puface.io.jobs import claim_file\n"
        f"p = Path({str(scores)!r}); print('go', flush=True); t = time.time(); refused = 0\n"
        "while time.time() - t < 1.2:\n"
        "    try:\n        claim_file(p, 0, 2)()\n    except Exception:\n        refused += 1\n"
        "print(refused, flush=True)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "go"
        starts, refused = _claim_rank1_in_a_loop(scores, 0.8)
        assert int(other.communicate(timeout=60)[0]) == 0
    finally:
        other.kill()
        other.wait()
    assert starts > 200 and refused == [], (starts, len(refused), refused[:1])
    assert not scores.with_name(".scores.csv.lock").exists()


def test_ranks_ending_together_remove_the_lock_file(tmp_path):
    """Of two ranks ending at once, each tested whether the whole lock file was free while the other still held its
    share, and neither removed it (0 to 9 of 300 such ends left `.scores.csv.lock` behind). Here rank 0's test fails
    while rank 1 holds its share, and rank 0 is held there while rank 1 ends; a process now lets go of its own share
    before it tests, so rank 1 finds the file free and removes it."""
    import subprocess
    import sys

    from puface.io.jobs import claim_file

    scores = tmp_path / "scores.csv"
    code = (
        "import sys; from pathlib import Path; import puface.io.jobs as jobs\n"
        "real = jobs._range_lock\n"  # every lock of a claim goes through it
        "def lock(f, cmd, length=0, start=0):\n"
        "    try:\n        return real(f, cmd, length, start)\n"
        "    except OSError:\n"
        "        if (length, start) == (0, 0):  # the test of the whole file, failed: wait here\n"
        "            print('tested', flush=True); sys.stdin.readline()\n"
        "        raise\n"
        f"c = jobs.claim_file(Path({str(scores)!r}), 0, 2); print('held', flush=True); sys.stdin.readline()\n"
        "jobs._range_lock = lock\n"
        "c()\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdin is not None and other.stdout is not None
    try:
        assert other.stdout.readline().strip() == "held"
        mine = claim_file(scores, 1, 2)
        other.stdin.write("end\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "tested"
        mine()
        other.stdin.write("go on\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
        other.wait()
    assert not scores.with_name(".scores.csv.lock").exists()


def test_a_process_whose_lock_file_was_replaced_does_not_remove_the_new_one(tmp_path):
    """A process ending removed the lock file under its name whatever file that was by then: one that had been removed
    (by hand, or by another process) and made again by a process now holding it went, so a second run of that
    process's rank was let in. The file is removed only while its name is still the file this process holds."""
    from puface.io.jobs import claim_output
    from puface.utils.errors import PufaceError

    out = tmp_path / "out"
    mine = claim_output(out, 1, 2)
    (out / ".puface.lock").unlink()  # removed while held
    holder = _holder(out, 0, 2)  # claims a new lock file
    try:
        mine()
        assert (out / ".puface.lock").exists()
        with pytest.raises(PufaceError, match="as rank 0"):
            claim_output(out, 0, 2)
    finally:
        holder.kill()
        holder.wait()


def test_a_rank_restarted_with_another_detector_names_the_ranks_it_did_not_rescore(johns_dir, tmp_path, capsys):
    """Ranks share one scores CSV; rank 0 alone restarted with another detector (same columns: `sharpen` after
    `default`) kept rank 1's rows of the first, judged them at the new detector's thresholds, and said nothing; a
    plain resume of rank 1 with the new detector then took those rows for its own. A restart cannot refuse (the other
    ranks may restart after it, one at a time), so the run file now records the detector per rank: a rank that ends
    with rows of another detector in the file names those ranks, and a resume over its own rows of another detector is
    refused; once every rank has restarted, the warning is gone."""
    src, scores = _tree(johns_dir, tmp_path / "in"), tmp_path / "scores.csv"
    detect = ["detect", str(src), "--out", str(scores), "--no-progress", "--device", "cpu", "--world-size", "2"]
    for rank in ("0", "1"):
        assert main([*detect, "--rank", rank]) == 0
    first = {r["path"]: r["score"] for r in _rows(scores)}
    capsys.readouterr()
    assert main([*detect, "--rank", "0", "--restart", "--detector", "sharpen"]) == 0
    out = capsys.readouterr().out
    assert "holds rows of rank(s) 1 scored by another detector" in out and "--restart too" in out
    rows = {r["path"]: r["score"] for r in _rows(scores)}
    assert [rows[p] == first[p] for p in sorted(rows)] == [False, True, False, True]  # rank 1's: id0/1, id1/1
    assert main([*detect, "--rank", "1", "--detector", "sharpen"]) == 2
    assert "the rows of rank 1's files were scored by another detector" in capsys.readouterr().err
    assert main([*detect, "--rank", "1", "--restart", "--detector", "sharpen"]) == 0
    assert "another detector" not in capsys.readouterr().out
    assert all(r["score"] != first[r["path"]] for r in _rows(scores)) and len(_rows(scores)) == 4
    run = json.loads((tmp_path / "scores-run.json").read_text())
    assert run["world_size"] == 2 and run["ranks"] == {"0": run["detector"], "1": run["detector"]}


@pytest.mark.parametrize("split", [[], ["--world-size", "4", "--rank", "0"]], ids=["one-process", "other-world-size"])
def test_a_resume_of_other_ranks_over_rows_of_two_detectors_is_refused(johns_dir, tmp_path, capsys, split):
    """After rank 0 of 2 restarted with another detector (rank 1's rows still the first one's, the run file saying so
    per rank), a resume with that detector as one process, or as ranks of another world size, took every row for its
    own (4 of 8 scored by the other detector, judged at this one's thresholds) and wrote over the per-rank record
    (with --world-size 4: every rank recorded as this detector). Now refused, naming both detectors; --restart goes."""
    src, scores = _tree(johns_dir, tmp_path / "in"), tmp_path / "scores.csv"
    base = ["detect", str(src), "--out", str(scores), "--no-progress", "--device", "cpu"]
    for rank in ("0", "1"):
        assert main([*base, "--world-size", "2", "--rank", rank]) == 0
    assert main([*base, "--world-size", "2", "--rank", "0", "--restart", "--detector", "sharpen"]) == 0
    capsys.readouterr()
    assert main([*base, *split, "--detector", "sharpen"]) == 2
    err = capsys.readouterr().err
    assert "scored by 2 ranks (--rank) with more than one detector" in err and "pass --restart" in err
    assert main([*base, *split, "--detector", "sharpen", "--restart"]) == 0
    run = json.loads((tmp_path / "scores-run.json").read_text())
    if split:  # the other ranks' files may still hold the first detector's rows: recorded as both, not as this one
        assert run["ranks"]["0"] == run["detector"] and run["ranks"]["1"] != run["detector"]
        assert "holds rows of rank(s) 1, 2, 3 scored by another detector" in capsys.readouterr().out
    else:
        assert "ranks" not in run


@pytest.mark.parametrize("text", ["", "{\"detector\": \"4962e3"])
def test_a_resume_over_an_empty_or_broken_run_file_is_one_line_or_goes_on(johns_dir, tmp_path, capsys, text):
    """A run file that holds no JSON (cut or edited by hand) failed a resume with a JSONDecodeError traceback; and the
    run file of a shared scores CSV, now written under its lock, is made empty first (a kill at that instant leaves it
    so). An empty one reads as no record (the resume goes on, nothing rescored); a broken one is one line naming it
    and what to do."""
    src, scores = _tree(johns_dir, tmp_path / "in"), tmp_path / "scores.csv"
    detect = ["detect", str(src), "--out", str(scores), "--no-progress", "--device", "cpu", "--world-size", "2"]
    for rank in ("0", "1"):
        assert main([*detect, "--rank", rank]) == 0
    (tmp_path / "scores-run.json").write_text(text)
    capsys.readouterr()
    if not text:
        assert main([*detect, "--rank", "0"]) == 0
        assert "0 scored, 2 already done" in capsys.readouterr().out
    else:
        assert main([*detect, "--rank", "0"]) == 2
        assert f"{tmp_path / 'scores-run.json'}: unreadable run file of scores.csv" in capsys.readouterr().err


def test_a_claim_locks_one_way_to_its_release_though_the_probe_runs_later(tmp_path, monkeypatch):
    """Where the lock probe could not make its file in the output folder (None: EMFILE, ENOSPC; not remembered), each
    lock of the claim probed again: here the gate byte was taken by a POSIX lock and, once the probe ran, the claim's
    bytes and its release by open-file-description locks, which leave the POSIX lock held: the release could not take
    the whole file (its own POSIX lock conflicts) and left the lock file behind, its gate held. The claim now keeps the
    kind it was checked for (`_HELD`) to its release."""
    import sys

    import puface.io.jobs as jobs

    if not sys.platform.startswith("linux") or not jobs._probe_ofd_locks(str(tmp_path)):
        pytest.skip("needs open-file-description locks")
    real, calls = jobs._probe_ofd_locks, []

    def probe(folder=None):
        calls.append(folder)
        return None if len(calls) <= 2 else real(folder)

    monkeypatch.setattr(jobs, "_probe_ofd_locks", probe)
    monkeypatch.setattr(jobs, "_OFD", None)
    monkeypatch.setattr(jobs, "_OFD_BY_DEVICE", {})
    out = tmp_path / "out"
    release = jobs.claim_output(out)
    assert (out / jobs.LOCK_NAME).exists() and release.key is not None
    release()
    assert list(out.iterdir()) == []


def test_a_lock_probe_whose_file_cannot_be_removed_at_once_leaks_nothing(tmp_path, monkeypatch):
    """Where the probe's file could not be removed while open (EBUSY, as a network file system may say), the probe
    gave up with both descriptors open and its file left in the output folder, and, its answer not kept, did so again
    at every claim. It now removes the file once closed, keeps its answer for the file system, and leaks nothing."""
    import errno
    import os
    import sys

    import puface.io.jobs as jobs

    if not sys.platform.startswith("linux"):
        pytest.skip("counts /proc/self/fd")
    real_unlink, refused = os.unlink, set()

    def busy_while_open(path, *a, **k):
        name = os.fspath(path)
        if os.path.basename(name).startswith(".puface-lock-") and name not in refused:
            refused.add(name)  # the first try, with the file still open
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_unlink(path, *a, **k)

    real_probe, probes = jobs._probe_ofd_locks, []
    monkeypatch.setattr(jobs, "_probe_ofd_locks", lambda folder=None: probes.append(folder) or real_probe(folder))
    monkeypatch.setattr(jobs, "_OFD", None)
    monkeypatch.setattr(jobs, "_OFD_BY_DEVICE", {})
    out = tmp_path / "out"
    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "unlink", busy_while_open)
    for _ in range(3):
        jobs.claim_output(out)()
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert set(os.listdir("/proc/self/fd")) <= before
    assert list(out.iterdir()) == [] and len(refused) == len(probes) == 1
