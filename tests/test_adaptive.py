"""Adaptive attacks: surrogates seen through a defense (exact gradients, BPDA, EOT)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from puface.attacks import create_attack
from puface.attacks.adaptive import ThroughDefense, through_defense
from puface.defenses import ModuleDefense, PuFaceDefense
from puface.attacks.surrogates import describe_surrogate
from puface.utils.errors import PufaceError

from test_fawkes import tiny_embedder  # noqa: E402  (seeded stand-in face model)


class BoxBlur(nn.Module):
    """A fixed 5x5 box blur: a 'purifier' that wipes out high-frequency cloaks (and has a known gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 5, padding=2, groups=3, bias=False, padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).clamp(0, 1)


def through(inner, module, **kw) -> ThroughDefense:
    """`inner` seen through `module` wrapped as a defense named "puface"."""
    return ThroughDefense(inner, ModuleDefense(module, "puface"), **kw)


@pytest.fixture(scope="module")
def faces(small_chips):
    return small_chips(step=11, count=4)


def test_forward_is_embedding_of_purified(faces):
    inner, blur = tiny_embedder(), BoxBlur()
    adaptive = through(inner, blur)
    assert adaptive.name == "tiny|puface"
    torch.testing.assert_close(adaptive(faces), inner(blur(faces)))
    bpda = through(inner, blur, gradient="bpda")
    assert bpda.name == "tiny|puface-bpda"
    torch.testing.assert_close(bpda(faces), inner(blur(faces)))


def test_exact_and_bpda_gradients(faces):
    inner, blur = tiny_embedder(), BoxBlur()
    ref = inner(faces[:1]).detach()

    def grad_of(model, x):
        x = x.clone().requires_grad_(True)
        (model(x) * ref).sum().backward()
        return x.grad

    x = faces[:1]
    exact = grad_of(through(inner, blur), x)
    torch.testing.assert_close(exact, grad_of(nn.Sequential(blur, inner), x))
    # BPDA: the gradient of the embedder at P(x), passed straight through P
    bpda = grad_of(through(inner, blur, gradient="bpda"), x)
    torch.testing.assert_close(bpda, grad_of(inner, blur(x).detach()))
    assert not torch.allclose(bpda, exact)


def test_eot_noise_randomises_and_validates(faces):
    adaptive = through(tiny_embedder(), BoxBlur(), eot_noise=0.05)
    assert adaptive.name.endswith("-eot0.05")
    plain = through(tiny_embedder(), BoxBlur())
    assert not torch.allclose(adaptive(faces), plain(faces))  # noise before the defense
    with torch.no_grad():  # each image its own noise, the same for the same pixels
        n1, n2 = adaptive.defend(faces) - plain.defend(faces), adaptive.defend(faces) - plain.defend(faces)
    torch.testing.assert_close(n1, n2, atol=0, rtol=0)
    with pytest.raises(PufaceError, match="gradient"):
        through(tiny_embedder(), BoxBlur(), gradient="magic")
    for bad in (-1, float("nan"), float("inf")):  # nan gave "cloaks" equal to their inputs (cloak --eot-noise nan)
        with pytest.raises(PufaceError, match="eot_noise"):
            through(tiny_embedder(), BoxBlur(), eot_noise=bad)


def test_eot_attack_follows_its_seed_not_the_global_generator(faces):
    """An EOT attack is bit-identical under its seed whatever the global torch generator holds (the cloak cache
    keys it by its config), and each image's EOT noise does not depend on its batch mates."""
    def cloak(global_seed: int, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(global_seed)
        atk = create_attack("fawkes", mode="custom", th=0.02, steps=3, lr=15.0, seed=seed, device="cpu",
                            embedders=[through(tiny_embedder(), BoxBlur(), eot_noise=0.05)])
        return atk(x)

    x = faces[:2]
    first = cloak(0, x)
    torch.testing.assert_close(cloak(1, x), first, atol=0, rtol=0)
    assert not torch.equal(cloak(0, x, seed=1), first)
    wrapped = through(tiny_embedder(), BoxBlur(), eot_noise=0.05)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.defend(x[1:]), wrapped.defend(x)[1:], atol=0, rtol=0)


def test_purifier_weights_are_in_the_fingerprint():
    a = describe_surrogate(through(tiny_embedder(), BoxBlur()))
    blur2 = BoxBlur()
    with torch.no_grad():
        blur2.conv.weight.mul_(0.9)
    b = describe_surrogate(through(tiny_embedder(), blur2))
    assert a["name"] == b["name"] and a["weights_sha256_16"] != b["weights_sha256_16"]


