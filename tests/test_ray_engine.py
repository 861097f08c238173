"""The Ray engine (`--engine ray`) on a local 2-CPU Ray cluster started here: the same bytes as the local
engine, a model actor killed mid-run does not lose or duplicate an image, a rerun skips what is done, and
`PurifyBatch` works in a user's own `map_batches`. Slow: the cluster and its actors take seconds to start."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from puface.io.images import read_image, write_image  # noqa: E402
from puface.purifier.folder import purify_folder  # noqa: E402

# The local reference runs with the actors' torch thread count (1, cpus_per_worker = 1): float sums, and so
# an iterative cloak's last bits, may depend on how the work is split between threads.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs (the engine joins it instead of starting its own)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def chips(johns_dir, tmp_path_factory) -> Path:
    """110 johns-sized chips (the 55 johns and their mirror images) in identity folders, plus one corrupt file."""
    root = tmp_path_factory.mktemp("chips")
    for f in sorted(johns_dir.glob("*/*.jpg")):
        (root / f.parent.name).mkdir(exist_ok=True)
        img = read_image(f)
        write_image(root / f.parent.name / f.name, img)
        write_image(root / f.parent.name / f"{f.stem}_mirror.png", np.ascontiguousarray(img[:, ::-1]))
    (root / "John_Simm" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def local_out(chips, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("local") / "out"
    rep = purify_folder(chips, out, device="cpu", batch_size=4, progress=False, stats_csv=out / "stats.csv")
    return out, rep


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ray_engine_matches_local_engine_bytes(cluster, chips, local_out, tmp_path):
    ref, ref_rep = local_out
    out = tmp_path / "out"
    rep = purify_folder(chips, out, device="cpu", batch_size=4, progress=False, engine="ray", workers=2,
                        stats_csv=out / "stats.csv")
    assert rep.written == ref_rep.written == 110
    assert (
        [str(p) for p, _ in rep.failed]
        == [str(p) for p, _ in ref_rep.failed]
        == [str(chips / "John_Simm" / "broken.jpg")]
    )
    assert _tree(out) == _tree(ref)  # every image and the stats CSV, byte for byte
    # rerun: everything is done
    again = purify_folder(chips, out, device="cpu", batch_size=4, progress=False, engine="ray", workers=2)
    assert again.resumed == 110 and again.written == 0


def test_ray_engine_applies_the_step_like_the_local_engine(cluster, johns_dir, tmp_path):
    """--step reaches the Ray actors: the same bytes as the local engine, and not the step-1 output."""
    src = tmp_path / "in"
    for f in sorted(johns_dir.glob("*/*.jpg"))[:6]:
        (src / f.parent.name).mkdir(parents=True, exist_ok=True)
        write_image(src / f.parent.name / f"{f.stem}.png", read_image(f))
    outs = {}
    for name, engine, step in (("local", "local", 1.5), ("ray", "ray", 1.5), ("one", "local", 1.0)):
        kw = {"workers": 1} if engine == "ray" else {}
        rep = purify_folder(
            src, tmp_path / name, device="cpu", batch_size=4, progress=False, engine=engine, step=step, **kw
        )
        assert rep.written == 6
        outs[name] = {k: v for k, v in _tree(tmp_path / name).items() if k.endswith(".png")}
    assert outs["ray"] == outs["local"] and outs["local"] != outs["one"]


def test_ray_engine_keeps_alpha_and_grayscale_like_the_local_engine(cluster, johns_dir, tmp_path):
    """Alpha, grayscale, the resolution and a TIFF's compression travel through the Ray stages: the same bytes as the
    local engine."""
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    rgb = read_image(sorted(johns_dir.glob("*/*.jpg"))[0])
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(src / "a.png")
    Image.fromarray(rgb).convert("L").save(src / "g.jpg")
    Image.fromarray(rgb).save(src / "t.tif", compression="tiff_lzw", dpi=(300, 300))
    for engine in ("local", "ray"):
        purify_folder(src, tmp_path / engine, device="cpu", progress=False, engine=engine, workers=1)
    assert Image.open(tmp_path / "ray" / "a.png").mode == "RGBA" and Image.open(tmp_path / "ray" / "g.jpg").mode == "L"
    t = Image.open(tmp_path / "ray" / "t.tif")
    assert t.info["compression"] == "tiff_lzw" and t.info["dpi"] == (300, 300)
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def _actor_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"_BatchActor" in cmd and b"MapWorker" in cmd:
                pids.append(int(d.name))
    return pids


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, chips, local_out, tmp_path):
    ref, _ = local_out
    out = tmp_path / "out"
    killed: list[int] = []
    errors: list[Exception] = []

    def killer():
        """Kill one model actor 2 s after the pool is up (mid-run: 55 batches of 2 take far longer)."""
        deadline = time.monotonic() + 300
        seen = None
        while time.monotonic() < deadline and not killed:
            try:
                pids = _actor_pids()
                if pids and seen is None:
                    seen = time.monotonic()
                if pids and seen is not None and time.monotonic() - seen > 2.0:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            except OSError as e:  # a process vanished while we looked
                errors.append(e)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    rep = purify_folder(chips, out, device="cpu", batch_size=2, progress=False, engine="ray", workers=2,
                        stats_csv=out / "stats.csv")
    t.join(timeout=5)
    assert killed, f"no model actor was found to kill ({errors[-3:]})"
    assert rep.written == 110 and len(rep.failed) == 1
    tree = _tree(out)
    assert {k: v for k, v in tree.items() if k != "stats.csv"} == {
        k: v for k, v in _tree(ref).items() if k != "stats.csv"
    }
    with open(out / "stats.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    assert len(files) == len(set(files)) == 110  # each image reported exactly once
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
    # a partial rerun redoes exactly the missing outputs
    gone = sorted(out.rglob("*_mirror.png"))[:7]
    for p in gone:
        p.unlink()
    again = purify_folder(chips, out, device="cpu", batch_size=4, progress=False, engine="ray", workers=1)
    assert again.written == 7 and again.resumed == 103
    assert all(p.read_bytes() == (ref / p.relative_to(out)).read_bytes() for p in gone)


def test_purify_batch_in_a_users_pipeline(cluster, chips):
    import puface
    from puface.purifier import Purifier
    from puface.purifier.model import job_step
    from puface.utils.images import image_to_tensor, tensor_to_image

    files = sorted((chips / "John_Salley").glob("*.jpg"))[:6]
    ds = ray.data.from_items([{"name": f.name, "image": read_image(f)} for f in files])
    ds = ds.map_batches(puface.PurifyBatch, batch_size=3, compute=ray.data.ActorPoolStrategy(size=1),
                        fn_constructor_kwargs={"device": "cpu", "threads": 1})
    rows = {r["name"]: r["image"] for r in ds.take_all()}
    p = Purifier.load()
    # the same batches of 3 and thread count as the actor, at `puface purify`'s default step: the same pixels
    want = [
        tensor_to_image(y)
        for i in range(0, len(files), 3)
        for y in p.purify(torch.stack([image_to_tensor(read_image(f)) for f in files[i : i + 3]]), step=job_step(p))
    ]
    for f, w in zip(files, want):
        assert np.array_equal(rows[f.name], w), f.name


def test_cloak_on_ray_gives_the_local_bytes(cluster, johns_dir, tmp_path):
    """Cloaks depend on their batch mates: the Ray engine's blocks hold whole batches, so each batch is the
    local engine's and the cloaks (and their stats CSV) come out byte-identical."""
    from puface.attacks import create_attack
    from puface.attacks.folder import cloak_folder
    from functools import partial

    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(johns_dir.glob("*/*.jpg"))[::8][:7]:
        (src / f.name).write_bytes(f.read_bytes())
    make = partial(create_attack, "fawkes", mode="custom", th=0.01, steps=2, lr=20, embedders=["dlib-resnet29"],
                   seed=0, device="cpu", batch_size=3)
    local = cloak_folder(src, tmp_path / "local", make(), batch_size=3, progress=False)
    on_ray = cloak_folder(src, tmp_path / "ray", make(), batch_size=3, progress=False, engine="ray", workers=2,
                          attack_factory=make)
    assert local.written == on_ray.written == 7
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def test_detect_on_ray_writes_the_local_rows_and_resumes(cluster, chips, tmp_path):
    """`puface detect --engine ray`: the same CSV rows (paths, scores, decisions, features) as the local engine,
    the broken file reported; a rerun scores nothing; a row removed is scored again, alone."""
    from puface.detection.folder import detect_folder

    ref = tmp_path / "local.csv"
    want = detect_folder(chips, ref, device="cpu", batch_size=8, progress=False)
    out = tmp_path / "ray.csv"
    got = detect_folder(chips, out, device="cpu", batch_size=8, progress=False, engine="ray", workers=2)
    assert got.scored == want.scored == 110 and len(got.job.failed) == len(want.job.failed) == 1

    def rows(p: Path) -> list[dict]:
        with open(p, newline="") as f:
            return sorted(csv.DictReader(f), key=lambda r: r["path"])

    a, b = rows(ref), rows(out)
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 110
    for ra, rb in zip(a, b):  # the same scores up to float noise between thread layouts
        assert ra["cloaked"] == rb["cloaked"] and abs(float(ra["score"]) - float(rb["score"])) < 1e-3 * (
            1 + abs(float(ra["score"]))
        )
    again = detect_folder(chips, out, device="cpu", batch_size=8, progress=False, engine="ray", workers=2)
    assert again.job.resumed == 110 and again.scored == 110  # the summary still counts every row
    kept = [r for r in b if r["path"] != b[0]["path"]]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(b[0]))
        w.writeheader()
        w.writerows(kept)
    third = detect_folder(chips, out, device="cpu", batch_size=8, progress=False, engine="ray", workers=2)
    assert (
        third.job.resumed == 109 and third.job.written == 1 and [r["path"] for r in rows(out)] == [r["path"] for r in a]
    )
    # a shipped detector by name: each actor loads that file (not a path of that name in the working folder)
    sharp = detect_folder(chips, tmp_path / "sharp.csv", weights="sharpen", device="cpu", batch_size=8, progress=False,
                          engine="ray", workers=2)
    assert sharp.scored == 110 and rows(tmp_path / "sharp.csv")[0]["score"] != a[0]["score"]
