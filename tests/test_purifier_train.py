"""Purifier training on the johns chips with synthetic cloaks and a stand-in embedder: it learns,
validates, checkpoints, resumes exactly, and runs under torchrun with 2 CPU processes (DDP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from puface.purifier import Purifier
from puface.training.config import PurifierTrainConfig
from puface.training.train import train
from puface.utils.errors import PufaceError
from purifier_support import standin_embedder, synthetic_cloak_fn

TESTS = Path(__file__).parent


def _cfg(root, **train_kw) -> PurifierTrainConfig:
    return PurifierTrainConfig.from_dict(
        {
            "seed": 0,
            "data": {"root": str(root), "heldout_min_images": None, "val_fraction": 0.2, "val_images": 6},
            "attacks": [{"name": "fawkes", "mode": "high"}, {"name": "lowkey", "images": 16}],
            "model": {"channels": 16, "depth": 4, "downsample": 1},
            "amplify": {"k_min": 1.0, "k_max": 1.0, "natural_share": 0.25},
            "loss": {"feature_weight": 0.001, "embedders": ["standin"]},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "lr": 1e-3,
                "warmup_steps": 0,
                "final_lr_fraction": 1.0,
                "grad_clip": 0.0,
                "save_every_steps": 0,
                **train_kw,
            },
            "val": {"batch_size": 16},
        }
    )


def _run(cfg, out, **kw):
    return train(cfg, out, embedders={"standin": standin_embedder()}, cloak_fn=synthetic_cloak_fn(), progress=False,
                 log=lambda s: None, **kw)


def test_training_removes_cloaks_and_keeps_natural_images(johns_dir, tmp_path):
    cfg = _cfg(johns_dir, epochs=4)
    res = _run(cfg, tmp_path / "run")
    hist = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    last = hist[-1]
    # purified cloaked images are closer to the natural ones than the cloaked ones were
    assert last["psnr_purified"] > last["psnr_cloaked"] + 0.15, last
    assert last["cos_purified_standin"] > last["cos_cloaked_standin"], last
    assert last["psnr_natural"] > 35.0, last  # natural photos pass nearly unchanged
    assert set(last["per_attack"]) == {"fawkes-high", "lowkey"}
    # best checkpoint = highest score, carrying its metrics, config and the identity split
    best = Purifier.load(res["best_path"])
    assert best.meta["metrics"]["score"] == max(h["score"] for h in hist)
    assert best.meta["config"]["model"] == cfg.model.as_dict()
    ds = best.meta["data_summary"]
    assert len(ds["train_identities"]) == 4 and len(ds["val_identities"]) == 1
    assert not set(ds["train_identities"]) & set(ds["val_identities"])
    assert Purifier.load(res["safetensors_path"]).config == cfg.model
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == cfg.as_dict()


def test_resume_after_interruption_matches_an_uninterrupted_run(johns_dir, tmp_path):
    cfg = _cfg(johns_dir, epochs=2, max_steps_per_epoch=3)
    _run(cfg, tmp_path / "full")
    stopped = _run(cfg, tmp_path / "cut", stop_after_steps=4)  # stops in epoch 2, step 1
    assert stopped["stopped"] and stopped["epoch"] == 1 and stopped["step_in_epoch"] == 1
    _run(cfg, tmp_path / "cut")  # resume
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] == 6
    # --no-resume starts over; a finished run resumed does nothing more
    again = _run(cfg, tmp_path / "cut")
    assert again["epochs"] == 2


def test_train_seed_repeats_a_run_on_the_same_data(johns_dir, tmp_path):
    """train.seed changes initialisation and batch order but not the data split; unset, it is `seed`."""
    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2)
    _run(cfg, tmp_path / "a")
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2, seed=0), tmp_path / "same")
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2, seed=1), tmp_path / "other")
    w = {n: torch.load(tmp_path / n / "last.pt", weights_only=True)["state_dict"] for n in ("a", "same", "other")}
    assert all(torch.equal(w["a"][k], w["same"][k]) for k in w["a"])
    assert not all(torch.equal(w["a"][k], w["other"][k]) for k in w["a"])
    split = [json.loads((tmp_path / n / "data_summary.json").read_text())["train_identities"] for n in ("a", "other")]
    assert split[0] == split[1]


def test_cuda_precision_forbids_tf32_inside_and_restores_after():
    """train.tf32 = false (the default) trains in full fp32 on a GPU, like a CPU; settings come back after."""
    from puface.training.train import cuda_precision, tf32_convolutions

    before = tf32_convolutions()
    with cuda_precision(False):
        assert not tf32_convolutions()
        with cuda_precision(True):
            assert tf32_convolutions()
        assert not tf32_convolutions()
    assert tf32_convolutions() == before
    assert _cfg(Path("."), epochs=1).train.tf32 is False


DDP_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from purifier_support import standin_embedder, synthetic_cloak_fn
from puface.training.config import PurifierTrainConfig
from puface.training.train import train, init_distributed, cleanup_distributed
cfg = PurifierTrainConfig.from_dict(json.loads({cfg!r}))
d = init_distributed("cpu")
res = train(cfg, {out!r}, embedders={{"standin": standin_embedder()}}, cloak_fn=synthetic_cloak_fn(), progress=False)
import torch
# every rank ends with the same weights (DDP averaged the gradients)
from puface.purifier.checkpoint import load_checkpoint
dist.barrier()
ck = load_checkpoint({out!r} + "/last.pt")
# one file per rank: the two processes' stdout interleave character by character
steps = ck['train_state']['global_step']
open({out!r} + f"/rank{{d.rank}}.txt", "w").write(f"rank {{d.rank}} of {{d.world_size}} steps {{steps}}")
cleanup_distributed()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(johns_dir, tmp_path):
    cfg = _cfg(johns_dir, epochs=2, batch_size=4, max_steps_per_epoch=3)
    script = tmp_path / "ddp_train.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS), cfg=json.dumps(cfg.as_dict()), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "rank0.txt").read_text() == "rank 0 of 2 steps 6"
    assert (out / "rank1.txt").read_text() == "rank 1 of 2 steps 6"
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2  # only rank 0 validates and writes
    assert Purifier.load(out / "best.pt").config == cfg.model


def test_init_starts_from_given_weights_and_checks_the_model(johns_dir, tmp_path):
    """[train] init: a fine-tuning run starts from a purifier's weights (a vanishing lr keeps them exactly); weights of
    another architecture are refused by name."""
    base = _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2), tmp_path / "base")
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=1, lr=1e-30, init=base["safetensors_path"]), tmp_path / "tuned")
    a = Purifier.load(base["safetensors_path"]).net.state_dict()
    b = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = torch.load(tmp_path / "base" / "last.pt", weights_only=True)["state_dict"]
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=1, lr=1e-30), tmp_path / "random")
    c = torch.load(tmp_path / "random" / "last.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(fresh[k], c[k]) for k in fresh)  # without init: a random start, not base's weights
    other = _cfg(johns_dir, epochs=1, max_steps_per_epoch=1, init=base["safetensors_path"])
    other = PurifierTrainConfig.from_dict({**other.as_dict(), "model": {"channels": 8, "depth": 4, "downsample": 1}})
    with pytest.raises(PufaceError, match="init = .*model config"):
        _run(other, tmp_path / "mismatch")


def test_face_scale_trains_the_network_at_another_scale(johns_dir, tmp_path):
    """[train] face_scale: training runs the network through the resampling (`AtFaceScale`), so the validation
    numbers are those of the purifier as it is used afterwards; the checkpoint records both layouts."""
    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2, face_scale="arcface112")
    res = _run(cfg, tmp_path / "scaled")
    p = Purifier.load(res["safetensors_path"])
    assert (p.template, p.net_template) == ("dlib150", "arcface112")
    plain = _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2), tmp_path / "plain")
    a = json.loads((tmp_path / "scaled" / "metrics.jsonl").read_text().splitlines()[-1])
    b = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert a["psnr_cloaked"] == b["psnr_cloaked"] and a["psnr_natural"] != b["psnr_natural"]
    assert Purifier.load(plain["safetensors_path"]).net_template == "dlib150"


def test_photo_variants_reach_the_training_batches(johns_dir, tmp_path):
    """[amplify] source_variants: the same run with half of its rows changed (contrast, gamma) learns other weights,
    and the variants are saved with the run's config; without them the random stream is that of older recipes."""
    base = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2)
    d = base.as_dict()
    d["amplify"] = {**d["amplify"], "source_share": 0.5, "source_variants": ["contrast:factor=1.6", "gamma:gamma=2"]}
    varied = PurifierTrainConfig.from_dict(d)
    _run(base, tmp_path / "plain")
    _run(varied, tmp_path / "varied")
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2), tmp_path / "plain-again")
    w = {
        n: torch.load(tmp_path / n / "last.pt", weights_only=True)["state_dict"]
        for n in ("plain", "varied", "plain-again")
    }
    assert all(torch.equal(w["plain"][k], w["plain-again"][k]) for k in w["plain"])
    assert not all(torch.equal(w["plain"][k], w["varied"][k]) for k in w["plain"])
    saved = json.loads((tmp_path / "varied" / "config.json").read_text())["amplify"]
    assert saved["source_variants"] == ["contrast:factor=1.6", "gamma:gamma=2"] and saved["source_share"] == 0.5
    assert "input_variants" not in saved


