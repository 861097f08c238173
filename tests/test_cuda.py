"""Device checks, run where a CUDA GPU is present (skipped elsewhere; `pytest -m cuda` runs only these):
the attacks, the evaluation and a whole experiment on the GPU give the answers they give on the CPU.

    pytest -m cuda            # on a machine with a GPU, e.g. through the device tool
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluation_helpers import (
    EXPERIMENT_COLOURS_TOML,
    CheckerCloak,
    colour_embedder,
    register_standins,
    tiny_conv_embedder,
    write_colour_faces,
)
from puface.attacks import create_attack
from puface.attacks.cache import CloakCache
from puface.defenses import create_defense
from puface.evaluation.data import EvaluationData
from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec
from puface.evaluation.trainers import create_trainer
from puface.experiments import load_config, run_experiment

pytestmark = pytest.mark.cuda
GPU = "cuda"


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda")
    return tmp, EvaluationData.prepare(write_colour_faces(tmp / "data"), seed=0, image_size=32)


def test_e2e_trains_on_the_gpu_as_on_the_cpu(colour_data):
    _, data = colour_data
    acc = {}
    for dev in ("cpu", GPU):
        t = create_trainer("e2e", tiny_conv_embedder(1), steps=60, batch_size=16, backbone_lr=1e-3, device=dev)
        t.fit(data.train.images, data.train.labels)
        acc[dev] = float(np.mean(t.predict(data.test.images) == data.test.labels))
    assert acc[GPU] == acc["cpu"] == 1.0


def test_protocol_scores_are_identical_with_victim_and_purifier_on_the_gpu(colour_data):
    from puface.purifier import Purifier

    tmp, data = colour_data
    ckpt = tmp / "random-purifier.pt"
    Purifier().save(ckpt)
    rows = {}
    for dev in ("cpu", GPU):
        proto = Protocol(
            data, ["Alice", "Carol"], [AttackSpec("clean", None), AttackSpec("checker", CheckerCloak(), ("colour",))],
            {"colour": colour_embedder().to(dev)}, [TrainerSpec("nn", "nn"), TrainerSpec("linear", "linear")],
            {"none": create_defense("none"), "blur": create_defense("blur"),
             "puface": create_defense("puface", weights=str(ckpt), device=dev)},
            cloak_cache=None, progress=False,
        )
        rows[dev] = {r["run_id"]: (r["asr"], r["normal_acc"]) for r in proto.run()}
    assert rows["cpu"] and rows["cpu"] == rows[GPU]


def test_a_whole_experiment_runs_on_the_gpu(colour_data):
    tmp, _ = colour_data
    register_standins()
    cfg = tmp / "c.toml"
    cfg.write_text(
        EXPERIMENT_COLOURS_TOML.replace("{root}", str(tmp / "data")).replace('device = "cpu"', f'device = "{GPU}"')
    )
    out = run_experiment(load_config(cfg), tmp / "out", progress=False, echo=lambda s: None)
    assert out.report is not None and len(out.rows) == 24


@pytest.mark.parametrize("name, options", [("fawkes", {"mode": "high"}), ("lowkey", {})])
def test_attacks_on_the_gpu_keep_their_budget_and_match_the_cpu(name, options, johns_images):
    x = johns_images[2][::11][:4]
    res = {dev: create_attack(name, embedders=["dlib-resnet29"], device=dev, **options).run(x, quantize_output=True)
           for dev in ("cpu", GPU)}
    gpu, cpu = res[GPU], res["cpu"]
    assert gpu.images.device.type == "cpu"  # returned on the input's device
    if name == "fawkes":
        assert bool(((gpu.stats["dssim"] <= 1.1 * 0.017 + 2e-4) | (gpu.stats["fallback"] == 1)).all())
        assert bool((gpu.stats["linf"] <= 15 / 255 + 1e-6).all())
    else:
        assert bool((gpu.stats["linf"] <= 50 * 0.0025 + 0.005 + 1 / 255).all())
    # the random starts are drawn on the CPU; only float rounding differs, so the cloaks are as strong
    assert gpu.stats["shift_dlib-resnet29"].mean() > 0.3
    assert abs(float(gpu.stats["shift_dlib-resnet29"].mean() - cpu.stats["shift_dlib-resnet29"].mean())) < 0.05


def test_cloak_cache_and_cli_on_the_gpu(tmp_path, johns_dir):
    paths = sorted(johns_dir.glob("*/*.jpg"))[:4]
    atk = create_attack("fawkes", mode="custom", steps=5, embedders=["dlib-resnet29"], device=GPU)
    cache = CloakCache(tmp_path / "cache")
    a, kept, _ = cache.cloak(atk, paths, progress=False)
    b, _, _ = cache.cloak(atk, paths, progress=False)
    assert len(kept) == 4 and torch.equal(a, b) and cache.cached_count(atk) == 4
    cmd = [sys.executable, "-m", "puface", "cloak", "--mode", "custom", "--steps", "5", "--surrogate", "dlib-resnet29",
           "--device", GPU, "--no-progress", str(johns_dir), str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == len(list(johns_dir.glob("*/*.jpg")))


def test_unmask_on_the_gpu_subtracts_what_it_subtracts_on_the_cpu(johns_images):
    """The shared-pattern sum lives on the photos' device (it was a CPU tensor: a device error on CUDA photos)."""
    x = johns_images[2][:11]
    mask = torch.zeros_like(x[:1])
    mask[..., ::2, ::2] = 4 / 255
    cloaked = (x + mask).clamp(0, 1)
    d = create_defense("unmask")
    cpu = d(cloaked)
    gpu = d(cloaked.to(GPU)).cpu()
    assert d.last_score is not None and torch.allclose(gpu, cpu, atol=1e-5) and not torch.equal(cpu, cloaked)