def test_adaptive_fawkes_survives_the_purifier_it_was_optimised_through(faces):
    """Against a blur 'purifier', a plain cloak is mostly wiped out; the adaptive one keeps moving the
    embedding of the purified image, with the same budget (per-pixel cap 15/255)."""
    inner, blur = tiny_embedder(), BoxBlur()
    kw = dict(mode="custom", th=0.02, steps=30, lr=15.0, seed=0, device="cpu")
    plain = create_attack("fawkes", embedders=[inner], **kw)(faces)
    adaptive = create_attack("fawkes", embedders=[through(tiny_embedder(), blur)], **kw)(faces)
    for c in (plain, adaptive):
        assert (c - faces).abs().max() <= 15 / 255 + 1e-5
    with torch.no_grad():
        clean = inner(blur(faces))
        sim_plain = (inner(blur(plain)) * clean).sum(1).mean()
        sim_adaptive = (inner(blur(adaptive)) * clean).sum(1).mean()
    # measured: plain 1 - 1.3e-4, adaptive 1 - 7.1e-3 (50x further from the clean embedding)
    assert (1 - sim_adaptive) > 10 * (1 - sim_plain), (float(sim_plain), float(sim_adaptive))


def test_experiment_config_builds_an_adaptive_attack(tmp_path):
    from puface.experiments import AttackEntry
    from puface.experiments.build import build_attack
    from puface.purifier.model import Purifier

    ckpt = Purifier({"channels": 4, "depth": 2, "downsample": 1}).save(tmp_path / "p.safetensors")
    entry = AttackEntry(label="fawkes-adaptive", name="fawkes", mode="low", embedders=["dlib-resnet29"],
                        params={"through": str(ckpt), "gradient": "bpda"})
    spec = build_attack(entry, seed=0, device="cpu", cloak_batch_size=4)
    assert [s.name for s in spec.attack.surrogates] == ["dlib-resnet29|puface-p-bpda"]
    assert spec.surrogates == ("dlib-resnet29",)
    with pytest.raises(PufaceError, match="must name its embedders"):
        build_attack(AttackEntry(label="x", name="fawkes", mode="low", embedders=None, params={"through": "default"}),
                     seed=0, device="cpu", cloak_batch_size=4)


def test_through_defense_loads_names_checkpoints_and_specs(tmp_path):
    from puface.purifier.model import Purifier

    ckpt = Purifier({"channels": 4, "depth": 2, "downsample": 0}).save(tmp_path / "p.pt")
    (wrapped,) = through_defense(["dlib-resnet29"], str(ckpt))
    assert isinstance(wrapped.defense, PuFaceDefense) and isinstance(wrapped.defense_net, Purifier)
    assert wrapped.name == "dlib-resnet29|puface-p" and wrapped.embedding_dim == 128
    (blurred,) = through_defense(["dlib-resnet29"], "blur:sigma=1", gradient="bpda")  # any defense spec
    assert blurred.name == "dlib-resnet29|blur-s1-bpda"


def test_purifier_training_makes_cloaks_through_a_purifier(johns_dir, tmp_path):
    """An adaptive spec in a purifier-training config (tools/train_ablations.py's `adaptive` variant)
    cloaks through the purifier, caches under its own key, and rejects adaptive knobs without `through`."""
    import json

    from puface.purifier.model import Purifier
    from puface.training.data import cloak_with_cache

    ckpt = Purifier({"channels": 4, "depth": 2, "downsample": 1}).save(tmp_path / "p.safetensors")
    paths = sorted(johns_dir.glob("*/*.jpg"))[:2]
    cloak = cloak_with_cache(tmp_path / "cache", device="cpu", batch_size=2, progress=False)
    spec = {"name": "fawkes", "mode": "custom", "th": 0.017, "steps": 2, "lr": 15.0, "embedders": ["dlib-resnet29"],
            "through": str(ckpt), "gradient": "exact", "label": "adaptive", "images": 2}
    adaptive, kept, errors = cloak(dict(spec), paths)
    cloak({k: v for k, v in spec.items() if k not in ("through", "gradient")}, paths)  # the plain attack
    assert kept == [0, 1] and not errors and adaptive.shape == (2, 3, 150, 150)
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "cache").glob("*/config.json"))]
    assert len(configs) == 2  # two attack folders: the purifier is part of the key
    assert any("dlib-resnet29|puface" in json.dumps(c) for c in configs)
    with pytest.raises(PufaceError, match="only apply to an adaptive attack"):
        cloak({**{k: v for k, v in spec.items() if k != "through"}, "gradient": "bpda"}, paths)