def test_reencoded_inputs_reach_the_training_batches(johns_dir, tmp_path):
    """[amplify] input_variants: the same run with half of its inputs and targets re-encoded as JPEG learns other
    weights, and the run's config records them."""
    base = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2)
    d = base.as_dict()
    d["amplify"] = {**d["amplify"], "input_share": 0.5, "input_variants": ["jpeg:quality=75"]}
    _run(base, tmp_path / "plain")
    _run(PurifierTrainConfig.from_dict(d), tmp_path / "jpeg")
    w = {n: torch.load(tmp_path / n / "last.pt", weights_only=True)["state_dict"] for n in ("plain", "jpeg")}
    assert not all(torch.equal(w["plain"][k], w["jpeg"][k]) for k in w["plain"])
    saved = json.loads((tmp_path / "jpeg" / "config.json").read_text())["amplify"]
    assert saved["input_variants"] == ["jpeg:quality=75"] and saved["input_share"] == 0.5


def _epochs_logged(out) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("killed", ["after_saving", "before_saving"])
def test_metrics_log_holds_each_saved_epoch_once_after_a_kill_at_the_epoch_end(
    johns_dir, tmp_path, monkeypatch, killed
):
    """A run killed at the end of epoch 1, just after (or just before) last.pt records it, resumes to a metrics.jsonl
    with epochs 1 and 2 once each (before: epoch 1 was missing when the kill came after the save)."""
    import importlib

    training = importlib.import_module(
        "puface.training.train"
    )  # the module (the package exports `train`, the function)
    cfg = _cfg(johns_dir, epochs=2, max_steps_per_epoch=2)
    real = training.save_checkpoint

    def dying(path, ck):
        if Path(path).name == "last.pt" and ck.get("epoch") == 1 and ck["train_state"]["step_in_epoch"] == 0:
            if killed == "after_saving":
                real(path, ck)
            raise KeyboardInterrupt
        return real(path, ck)

    monkeypatch.setattr(training, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "run")
    monkeypatch.setattr(training, "save_checkpoint", real)
    _run(cfg, tmp_path / "run")
    assert _epochs_logged(tmp_path / "run") == [1, 2]


