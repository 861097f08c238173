"""Purifier checkpoints: .pt and .safetensors round trips, weights_only loading, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from puface.utils.errors import PufaceError
from puface.purifier import Purifier, RedNetConfig
from puface.purifier.checkpoint import load_checkpoint


def _trained_looking(seed=0) -> Purifier:
    torch.manual_seed(seed)
    p = Purifier(RedNetConfig(channels=8, depth=4, downsample=1),
                 meta={"config": {"seed": seed, "model": {"channels": 8}},
                       "data_summary": {"heldout_identities": ["A", "B"], "train_identities": ["C"]},
                       "metrics": {"psnr_natural": 41.5}, "epoch": 3})
    for prm in p.parameters():
        nn.init.normal_(prm, std=0.05)
    return p


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_keeps_weights_config_and_summary(tmp_path, suffix):
    p = _trained_looking()
    path = p.save(tmp_path / f"purifier{suffix}")
    q = Purifier.load(path)
    x = torch.rand(2, 3, 40, 36)
    assert torch.equal(p(x), q(x))
    assert q.config == p.config
    assert q.meta["config"] == {"seed": 0, "model": {"channels": 8}}
    assert q.heldout_identities == ["A", "B"] and q.training_identities == ["C"]
    assert q.meta["metrics"]["psnr_natural"] == 41.5
    assert q.meta["puface_version"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file
    assert (path.stat().st_mode & 0o044) == 0o044  # readable like any other file


def test_pt_loads_with_weights_only(tmp_path):
    path = _trained_looking().save(tmp_path / "p.pt")
    ck = torch.load(path, weights_only=True)
    assert ck["format"] == "puface-purifier"
    assert ck["model_config"] == RedNetConfig(channels=8, depth=4, downsample=1).as_dict()
    assert set(ck["state_dict"]) == set(Purifier(ck["model_config"]).net.state_dict())
    json.dumps({k: v for k, v in ck.items() if k != "state_dict"})  # metadata is plain JSON


def test_safetensors_metadata_is_json(tmp_path):
    from safetensors import safe_open

    path = _trained_looking().save(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["puface"])
    assert meta["format"] == "puface-purifier" and meta["data_summary"]["heldout_identities"] == ["A", "B"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(PufaceError, match="not found"):
        Purifier.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PufaceError, match="junk.pt"):
        Purifier.load(junk)
    photo = tmp_path / "face.jpg"  # an image passed as --weights: say what it is not, not a bare KeyError
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(
        PufaceError, match=r"face\.jpg: not a purifier checkpoint \(expected a puface \.safetensors or torch \.pt"
    ) as e:
        Purifier.load(photo)
    assert "\n" not in str(e.value)  # one line, not torch's paragraph
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage, not safetensors")
    with pytest.raises(PufaceError, match="fake.safetensors: not a purifier checkpoint"):
        Purifier.load(fake)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(PufaceError, match="not a puface purifier"):
        load_checkpoint(other)
    bad = tmp_path / "bad.pt"
    ck = _trained_looking().checkpoint()
    ck["model_config"] = {**ck["model_config"], "channels": 16}
    torch.save(ck, bad)
    with pytest.raises(PufaceError, match="do not match"):
        Purifier.load(bad)


def test_default_purifier_ships_and_loads():
    p = Purifier.load()
    x = torch.rand(1, 3, 150, 150)
    y = p.purify(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    # it was trained: not the identity, and it declares its held-out identities
    assert not torch.equal(y, x)
    assert len(p.heldout_identities) > 0 and not set(p.heldout_identities) & set(p.training_identities)


def test_shipped_weights_carry_no_machine_paths():
    """The metadata of every file in puface/weights/ names data sets, not the folders of the machine that trained it."""
    import re

    from safetensors import safe_open

    from puface.purifier.model import shipped_weights_path

    files = sorted(shipped_weights_path().parent.glob("*.safetensors"))
    assert len(files) >= 3  # two purifiers and the detector
    for f in files:
        with safe_open(str(f), "pt") as h:
            text = json.dumps(h.metadata())
        assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"|/(root|home|tmp|work)/', text), f.name


def test_a_checkpoint_without_its_model_config_is_one_clear_error(tmp_path):
    """A hand-made safetensors file with puface metadata but no model config: a PufaceError naming what is
    missing, not a KeyError from deep inside `Purifier.load`."""
    from safetensors.torch import save_file

    from puface.purifier.checkpoint import FORMAT

    path = tmp_path / "made-by-hand.safetensors"
    save_file(
        {"w": torch.zeros(2)}, str(path), metadata={"puface": json.dumps({"format": FORMAT, "format_version": 1})}
    )
    with pytest.raises(PufaceError, match="incomplete purifier checkpoint .no model_config."):
        load_checkpoint(path)
    with pytest.raises(PufaceError, match="incomplete purifier checkpoint"):
        Purifier.load(path)
