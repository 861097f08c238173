"""What every registered embedder, attack, defense and trainer must satisfy, parametrised over the
registries: a new entry is tested the moment it is registered (with the cheap options of its `fast`
registry info, when it declares them).

    embedder   (N, 3, H, W) in [0, 1], any size -> (N, D) unit rows; deterministic; differentiable
    attack     images -> same shape in [0, 1] within its L-inf budget; per-image stats; bit-identical
               under a seed; its config round-trips through JSON
    defense    images -> same shape, dtype and device in [0, 1]; deterministic and per image; its config
               rebuilds the same defense; an attacker's gradient estimate reaches the input
    trainer    fit(images, labels) / predict(images) -> known labels; deterministic; config round-trips
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from puface.attacks import ATTACKS, create_attack
from puface.attacks.base import AttackResult
from puface.defenses import DEFENSES, create_defense
from puface.evaluation.trainers import TRAINERS, create_trainer
from puface.models.registry import EMBEDDERS, create_embedder, list_embedders

from evaluation_helpers import tiny_conv_embedder, write_colour_faces
from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
list_embedders()  # the built-in embedders register on first use


def _fast(registry, name: str) -> dict:
    return dict(registry.get(name).info.get("fast", {}))


@pytest.fixture(scope="module")
def faces(small_chips):
    """4 johns chips at 48 px, float [0, 1]."""
    return small_chips(step=13, count=4)


# ------------------------------------------------------------------ embedders

@pytest.fixture(scope="module", params=EMBEDDERS.names())
def embedder(request):
    return create_embedder(request.param)


def test_embedder_contract(embedder, faces):
    for x in (faces, torch.nn.functional.interpolate(faces, size=(150, 150), mode="bilinear", align_corners=False)):
        e = embedder(x)
        assert e.shape == (len(x), embedder.embedding_dim) and e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=1), torch.ones(len(x)), atol=1e-5, rtol=0)
        torch.testing.assert_close(embedder(x), e, atol=0, rtol=0)  # deterministic
    x = faces[:1].clone().requires_grad_(True)
    embedder(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    info = json.loads(json.dumps(embedder.describe()))
    assert info["name"] == embedder.name and len(embedder.fingerprint()) == 16
    # an empty batch is (0, D), warped layouts (SFace's ArcFace 112) included
    assert embedder(faces[:0]).shape == (0, embedder.embedding_dim)


# ------------------------------------------------------------------ attacks

@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, faces):
    def make(seed: int):
        return create_attack(name, embedders=[tiny_embedder()], seed=seed, device="cpu", **_fast(ATTACKS, name))

    atk = make(0)
    # a group attack (OPOM, unlearnable examples) cloaks the call as one labelled group: two identities here
    extra = {"labels": ["a", "a", "b", "b"][: len(faces)]} if getattr(atk, "group", False) else {}
    res = atk.run(faces, quantize_output=True, **extra)
    x = res.images
    assert x.shape == faces.shape and x.dtype == faces.dtype and x.device == faces.device
    assert x.min() >= 0 and x.max() <= 1 and not torch.equal(x, faces)
    torch.testing.assert_close(x * 255, (x * 255).round(), atol=1e-4, rtol=0)  # quantize_output: on the 8-bit grid
    for stat in ("dssim", "psnr", "linf", "shift_tiny"):
        assert res.stats[stat].shape == (len(faces),), stat
    if atk.linf_budget is not None:
        assert (x - faces).abs().max() <= atk.linf_budget + 0.5 / 255 + 1e-6
    assert torch.equal(make(0)(faces, **extra), atk(faces, **extra))  # bit-identical under a seed
    assert not torch.equal(make(1)(faces, **extra), atk(faces, **extra))
    cfg = atk.config
    assert json.loads(json.dumps(cfg)) == cfg and cfg["attack"] == name and cfg["seed"] == 0
    assert make(0).config == cfg and make(1).config != cfg  # the cache key follows the settings
    # no image: a well-formed empty result, with the stats every result holds (it had none: res.stats["dssim"] was a
    # KeyError), and one that adds nothing when concatenated first (it dropped every stat of the results after it)
    empty = atk.run(faces[:0], **({"labels": []} if extra else {}))
    assert empty.images.shape == (0, *faces.shape[1:]) and empty.rows() == []
    assert {k: v.shape for k, v in empty.stats.items()} == {k: (0,) for k in ("dssim", "psnr", "linf", "shift_tiny")}
    both = AttackResult.concat([empty, res])
    assert torch.equal(both.images, res.images) and both.stats.keys() == res.stats.keys()


# ------------------------------------------------------------------ defenses

@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, faces):
    d = create_defense(name, **_fast(DEFENSES, name))
    y = d(faces)
    assert y.shape == faces.shape and y.dtype == faces.dtype and y.device == faces.device
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(d(faces), y)  # deterministic
    torch.testing.assert_close(d(faces[1:2]), y[1:2], atol=1 / 255, rtol=0)  # each image on its own
    assert d(faces[:0]).shape == faces[:0].shape
    again = create_defense(json.loads(json.dumps(d.config)))
    assert again.cache_key == d.cache_key and again.name == d.name and d.name
    for gradient in ("exact", "bpda"):
        x = faces[:2].clone().requires_grad_(True)
        out = d.gradient_estimate(x, gradient)
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), gradient


# ------------------------------------------------------------------ trainers

@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    from puface.evaluation.data import EvaluationData

    return EvaluationData.prepare(write_colour_faces(tmp_path_factory.mktemp("contract")), seed=0, image_size=32)


@pytest.mark.parametrize("name", TRAINERS.names())
def test_trainer_contract(name, colour_set):
    train, test = colour_set.train, colour_set.test
    options = {"device": "cpu", **_fast(TRAINERS, name)} if name == "e2e" else _fast(TRAINERS, name)

    def fit():
        return create_trainer(name, tiny_conv_embedder(0), **options).fit(train.images, train.labels)

    model = fit()
    pred = model.predict(test.images)
    assert len(pred) == len(test) and set(pred.tolist()) <= set(train.labels.tolist())
    assert np.array_equal(fit().predict(test.images), pred)  # deterministic
    cfg = json.loads(json.dumps(model.config))
    params = {k: v for k, v in cfg.items() if k not in ("name", "embedder")}
    assert cfg["name"] == name and create_trainer(name, tiny_conv_embedder(0), **params).config == model.config


# ------------------------------------------------------------------ spec values

def _numeric_option(registry, name: str) -> str | None:
    """A option of `name` that takes a number: from its fast options, else its signature's numeric defaults."""
    fast = _fast(registry, name)
    key = next((k for k, v in fast.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    if key is None:
        sig = registry.get(name).signature()
        params = sig.parameters.values() if sig is not None else []
        key = next(
            (p.name for p in params if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)), None
        )
    return key


@pytest.mark.parametrize(
    "kind, name",
    [("attack", n) for n in ATTACKS.names()]
    + [("defense", n) for n in DEFENSES.names()]
    + [("trainer", n) for n in TRAINERS.names()],
)
def test_text_where_a_number_goes_is_one_config_error(kind, name):
    """`steps=abc` in a spec is a `ConfigError` naming the option, not a TypeError from deep inside."""
    from puface.utils.errors import ConfigError

    registry = {"attack": ATTACKS, "defense": DEFENSES, "trainer": TRAINERS}[kind]
    key = _numeric_option(registry, name)
    if key is None:
        pytest.skip(f"{kind} {name} takes no number")
    options = {**_fast(registry, name), key: "abc"}
    with pytest.raises(ConfigError, match=f"{key} must be a number, got 'abc'"):
        if kind == "attack":
            create_attack(name, **options)
        elif kind == "defense":
            create_defense({"name": name, **options})
        else:
            TRAINERS.check(name, tiny_conv_embedder(), **options)


def test_text_where_a_bool_goes_is_one_config_error():
    """`e2e:flip=no` is refused (it ran with flips, as bool("no") is true); true / false / 0 / 1 pass."""
    from puface.utils.errors import ConfigError

    for value in ("no", "off", 2):
        with pytest.raises(ConfigError, match="flip must be true or false"):
            create_trainer("e2e", tiny_conv_embedder(), flip=value)
    for value, flip in ((False, False), (0, False), (1, True), (True, True)):
        assert create_trainer("e2e", tiny_conv_embedder(), flip=value).config["flip"] is flip


# an int spelling of a float knob, a whole-float spelling of an int knob, 0 / 1 for a bool: same settings as the
# canonical spelling; text where a bool goes, a fraction where an int goes: one ConfigError
_SPELLINGS = {
    "fawkes": (
        {"mode": "custom", "lr": 15, "steps": 3.0, "targeted": 0},
        {"mode": "custom", "lr": 15.0, "steps": 3},
        {"save_last_on_failed": "no"},
        {"mode": "custom", "steps": 2.5},
    ),
    "lowkey": ({"blur_sigma": 3, "steps": 2.0, "flip_tta": 1}, {"steps": 2}, {"flip_tta": "off"}, {"steps": 1.5}),
    "opom": ({"epsilon": 8, "steps": 2.0}, {"steps": 2}, {"random_start": "no"}, {"steps": 0.5}),
    "unlearnable": ({"epsilon": 8, "steps": 2.0}, {"steps": 2}, None, {"train_steps": 2.5}),
}


@pytest.mark.parametrize("name", sorted(_SPELLINGS))
def test_attack_settings_spelled_alike_share_a_config(name):
    """`opom:epsilon=8` is `opom` (epsilon 8.0): same config, so the same cloak cache key; `random_start=no` is
    refused, not taken as true; `steps=2.5` is a ConfigError, not a TypeError from inside the attack."""
    from puface.utils.errors import ConfigError

    loose, canonical, bad_bool, fraction = _SPELLINGS[name]

    def make(**options):
        return create_attack(name, embedders=[tiny_embedder()], device="cpu", **options)

    a, b = make(**loose), make(**canonical)
    assert json.dumps(a.config, sort_keys=True) == json.dumps(b.config, sort_keys=True)
    if bad_bool is not None:  # unlearnable has no bool knob
        with pytest.raises(ConfigError, match="must be true or false"):
            make(**bad_bool)
    with pytest.raises(ConfigError, match="must be an integer"):
        make(**fraction)


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("key, value", [("seed", "abc"), ("batch_size", "abc"), ("seed", 1.5), ("batch_size", 2.5)])
def test_an_attacks_seed_and_batch_size_must_be_integers(name, key, value):
    """`lowkey:seed=abc` (every attack spec takes seed and batch_size) is a ConfigError naming the option, not a
    ValueError / TypeError from inside; whole numbers in any spelling are the same attack."""
    from puface.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{key} must be an integer, got {value!r}"):
        create_attack(name, embedders=[tiny_embedder()], device="cpu", **{key: value})
    atk = create_attack(name, embedders=[tiny_embedder()], device="cpu", seed=3.0, batch_size=np.int64(4))
    assert (atk.seed, atk.batch_size) == (3, 4) and type(atk.seed) is int and type(atk.batch_size) is int


def test_models_refuse_images_that_are_not_float_in_0_1(faces, tmp_path, monkeypatch):
    """0..255 values or uint8 into an embedder, a defense, the purifier or the detector: a ValueError that says
    what to do, not white images or an ordinary-looking score; float64 is taken as float32."""
    import puface
    from puface.detection.detector import detector_path

    x = faces.float()
    emb, defense, purifier = create_embedder("dlib-resnet29"), create_defense("jpeg:quality=75"), puface.load_purifier()
    for call in (emb, defense, purifier.purify, puface.load_detector().score):
        with pytest.raises(ValueError, match=r"expected values in \[0, 1\].*divide by 255"):
            call(x * 255)
    with pytest.raises(ValueError, match="uint8 images"):
        emb((x * 255).to(torch.uint8))
    assert torch.allclose(emb(x.double()), emb(x), atol=1e-6) and purifier.purify(x.double()).dtype == torch.float32
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edits").mkdir()  # a folder named like a shipped detector does not hide it
    assert detector_path("edits").is_file() and detector_path("edits") != tmp_path / "edits"


@pytest.mark.parametrize("spec, meant", [("fawkes:mdoe=high", "mode"), ("lowkey:embeders=sface", "embedders"),
                                         ("opom:sed=1", "seed"), ("unlearnable:batchsize=2", "batch_size")])
def test_an_attack_option_typo_lists_the_spec_keys_too(spec, meant):
    """`fawkes:mdoe=high` lists what a spec takes, mode and the adaptive keys included, not only the settings."""
    from puface.utils.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        create_attack(spec)
    known = str(e.value).split("known: ")[1].split(", ")
    assert meant in known and {"embedders", "seed", "through"} <= set(known)


def test_the_lazy_top_level_api_lists_the_names_of_puface_api():
    """`import puface` names its API without importing it (`puface._API`, for speed); the names live twice, so they
    must agree with `puface.api.__all__`, and each must resolve."""
    import puface
    import puface.api

    assert set(puface._API) == set(puface.api.__all__)
    for name in puface._API:
        assert getattr(puface, name) is getattr(puface.api, name)