def test_no_resume_starts_the_metrics_log_afresh(johns_dir, tmp_path):
    """--no-resume retrains from scratch; its metrics.jsonl holds its own epochs, not the earlier run's as well."""
    cfg = _cfg(johns_dir, epochs=2, max_steps_per_epoch=2)
    _run(cfg, tmp_path / "run")
    _run(cfg, tmp_path / "run", resume=False)
    assert _epochs_logged(tmp_path / "run") == [1, 2]


def test_no_resume_sets_the_earlier_runs_checkpoints_aside(johns_dir, tmp_path):
    """An interrupted --no-resume redo must not leave the earlier run's best.pt beside its new config (a user taking
    OUT/best.pt would get the old weights): they are renamed *.discarded.*, kept, and the new run writes its own."""
    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2)
    _run(cfg, tmp_path / "run")
    old = (tmp_path / "run" / "best.pt").read_bytes()
    assert _run(cfg, tmp_path / "run", resume=False, stop_after_steps=1)["stopped"]
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "result.json").exists()
    kept = list((tmp_path / "run").glob("best.*.discarded.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == old
    _run(cfg, tmp_path / "run", resume=False)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "result.json").is_file()


def test_a_run_folder_that_is_a_file_is_a_clear_error(johns_dir, tmp_path):
    """train-purifier --out FILE ended in a FileExistsError traceback; now one PufaceError, the file untouched."""
    (tmp_path / "afile").write_text("keep me")
    for out, message in (
        (tmp_path / "afile", "afile is a file, not a folder"),
        (tmp_path / "afile" / "run", "lies below"),
    ):
        with pytest.raises(PufaceError, match=message):
            _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=1), out)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_resume_with_another_config_is_refused_and_keeps_the_recorded_one(johns_dir, tmp_path):
    """Resuming last.pt with other settings (here train.lr, the seed) is refused naming them, and config.json still
    says how the run was made (before: the run went on with the new settings and config.json was overwritten);
    settings that change no result (data.cache, data.cloak_batch_size, val.batch_size) may differ."""
    cfg = _cfg(johns_dir, epochs=2, max_steps_per_epoch=2)
    assert _run(cfg, tmp_path / "run", stop_after_steps=1)["stopped"]
    recorded = (tmp_path / "run" / "config.json").read_text()
    for changed, key in ((_cfg(johns_dir, epochs=2, max_steps_per_epoch=2, lr=2e-3), "train.lr"),
                         (PurifierTrainConfig.from_dict({**cfg.as_dict(), "seed": 1}), "seed")):
        with pytest.raises(PufaceError, match=key):
            _run(changed, tmp_path / "run")
        assert (tmp_path / "run" / "config.json").read_text() == recorded
    fewer = tmp_path / "fewer"  # data.root may move, but not to other data
    for ident in sorted(p for p in johns_dir.iterdir() if p.is_dir())[1:]:
        (fewer / ident.name).mkdir(parents=True)
        for f in ident.iterdir():
            (fewer / ident.name / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PufaceError, match="other data"):
        _run(_cfg(fewer, epochs=2, max_steps_per_epoch=2), tmp_path / "run")
    assert (tmp_path / "run" / "config.json").read_text() == recorded
    same = PurifierTrainConfig.from_dict({**cfg.as_dict(), "data": {**cfg.as_dict()["data"], "cloak_batch_size": 2},
                                          "val": {"batch_size": 4}})
    assert _run(same, tmp_path / "run")["epochs"] == 2


