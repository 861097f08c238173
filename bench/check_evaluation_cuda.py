"""Device check for the evaluation (run where a CUDA GPU is present): the e2e trainer, the protocol
with a victim on the GPU, the PuFace defense on the GPU and a whole experiment with device="cuda"
give the same answers as on the CPU. Uses the test stand-ins (no model weights needed).

    PYTHONPATH=src:tests python3 bench/check_evaluation_cuda.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from evaluation_helpers import (  # noqa: E402
    EXPERIMENT_COLOURS_TOML, CheckerCloak, colour_embedder, register_standins, tiny_conv_embedder, write_colour_faces,
)
from puface.defenses import create_defense  # noqa: E402
from puface.evaluation.protocol import AttackSpec, EvaluationData, Protocol, TrainerSpec  # noqa: E402
from puface.evaluation.trainers import create_trainer  # noqa: E402
from puface.experiments import load_config, run_experiment  # noqa: E402


def main() -> None:
    import os

    gpu = os.environ.get("CHECK_DEVICE", "cuda")  # CHECK_DEVICE=cpu: a dry run of the script without a GPU
    if gpu == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    tmp = Path(tempfile.mkdtemp())
    data = EvaluationData.prepare(write_colour_faces(tmp / "data"), seed=0, image_size=32)

    # 1. e2e on the GPU: trains, predicts, and matches the CPU run's accuracy
    res = {}
    for dev in ("cpu", gpu):
        t0 = time.perf_counter()
        t = create_trainer("e2e", tiny_conv_embedder(1), steps=60, batch_size=16, backbone_lr=1e-3, device=dev)
        t.fit(data.train.images, data.train.labels)
        acc = float(np.mean(t.predict(data.test.images) == data.test.labels))
        res[dev] = acc
        print(f"e2e on {dev}: accuracy {acc:.3f}, loss {t.losses[0]:.3f} -> {t.losses[-1]:.3f}, {time.perf_counter() - t0:.1f} s")
    assert res[gpu] == res["cpu"] == 1.0

    # 2. the protocol with the victim and the purifier on the GPU
    from puface.purifier import Purifier

    ckpt = tmp / "random-purifier.pt"
    Purifier().save(ckpt)
    rows = {}
    for dev in ("cpu", gpu):
        victim = colour_embedder().to(dev)
        proto = Protocol(
            data, ["Alice", "Carol"], [AttackSpec("clean", None), AttackSpec("checker", CheckerCloak(), ("colour",))],
            {"colour": victim}, [TrainerSpec("nn", "nn"), TrainerSpec("linear", "linear"),
                                 TrainerSpec("e2e", "e2e", {"steps": 10, "batch_size": 8, "device": dev})],
            {"none": create_defense("none"), "blur": create_defense("blur"),
             "puface": create_defense("puface", weights=str(ckpt), device=dev)},
            cloak_cache=None, progress=False,
        )
        rows[dev] = {r["run_id"]: (r["asr"], r["normal_acc"]) for r in proto.run()}
        print(f"protocol on {dev}: {len(rows[dev])} runs")
    diff = [k for k in rows["cpu"] if k.split("|")[3] != "e2e" and rows["cpu"][k] != rows[gpu][k]]
    assert not diff, diff
    print("nn/linear scores identical on cpu and cuda")

    # 3. a whole experiment with device = "cuda"
    register_standins()
    cfg = tmp / "c.toml"
    cfg.write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(tmp / "data")).replace('device = "cpu"', f'device = "{gpu}"'))
    out = run_experiment(load_config(cfg), tmp / "out", progress=False, echo=lambda s: None)
    assert out.report is not None and len(out.rows) == 24
    print("experiment on cuda:", len(out.rows), "runs; report", out.report.stat().st_size, "bytes")
    print("OK")


if __name__ == "__main__":
    main()