def test_purifier_config_drops_and_adds_attacks():
    from puface.utils.errors import ConfigError
    from puface.training.config import load_config
    from puface.attacks import attack_label

    path = "default"
    base = [attack_label(a) for a in load_config(path).attacks]
    extra = {
        "label": "adaptive",
        "name": "fawkes",
        "mode": "high",
        "embedders": ["dlib-resnet29"],
        "through": "default",
    }
    cfg = load_config(path, drop_attacks=["lowkey", "lowkey-ensemble"], add_attacks=[extra])
    assert [attack_label(a) for a in cfg.attacks] == [b for b in base if b not in ("lowkey", "lowkey-ensemble")] + [
        "adaptive"
    ]
    with pytest.raises(ConfigError, match="'lowkey-typo', not among its attacks.*fawkes-high"):
        load_config(path, drop_attacks=["lowkey-typo"])


def test_through_a_list_is_an_ensemble_of_views(tmp_path):
    """`through = [...]`: each surrogate wrapped once per defense ("none" = the photo itself)."""
    from puface.models.registry import create_embedder
    from puface.purifier.model import Purifier

    ckpt = Purifier({"channels": 4, "depth": 2, "downsample": 0}).save(tmp_path / "p.pt")
    wrapped = through_defense(["dlib-resnet29"], ["none", str(ckpt)])
    assert [w.name for w in wrapped] == ["dlib-resnet29|none", "dlib-resnet29|puface-p"]
    x = torch.rand(1, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(wrapped[0](x), create_embedder("dlib-resnet29")(x))  # "none": the photo itself
    with pytest.raises(PufaceError, match="at least one defense"):
        through_defense(["dlib-resnet29"], [])


def test_min_ensemble_pushes_the_weakest_view(faces):
    """Fawkes `ensemble = "min"` against {photo, blur(photo)}: "sum" spends the budget on the raw view (the
    blur wipes a high-frequency cloak), "min" pushes the weakest view, so both views move."""
    inner, blur = tiny_embedder(), BoxBlur()
    views = [ThroughDefense(tiny_embedder(), ModuleDefense(nn.Identity(), "none")), through(tiny_embedder(), blur)]
    kw = dict(mode="custom", th=0.02, steps=30, lr=15.0, seed=0, device="cpu", embedders=views)
    out = {m: create_attack("fawkes", ensemble=m, **kw)(faces) for m in ("sum", "min")}
    with torch.no_grad():
        def shifts(c):
            return [float((1 - (inner(f(c)) * inner(f(faces))).sum(1)).mean()) for f in (lambda t: t, blur)]
        s_sum, s_min = shifts(out["sum"]), shifts(out["min"])
    assert (out["min"] - faces).abs().max() <= 15 / 255 + 1e-5
    assert min(s_min) > 0 and not torch.equal(out["sum"], out["min"])
    # measured: sum (raw 0.0244, blurred 0.00016), min (0.0116, 0.0065): the weakest view 40x further
    assert min(s_min) > 10 * min(s_sum), (s_sum, s_min)


@pytest.mark.parametrize("one, other", [
    # noise first, so that the JPEG meets an image off the clean one's 8-bit grid and its gradient is not 0
    ("noise:sigma=0.02+jpeg:quality=75", "noise:sigma=0.02+jpeg:quality=75,subsampling=4:4:4"),
    ("noise:sigma=0.05", "noise:sigma=0.05,seed=1"),
    ("noise:sigma=0.02+unmask", "noise:sigma=0.02+unmask:tau=0.5,min_photos=4"),
])
def test_cloaks_through_defenses_that_differ_in_one_setting_are_not_shared(faces, tmp_path, one, other):
    """An adaptive attack's cloak cache key holds its surrogates' names, which name the defense they go through:
    JPEG 4:2:0 and 4:4:4 (noise of seed 0 and 1, unmask of any settings) had one name, so the second attack was
    served the first's cloaks. Each now gets its own, the ones it makes itself."""
    from puface.attacks.cache import CloakCache
    from puface.io.images import write_image
    from puface.utils.images import tensor_to_image

    paths = []
    for i, im in enumerate(faces):
        paths.append(tmp_path / f"{i}.png")
        write_image(paths[-1], tensor_to_image(im))

    def attack(through_spec):
        return create_attack("fawkes", mode="custom", th=0.05, steps=3, lr=30.0, device="cpu", batch_size=4,
                             embedders=through_defense([tiny_embedder()], through_spec, gradient="bpda"))

    cache = CloakCache(tmp_path / "cloaks")
    first, _, _ = cache.cloak(attack(one), paths, progress=False)
    second, _, _ = cache.cloak(attack(other), paths, progress=False)
    own, _, _ = CloakCache(tmp_path / "fresh").cloak(attack(other), paths, progress=False)
    assert not torch.equal(own, first)  # the setting changes the cloaks ...
    torch.testing.assert_close(second, own, atol=0, rtol=0)  # ... so the cache must not hand the first ones back


@pytest.mark.parametrize("spec", ["jpeg:quality=75", "bitdepth:bits=5"])
@pytest.mark.parametrize("attack", ["fawkes", "lowkey"])
def test_an_attack_through_a_defense_that_rounds_moves(faces, spec, attack):
    """Through a defense that rounds (BPDA), the first iterates map onto the clean photo's defended image; pushed away
    from that image's embedding, the distance and its gradient were exactly 0 and Fawkes' cloak stayed the clean photo
    (measured: linf 0.5 and 5 grey levels after 5 steps; 0 and 0 on two johns chips after 20). Through such a defense
    the reference is the clean photo's own embedding, so the cloak moves, and so does the defended cloak. (LowKey's
    random start already left the rounding cell; its cloaks differ from before, and their cache key says so.)"""
    from puface.defenses import create_defense

    knobs = {"fawkes": dict(mode="custom", th=0.017, steps=5, lr=15.0),
             "lowkey": dict(steps=3, perceptual="ssim")}[attack]
    atk = create_attack(attack, embedders=through_defense(["dlib-resnet29"], spec), seed=0, device="cpu", **knobs)
    x = faces[:2]
    res = atk.run(x, quantize_output=True)
    assert (res.stats["linf"] > 2.5 / 255).all(), res.stats["linf"] * 255
    d = create_defense(spec)
    inner = atk.surrogates[0]
    with torch.no_grad():
        moved = (inner(res.images) - inner(x)).norm(dim=1)  # the defended cloak vs the defended photo
    assert (moved > 0.05).all(), moved
    assert atk.config["surrogates"][0]["reference"] == "undefended"  # part of the cloak cache key
    assert d.name in inner.name


class Spy(nn.Module):
    """The identity, recording the smallest and largest pixel of every batch it sees (N, 3, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((float(x.min()), float(x.max())))
        return x


def test_adaptive_lowkey_optimises_through_the_defense_only_on_images_in_0_1(faces):
    """LowKey as released clamps to [0, 1] once, at the end; through a defense (adaptive) the defense then met
    iterates up to ~0.1 past [0, 1] (measured: 0.33% of pixels, up to 0.096, on three johns chips through the shipped
    purifier) while the deployed one only ever gets the clamped 8-bit cloak. Adaptive LowKey now clamps every iterate
    (`clamp = "auto"` -> "steps"), within the same budget; plain LowKey keeps the release's loop and cache key."""
    x = faces.clone()
    x[:, :, :6] = 1.0  # saturated rows, as in over-exposed photos: a step from them leaves [0, 1] at once
    x[:, :, -6:] = 0.0
    spy = Spy()
    knobs = dict(steps=3, step_size=0.02, perceptual="ssim", seed=0, device="cpu")
    atk = create_attack("lowkey", embedders=[through(tiny_embedder(), spy)], **knobs)
    res = atk.run(x)
    lo, hi = min(s[0] for s in spy.seen), max(s[1] for s in spy.seen)
    assert len(spy.seen) >= 3 and 0.0 <= lo and hi <= 1.0, (lo, hi)
    assert atk.config["clamp"] == "steps"  # part of the cache key: cloaks made before the fix are not served
    assert (res.stats["linf"] <= atk.linf_budget + 1e-6).all() and (res.stats["linf"] > 0.02).all()
    old = create_attack("lowkey", embedders=[through(tiny_embedder(), Spy())], clamp="end", **knobs)
    assert not torch.equal(old(x), res.images)
    plain = create_attack("lowkey", embedders=[tiny_embedder()], **knobs)
    assert "clamp" not in plain.config  # LowKey as released: the earlier cache key
    torch.testing.assert_close(plain(x), create_attack("lowkey", embedders=[tiny_embedder()], clamp="end", **knobs)(x),
                               atol=0, rtol=0)
    with pytest.raises(PufaceError, match="clamp must be one of"):
        create_attack("lowkey", embedders=[tiny_embedder()], clamp="never", **knobs)


def test_through_a_views_defense_optimises_through_every_view(faces):
    """`through = {name = "views", of = [...]}` optimised through the last view alone (a `Views` as one images ->
    images function), a much weaker attacker than `through = [...]` for the same defender, silently; it now means the
    list of its views: the same surrogates, cache key and cloaks. In an experiment the dict form of `through` (views,
    random) stopped the run's fingerprint with "unknown defense 'name'"."""
    from types import SimpleNamespace

    from puface.experiments import AttackEntry
    from puface.experiments.build import results_fingerprint

    views = ["none", "blur:sigma=1"]
    as_dict, as_list = through_defense([tiny_embedder()], {"name": "views", "of": views}), through_defense(
        [tiny_embedder()], views)
    assert [w.name for w in as_dict] == [w.name for w in as_list] == ["tiny|none", "tiny|blur-s1"]
    knobs = dict(mode="custom", th=0.02, steps=5, lr=15.0, seed=0, device="cpu", ensemble="min")
    one, other = (create_attack("fawkes", embedders=e, **knobs) for e in (as_dict, as_list))
    assert one.config == other.config
    torch.testing.assert_close(one(faces[:2]), other(faces[:2]), atol=0, rtol=0)

    def fingerprint(through) -> str:
        entry = AttackEntry(label="a", name="fawkes", mode="low", embedders=["dlib-resnet29"],
                            params={"through": through})
        return results_fingerprint(SimpleNamespace(trainers=[], attacks=[entry], fingerprint=lambda: "cfg"), {}, {})

    assert fingerprint({"name": "views", "of": views}) == fingerprint(views)
    fingerprint({"name": "random", "of": views})  # a dict that is not `views`: one defense, as before


def test_a_views_defense_rounds_only_through_the_view_the_attack_differentiates(faces):
    """An attack through `views` differentiates its last view alone (`Views.gradient_estimate`); a rounding view before
    it (JPEG) made the surrogate `rounds` all the same, so Fawkes through views [jpeg, blur] pushed away from the clean
    photo and gave other cloaks (and another cache key) than through blur, though the JPEG view is never seen."""
    from puface.defenses import create_defense

    knobs = dict(mode="custom", th=0.017, steps=3, lr=15.0)

    def cloaks(spec):  # one surrogate through the defense object (`through_defense` splits a views spec in its views)
        atk = create_attack("fawkes", embedders=[ThroughDefense(tiny_embedder(), create_defense(spec))], seed=0,
                            device="cpu", **knobs)
        return atk, atk.run(faces[:2], quantize_output=True).images

    views = {"name": "views", "of": ["jpeg:quality=75", "blur:sigma=1"]}
    atk, own = cloaks(views)
    _, blur = cloaks("blur:sigma=1")
    torch.testing.assert_close(own, blur, atol=0, rtol=0)
    assert not atk.surrogates[0].rounds and "reference" not in atk.config["surrogates"][0]
    assert ThroughDefense(tiny_embedder(), create_defense({"name": "views", "of": ["blur:sigma=1", "jpeg"]})).rounds


@pytest.mark.parametrize("name, knobs, marked", [
    ("fawkes", {}, True), ("lowkey", {}, True), ("fawkes", {"targeted": True}, False), ("opom", {}, False),
    ("unlearnable", {}, False)])
def test_only_attacks_that_push_from_the_clean_photo_record_it_in_the_cache_key(name, knobs, marked):
    """Through a defense that rounds, only untargeted Fawkes and LowKey push away from the clean photo itself
    (`clean_embedding`); OPOM, unlearnable examples and targeted Fawkes make the cloaks they made before, so their
    cache key must not change: the surrogates' "reference" marker made every one of them miss its cached cloaks."""
    atk = create_attack(name, embedders=through_defense([tiny_embedder()], "jpeg:quality=75"), seed=0, device="cpu",
                        **knobs)
    assert ("reference" in atk.config["surrogates"][0]) is marked
