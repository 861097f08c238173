"""A purifier records the face layout it was trained on (`[data] template`), and purification gives each
layout's images to the purifier trained on it: `Purifier.load_layouts`, `make_batch_process` with one purifier
per layout, and `--weights NAME` for the shipped ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puface.io.jobs import FileJob, LoadedImage, call_process
from puface.purifier import Purifier
from puface.purifier.folder import make_batch_process
from puface.training.config import PurifierTrainConfig
from puface.utils.errors import ConfigError, PufaceError
from puface.utils.images import tensor_to_image, to_float


def _tiny(template: str, seed: int) -> Purifier:
    torch.manual_seed(seed)
    p = Purifier({"channels": 8, "depth": 2, "downsample": 1}, meta={"config": {"data": {"template": template}}})
    with torch.no_grad():
        for w in p.parameters():
            w.copy_(torch.randn_like(w) * 0.2)  # a visible change (the last layer starts at zero), different per seed
    return p.eval()


def _items(images: list[np.ndarray]) -> list[LoadedImage]:
    return [LoadedImage(FileJob(*(f"i{k}",) * 3), a) for k, a in enumerate(images)]


def _tensor(a: np.ndarray) -> torch.Tensor:
    return to_float(torch.from_numpy(a).permute(2, 0, 1)[None])


def test_the_training_config_records_a_known_template():
    cfg = PurifierTrainConfig.from_dict({"data": {"root": "x", "template": "arcface112"}})
    assert cfg.as_dict()["data"]["template"] == "arcface112"
    assert PurifierTrainConfig.from_dict({"data": {"root": "x"}}).data.template == "dlib150"
    with pytest.raises(ConfigError, match="data.template must be one of dlib150, arcface112"):
        PurifierTrainConfig.from_dict({"data": {"root": "x", "template": "arcface128"}})
    assert _tiny("arcface112", 0).template == "arcface112"


def test_each_layout_goes_to_the_purifier_trained_on_it():
    a, b = _tiny("dlib150", 0), _tiny("arcface112", 1)
    rng = np.random.default_rng(0)
    chip, crop, odd = (rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (150, 112, 96))
    process = make_batch_process({"dlib150": a, "arcface112": b}, torch.device("cpu"), warn=lambda m: None)
    out = [o.image for o in call_process(process, _items([chip, crop, odd]))]
    assert np.array_equal(out[0], tensor_to_image(a.purify(_tensor(chip))[0]))
    assert np.array_equal(out[1], tensor_to_image(b.purify(_tensor(crop))[0]))  # natively, no resampling
    assert np.array_equal(out[2], tensor_to_image(a.purify(_tensor(odd))[0]))   # neither size: the dlib150 one
    assert not np.array_equal(out[1], tensor_to_image(a.purify(_tensor(crop), template="arcface112")[0]))
    # one purifier serves the other layout by resampling to its own face scale
    alone = make_batch_process(b, torch.device("cpu"))
    got = call_process(alone, _items([chip]))[0].image
    assert np.array_equal(got, tensor_to_image(b.purify(_tensor(chip), template="dlib150")[0]))
    assert not np.array_equal(got, tensor_to_image(b.purify(_tensor(chip))[0]))


def test_load_layouts_of_a_file_is_that_purifier_only(tmp_path):
    p = _tiny("arcface112", 2)
    p.save(tmp_path / "p.safetensors")
    layouts = Purifier.load_layouts(tmp_path / "p.safetensors")
    assert list(layouts) == ["arcface112"]
    with pytest.raises(PufaceError, match="no shipped purifier named 'nope'"):
        from puface.purifier.model import shipped_weights_path

        shipped_weights_path("nope")


def test_a_network_at_another_face_scale_is_resampled_in_use():
    """`[train] face_scale`: a purifier of arcface112 crops whose network runs at the dlib150 face scale resizes
    the crops by 1.494 and adds back only the change; at its own scale the forward pass is the plain net."""
    from puface.purifier.model import AtFaceScale, template_scale

    p = _tiny("arcface112", 3)
    p.meta["config"]["train"] = {"face_scale": "dlib150"}
    assert (p.template, p.net_template) == ("arcface112", "dlib150")
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        want = AtFaceScale.run(p.net, x, template_scale("arcface112", "dlib150"))
        assert torch.equal(p(x), want) and not torch.allclose(want, p.net(x), atol=1e-3)
        assert torch.allclose(p.purify(x), want.clamp(0, 1), atol=1e-5)  # purify returns [0, 1]
        y = torch.rand(1, 3, 150, 150)
        assert torch.equal(p.forward_template(y, "dlib150"), p.net(y))  # dlib150 chips: the network's own scale
    plain = _tiny("dlib150", 4)
    with torch.no_grad():
        z = torch.rand(1, 3, 150, 150)
        assert torch.equal(plain(z), plain.net(z))  # existing purifiers: bit for bit the plain network
    with pytest.raises(ConfigError, match="train.face_scale must be one of"):
        PurifierTrainConfig.from_dict({"data": {"root": "x"}, "train": {"face_scale": "arcface"}})