def test_the_saved_config_json_reruns_the_run(johns_dir, tmp_path):
    """OUT/config.json, the config saved next to the results, is itself a config `--config` reads (before: 'not
    valid TOML'), and training from it repeats the run weight for weight."""
    from puface.training.config import load_config

    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=2)
    _run(cfg, tmp_path / "run")
    again = load_config(tmp_path / "run" / "config.json")
    assert again == cfg
    _run(again, tmp_path / "again")
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["state_dict"] for n in ("run", "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_validation_identities_is_said(johns_dir, tmp_path):
    """Too few identities for a validation share: the run says it validates on training pairs (before: silently)."""
    from puface.training.train import prepare_data

    cfg = _cfg(johns_dir, epochs=1)
    cfg = PurifierTrainConfig.from_dict({**cfg.as_dict(), "data": {**cfg.as_dict()["data"], "val_fraction": 0.05}})
    said: list[str] = []
    _, _, summary = prepare_data(cfg, cloak_fn=synthetic_cloak_fn(), log=said.append, progress=False)
    assert summary["val_identities"] == []
    assert any("no validation identities" in s and "training pairs" in s for s in said), said


def test_every_run_file_is_placed_by_an_atomic_rename(johns_dir, tmp_path, monkeypatch):
    """Each file a run leaves is written under a temporary name and renamed into place, so a kill (-9) never leaves
    part of one (before: data_summary.json and result.json were written in place and metrics.jsonl appended to)."""
    real = os.replace
    placed: dict[str, bytes] = {}

    def spy(src, dst):
        real(src, dst)
        placed[Path(dst).name] = Path(dst).read_bytes()

    monkeypatch.setattr(os, "replace", spy)
    out = tmp_path / "run"
    _run(_cfg(johns_dir, epochs=2, max_steps_per_epoch=2), out)
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(
        ["config.json", "data_summary.json", "metrics.jsonl", "last.pt", "best.pt", "best.safetensors", "result.json"]
    )
    for name in left:
        assert placed.get(name) == (out / name).read_bytes(), f"{name} was not written by a rename"


def test_a_face_model_or_init_that_does_not_load_is_said_before_any_cloak(johns_dir, tmp_path):
    """A typo in loss.embedders, val.embedders or train.init stopped the run only after every cloak was made (hours
    for the shipped recipe); now it stops first, naming the setting, and leaves no run folder."""
    calls: list[dict] = []
    cloak = synthetic_cloak_fn()

    def counting(spec, paths):
        calls.append(spec)
        return cloak(spec, paths)

    base = _cfg(johns_dir, epochs=1, max_steps_per_epoch=1).as_dict()
    for edit, setting in ((lambda d: d["loss"].update(embedders=["standin", "no-such-model"]), "loss.embedders"),
                          (lambda d: d["val"].update(embedders=["no-such-model"]), "val.embedders"),
                          (lambda d: d["train"].update(init=str(tmp_path / "missing.safetensors")), "init")):
        d = json.loads(json.dumps(base))
        edit(d)
        out = tmp_path / setting
        with pytest.raises(PufaceError, match=setting):
            train(PurifierTrainConfig.from_dict(d), out, embedders={"standin": standin_embedder()}, cloak_fn=counting,
                  progress=False, log=lambda s: None)
        assert not calls and not out.exists()


def test_no_resume_keeps_the_earlier_runs_config_and_metrics_with_its_checkpoints(johns_dir, tmp_path):
    """--no-resume set the earlier run's checkpoints aside but emptied its metrics.jsonl and overwrote its config.json
    (its record of how they were made); now they are set aside with them."""
    out = tmp_path / "run"
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=2), out)
    old = {n: (out / n).read_bytes() for n in ("config.json", "metrics.jsonl", "data_summary.json")}
    _run(_cfg(johns_dir, epochs=2, max_steps_per_epoch=2), out, resume=False, stop_after_steps=1)
    for name, data in old.items():
        p = Path(name)
        kept = list(out.glob(f"{p.stem}.*.discarded{p.suffix}"))
        assert len(kept) == 1 and kept[0].read_bytes() == data, name
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("mistake", ["attack", "data"])
def test_a_no_resume_redo_with_a_mistake_leaves_the_earlier_run_in_place(mistake, johns_dir, tmp_path):
    """--no-resume over a finished run with a typo in an attack's name, or --data naming a folder of images without
    identity folders: the earlier run's files were set aside (*.discarded.*) and a config.json of the broken recipe
    written before the mistake was found; now nothing in OUT changes."""
    out = tmp_path / "run"
    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=1)
    _run(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = json.loads(json.dumps(cfg.as_dict()))
    if mistake == "attack":
        bad["attacks"][0]["name"] = "fawks"
        message, kw = "unknown attack 'fawks'", {}
    else:
        bad["data"]["root"] = str(next(johns_dir.iterdir()))
        message, kw = "no identity folders", {"cloak_fn": synthetic_cloak_fn()}
    with pytest.raises(PufaceError, match=message):
        train(PurifierTrainConfig.from_dict(bad), out, resume=False, embedders={"standin": standin_embedder()},
              progress=False, log=lambda s: None, **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _copy_tree(src: Path, dst: Path) -> Path:
    for f in sorted(src.glob("*/*")):
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        (dst / f.parent.name / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_run_folder_in_the_data_or_holding_another_tools_config_is_refused(johns_dir, tmp_path):
    """--out inside --data (or the data folder itself) and a folder whose config.json is not a training run's were
    trained into (the latter's config.json overwritten); now one error each, nothing written."""
    data = _copy_tree(johns_dir, tmp_path / "data")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out, message in ((data / "run", "inside the input folder"), (data, "is the input folder")):
        with pytest.raises(PufaceError, match=message):
            _run(_cfg(data, epochs=1, max_steps_per_epoch=1), out)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    other = tmp_path / "model"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(PufaceError, match="not the config of a purifier training run"):
        _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=1), other)
    assert (other / "config.json").read_text() == '{"model_type": "bert"}' and len(list(other.iterdir())) == 1


def test_the_temporaries_of_a_killed_run_are_removed(johns_dir, tmp_path):
    """A run killed while writing a checkpoint left its hidden .last.pt.PID.tmp for ever; a run in that folder now
    removes the temporaries of processes that no longer run (and keeps a live one's)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / f".last.pt.{dead.pid}.1.tmp", out / f".metrics.jsonl.{dead.pid}.2.tmp"]
    live = out / f".best.pt.{os.getpid()}.3.tmp"
    for p in (*stale, live):
        p.write_bytes(b"partial")
    _run(_cfg(johns_dir, epochs=1, max_steps_per_epoch=1), out)
    assert not any(p.exists() for p in stale) and live.exists()


def test_resuming_a_finished_run_says_it_is_finished(johns_dir, tmp_path):
    """Rerunning a finished run said 'resuming from last.pt: epoch 2, step 0' of a 1-epoch run; now it says the run is
    finished and trains nothing (the checkpoint is left as it was)."""
    cfg = _cfg(johns_dir, epochs=1, max_steps_per_epoch=1)
    _run(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    said: list[str] = []
    train(cfg, tmp_path / "run", embedders={"standin": standin_embedder()}, cloak_fn=synthetic_cloak_fn(),
          progress=False, log=said.append)
    assert any("the run is finished (1 epochs); nothing to train" in s for s in said), said
    assert not any(s.startswith("resuming") for s in said) and (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_resume_on_other_pixels_or_other_cloaks_is_refused(johns_dir, tmp_path):
    """A resume compares the pairs' contents, not only the identity names and pair counts: one training image
    edited in place (same name, same count) or other cloaks of the same images (a cloak cache made with other
    surrogate weights, another cloaked folder) are other data (before: the run went on over both without a word).
    The same data under another root resumes."""
    from puface.io.images import read_image, write_image

    data = tmp_path / "data"
    for ident in sorted(p for p in johns_dir.iterdir() if p.is_dir()):
        (data / ident.name).mkdir(parents=True)
        for f in ident.iterdir():
            (data / ident.name / f.name).write_bytes(f.read_bytes())
    cfg = _cfg(data, epochs=2, max_steps_per_epoch=2)
    assert _run(cfg, tmp_path / "run", stop_after_steps=1)["stopped"]
    with pytest.raises(PufaceError, match="other data.*train_content"):  # other cloaks of the same images
        train(cfg, tmp_path / "run", embedders={"standin": standin_embedder()}, cloak_fn=synthetic_cloak_fn(4 / 255),
              progress=False, log=lambda s: None)
    moved = tmp_path / "moved"
    data.rename(moved)
    assert _run(_cfg(moved, epochs=2, max_steps_per_epoch=2), tmp_path / "run", stop_after_steps=1)["stopped"]
    for ident in sorted(p for p in moved.iterdir() if p.is_dir()):  # one image of each: the training ones too
        edited = sorted(ident.glob("*.jpg"))[0]
        img = read_image(edited)
        img[:10, :10] = 255 - img[:10, :10]
        write_image(edited, img)
    with pytest.raises(PufaceError, match="other data.*content.*other pixels of the images"):
        _run(_cfg(moved, epochs=2, max_steps_per_epoch=2), tmp_path / "run")
    # a checkpoint from before the contents were recorded resumes as before (names and counts) and records them
    last = tmp_path / "run" / "last.pt"
    ck = torch.load(last, weights_only=True)
    was = ck["data_summary"].pop("train_content"), ck["data_summary"].pop("val_content")
    torch.save(ck, last)
    _run(_cfg(moved, epochs=2, max_steps_per_epoch=2), tmp_path / "run")
    now = torch.load(last, weights_only=True)["data_summary"]
    assert now["train_content"]["natural"] != was[0]["natural"] and set(now["val_content"]) == {"natural", "cloaked"}


def test_an_attack_mistake_in_a_config_file_names_the_file_and_the_entry(johns_dir, tmp_path):
    """`train-purifier --config mine.toml` with a misspelt attack said `attack 'fawks-high': unknown attack ...` without
    the file (its config did not keep where it came from); now the file and the entry, as experiment configs do."""
    import re

    from puface.training.config import load_config
    from puface.utils.tomlconfig import to_toml

    d = _cfg(johns_dir, epochs=1, max_steps_per_epoch=1).as_dict()
    d["attacks"][0]["name"] = "fawks"
    path = tmp_path / "mine.toml"
    path.write_text(to_toml(d))
    cfg = load_config(path)
    with pytest.raises(PufaceError, match=re.escape(f"{path} [[attacks]] 'fawks-high': unknown attack 'fawks'")):
        train(cfg, tmp_path / "run", embedders={"standin": standin_embedder()}, progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()
    d["attacks"][1]["label"] = d["attacks"][0]["label"] = "twice"
    path.write_text(to_toml(d))
    with pytest.raises(PufaceError, match=re.escape(f"{path}: attack labels must be unique")):
        train(load_config(path), tmp_path / "run", embedders={"standin": standin_embedder()}, progress=False,
              log=lambda s: None)
