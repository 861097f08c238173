"""tools/: the logistics scripts behind the GPU runs (evaluation-cloak packs, checkpoint splits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_experiments import tools_module


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "grid.toml"
    cfg.write_text('extends = "demo"\nname = "t"\n[users]\ncount = 2\n')
    return cfg


def test_gpu_eval_cloaks_pack_and_check(tmp_path, johns_dir, monkeypatch, capsys):
    """pack copies exactly the protected users' training images (byte for byte, for every seed asked);
    check counts none of them as cached in an empty cache and exits non-zero."""
    from puface.evaluation.data import EvaluationData, choose_users

    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    mod = tools_module("gpu_eval_cloaks")
    cfg = _config(tmp_path)
    out = tmp_path / "pack"
    args = type("A", (), dict(config=str(cfg), labels=["lowkey-s15"], seeds="0,1", data=str(johns_dir), out=str(out)))
    mod.pack(args)
    manifest = json.loads((out / "manifest.json").read_text())
    for seed in (0, 1):
        data = EvaluationData.prepare(johns_dir, seed=seed)
        users = choose_users(data, count=2, seed=seed)
        want = [Path(data.train.paths[i]) for u in users for i in data.train.rows_of(u)]
        entry = manifest["seeds"][str(seed)]
        assert entry["users"] == list(users)
        assert entry["files"] == [f"{p.parent.name}__{p.name}" for p in want]
        for p, name in zip(want, entry["files"]):
            assert (out / "images" / name).read_bytes() == p.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.make(type("A", (), dict(pack=str(out)))(), cached_only=True)
    n = len(manifest["seeds"]["0"]["files"]) + len(manifest["seeds"]["1"]["files"])
    assert f"0/{n} cached" in capsys.readouterr().out


def test_gpu_eval_cloaks_refuses_targeted_attacks(tmp_path, johns_dir):
    mod = tools_module("gpu_eval_cloaks")
    cfg = _config(tmp_path)
    with pytest.raises(SystemExit, match="only untargeted LowKey"):
        mod._attack(str(cfg), "fawkes-high-s40", 0, None)
    with pytest.raises(SystemExit, match="no attack labelled 'nope'"):
        mod._attack(str(cfg), "nope", 0, None)


def test_ckpt_full_split_restores_the_heldout_list(tmp_path, johns_dir):
    """A purifier trained on a copy holding only its train/val identities gets the full data's held-out
    identities recorded (weights untouched); a data set whose split differs is refused."""
    import shutil

    import torch

    from puface.utils.fingerprint import module_fingerprint
    from puface.purifier import Purifier, RedNetConfig
    from puface.training.data import purifier_identities

    people = sorted(d.name for d in johns_dir.iterdir() if d.is_dir())
    full = tmp_path / "full"
    sizes = {}
    for i, name in enumerate(people):  # two identities with 11 images (held out), the rest with 4
        files = sorted((johns_dir / name).glob("*.jpg"))[: 11 if i < 2 else 4]
        (full / name).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, full / name / f.name)
        sizes[name] = len(files)
    small = {k: v for k, v in sizes.items() if v < 10}
    split = purifier_identities(small, heldout_min_images=10, val_fraction=0.34, seed=3)
    summary = {"root": "/tmp/gpu/data", "train_identities": split.train, "val_identities": split.val,
               "heldout_identities": [], "split": {"seed": 3, "heldout_min_images": 10, "heldout_fraction": 0.0,
                                                   "val_fraction": 0.34, "max_per_identity": None}}
    torch.manual_seed(0)
    ckpt = Purifier(RedNetConfig(channels=8, depth=4, downsample=1), meta={"data_summary": summary}).save(
        tmp_path / "p.safetensors"
    )

    mod = tools_module("ckpt_full_split")
    p, got = mod.full_split(ckpt, full)
    assert got["heldout_identities"] == people[:2] and got["root"] == str(full.resolve())
    assert got["train_identities"] == split.train and module_fingerprint(p) == module_fingerprint(Purifier.load(ckpt))

    shutil.rmtree(full / people[-1])  # another data set: the split no longer matches
    with pytest.raises(SystemExit, match="differ from"):
        mod.full_split(ckpt, full)
