"""OPOM privacy masks and unlearnable examples: the budget, one mask / noise per identity (class-wise) or per
photo (sample-wise), determinism under a seed, the hull projections, the group cache and `puface cloak`."""

from __future__ import annotations

import csv
import hashlib
import shutil
import warnings

import numpy as np
import pytest
import torch

from puface.attacks import Reference, create_attack
from puface.attacks.cache import CloakCache
from puface.attacks.opom import DROPOUT_COS_WARN, affine_projection, convex_projection, simplex_projection
from puface.utils.errors import ConfigError, PufaceError

from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faces(small_chips):
    """6 johns chips at 48 px, float [0, 1]."""
    return small_chips(step=9, count=6)


def grey(n: int, seed: int = 0) -> torch.Tensor:
    """Mid-grey images with mild texture: far from 0 and 1, so no mask is clipped at the range's ends."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.05 * torch.rand(n, 3, 48, 48, generator=g)


def opom(seed: int = 0, **kw):
    return create_attack("opom", embedders=[tiny_embedder()], seed=seed, device="cpu", **kw)


def unlearnable(seed: int = 0, **kw):
    kw = {"max_rounds": 2, "steps": 4, "train_steps": 3, **kw}
    return create_attack("unlearnable", embedders=[tiny_embedder()], seed=seed, device="cpu", **kw)


# ------------------------------------------------------------------ the hull geometry

def test_affine_projection_is_the_orthogonal_projection_onto_the_hull():
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(4, 10, generator=g)
    # a point of the hull projects onto itself
    w = torch.tensor([[0.7, -0.4, 0.2, 0.5]])
    inside = w @ anchors
    torch.testing.assert_close(affine_projection(inside, anchors), inside, atol=1e-5, rtol=0)
    # the residual of any point is orthogonal to every direction of the hull
    y = torch.randn(3, 10, generator=g)
    res = y - affine_projection(y, anchors)
    torch.testing.assert_close(res @ (anchors[1:] - anchors[:1]).T, torch.zeros(3, 3), atol=1e-5, rtol=0)
    # one anchor: the hull is that point
    torch.testing.assert_close(affine_projection(y, anchors[:1]), anchors[:1].expand(3, -1))


def test_simplex_and_convex_projection():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 4, generator=g) * 3
    p = simplex_projection(v)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(5))
    inside = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    torch.testing.assert_close(simplex_projection(inside), inside)
    anchors = torch.eye(3)  # the hull is the triangle of the unit vectors
    y = torch.tensor([[2.0, 0.0, 0.0], [0.3, 0.3, 0.3]])
    torch.testing.assert_close(
        convex_projection(y, anchors, 500), torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]), atol=1e-4, rtol=0
    )


# ------------------------------------------------------------------ OPOM

@pytest.mark.parametrize("hull", ["affine", "convex", "center", "fi-uap"])
def test_opom_budget_and_one_mask_per_identity(hull):
    x = grey(6)
    atk = opom(hull=hull, steps=6, epsilon=8)
    labels = ["a"] * 3 + ["b"] * 3
    res = atk.run(x, labels=labels)
    delta = res.images - x
    assert delta.abs().max() <= 8 / 255 + 1e-6 and delta.abs().max() > 4 / 255
    torch.testing.assert_close(delta[0], delta[1], atol=1e-6, rtol=0)  # universal within a person
    torch.testing.assert_close(delta[3], delta[5], atol=1e-6, rtol=0)
    assert not torch.allclose(delta[0], delta[3])  # each person has their own mask
    assert set(res.stats) >= {"dssim", "psnr", "linf", "shift_tiny", "hull_distance"}
    q = atk.run(x, labels=labels, quantize_output=True).images
    assert (q - x).abs().max() <= 8 / 255 + 0.5 / 255 + 1e-6


def test_opom_seeded_and_configurable(faces):
    a = opom(0, steps=3)(faces)
    assert torch.equal(a, opom(0, steps=3)(faces)) and not torch.equal(a, opom(1, steps=3)(faces))
    small = opom(0, steps=3, epsilon=2)(faces)
    assert (small - faces).abs().max() <= 2 / 255 + 1e-6
    assert opom(hull="convex").name == "opom-convex" and opom().name == "opom"
    with pytest.raises(ConfigError, match="hull"):
        opom(hull="sphere")
    with pytest.raises(ConfigError, match="unknown option"):
        opom(mode="high")


def test_opom_pushes_features_out_of_the_hull(faces):
    emb = tiny_embedder()
    atk = opom(steps=10)
    res = atk.run(faces)
    clean = torch.nn.functional.normalize(emb(faces), dim=1)
    adv = torch.nn.functional.normalize(emb(res.images), dim=1)
    noise = (faces + (torch.rand_like(faces) - 0.5) * 2 * 8 / 255).clamp(0, 1)
    rand = torch.nn.functional.normalize(emb(noise), dim=1)
    dist = lambda y: ((y - affine_projection(y, clean)) ** 2).sum(1).mean()  # noqa: E731
    assert dist(adv) > 3 * dist(rand)


@pytest.mark.parametrize("hull", ["affine", "convex", "center", "fi-uap"])
def test_opom_hull_distance_is_to_the_configured_hull(faces, hull):
    """`hull_distance` measures the set the mask was optimised against: it was the affine hull's distance for
    every `hull`, so a class-centre or convex-hull mask reported a distance to another, larger set."""
    emb = tiny_embedder()
    res = opom(hull=hull, steps=3, hull_iters=2000).run(faces)  # a near-exact convex projection
    clean = torch.nn.functional.normalize(emb(faces), dim=1)
    adv = torch.nn.functional.normalize(emb(res.images), dim=1)
    target = {"affine": lambda: affine_projection(adv, clean), "convex": lambda: convex_projection(adv, clean, 2000),
              "center": lambda: clean.mean(dim=0, keepdim=True), "fi-uap": lambda: clean}[hull]()
    expected = ((adv - target) ** 2).sum(dim=1)
    torch.testing.assert_close(res.stats["hull_distance"], expected, atol=2e-3 * float(expected.max()), rtol=0)


# ------------------------------------------------------------------ OPOM's transfer variant (DFANet_MFIM)

def test_opom_default_is_the_plain_variant_unchanged():
    """The plain `FIM` stays the default: the same cloaks, bit for bit, and the same cache key as before `variant`
    and `droprate` existed (pinned from the code before them), and `variant="fim"` spelled out is the default."""
    x = grey(4)
    labels = ["a", "a", "b", "b"]
    atk = opom(steps=3)
    out = atk(x, labels=labels)
    assert hashlib.sha256(out.numpy().tobytes()).hexdigest() == (
        "9920e7cd955bf90d29f90edcff1317bfca51b21b2cf4b3cc1cd77066d8bea85b"
    )
    assert CloakCache.key(atk, "0" * 64) == "8a25709cd8f3927c107e998865d7d0c446f7f474fd2908d03e45a3d169ecbf96"
    assert "variant" not in atk.config and "droprate" not in atk.config
    spelled = opom(steps=3, variant="fim", droprate=0.3)  # droprate does nothing in the plain variant
    assert spelled.config == atk.config and torch.equal(spelled(x, labels=labels), out)


def test_opom_dfanet_budget_steps_and_one_mask_per_identity():
    """The transfer variant keeps the budget and one mask per person, runs the scripts' 100 rounds unless `steps`
    is given, and is its own attack (name and cache key)."""
    atk = opom(variant="dfanet-mfim")
    assert atk.settings.steps == 100 and atk.name == "opom-dfanet"
    assert atk.config["variant"] == "dfanet-mfim" and atk.config["droprate"] == 0.1
    assert opom(variant="dfanet-mfim", hull="convex").name == "opom-convex-dfanet"
    x = grey(6)
    labels = ["a"] * 3 + ["b"] * 3
    res = opom(variant="dfanet-mfim", steps=8).run(x, labels=labels)
    delta = res.images - x
    assert delta.abs().max() <= 8 / 255 + 1e-6 and delta.abs().max() > 4 / 255
    torch.testing.assert_close(delta[0], delta[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(delta[3], delta[4], atol=1e-6, rtol=0)
    assert not torch.allclose(delta[0], delta[3])
    assert res.stats["shift_tiny"].min() > 0 and torch.isfinite(res.stats["hull_distance"]).all()


def test_opom_dfanet_is_seeded(faces):
    """Dropout masks come from per-photo generators seeded by the group: same seed, same cloak, whatever the global
    torch generator does; another seed, variant or drop rate, another cloak."""
    a = opom(0, variant="dfanet-mfim", steps=4)(faces)
    torch.manual_seed(123)
    assert torch.equal(a, opom(0, variant="dfanet-mfim", steps=4)(faces))
    assert not torch.equal(a, opom(1, variant="dfanet-mfim", steps=4)(faces))
    assert not torch.equal(a, opom(0, steps=4)(faces))
    assert not torch.equal(a, opom(0, variant="dfanet-mfim", steps=4, droprate=0.0)(faces))


def test_opom_dfanet_cloaks_unchanged_by_the_dropout_check():
    """Measuring the dropout cosine draws no random number: the cloaks are those of the code before it, bit for bit
    (pinned from it), at the default droprate and at one where it warns."""
    x = grey(4)
    labels = ["a", "a", "b", "b"]
    pins = {0.1: "c99d8f95d7ae0fc6516d431ecd11cd79e2dd1d1d185b53a5523999a425b8ed2e",
            0.8: "33117e87ed83127615a60941d2a38ad83691ab39dad689381740013e224bfe2c"}
    for rate, pin in pins.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = opom(variant="dfanet-mfim", steps=3, droprate=rate)(x, labels=labels)
        assert hashlib.sha256(out.numpy().tobytes()).hexdigest() == pin


def test_opom_dfanet_warns_once_about_a_surrogate_dropout_destroys():
    """dfanet-mfim measures each surrogate's clean embeddings with its first step's dropout against those without:
    the per-photo cosine is the stat `dropout_cos_<surrogate>` (1 without dropout), and a surrogate whose group mean
    is below `DROPOUT_COS_WARN` (the tiny net at droprate 0.8: about 0.56; at 0.1 about 0.98) warns once per
    attack, naming the surrogate, the cosine, the droprate and what to do."""
    x = grey(6)
    labels = ["a"] * 3 + ["b"] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atk = opom(variant="dfanet-mfim", steps=2, droprate=0.8)
        res = atk.run(x, labels=labels)
        atk.run(x[:2])  # a third group: no second warning
    cos = res.stats["dropout_cos_tiny"]
    assert cos.shape == (6,) and float(cos.max()) < DROPOUT_COS_WARN and float(cos.min()) > -1
    mine = [str(w.message) for w in caught if "droprate" in str(w.message)]
    assert len(mine) == 1, mine
    first = float(cos[:3].mean())  # the first group's mean is the one reported
    assert "droprate 0.8 leaves surrogate tiny's embedding" in mine[0] and f"cosine {first:.2f}" in mine[0]
    assert "lower droprate" in mine[0] and "residual surrogate" in mine[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = opom(variant="dfanet-mfim", steps=2).run(x, labels=labels)
        exact = opom(variant="dfanet-mfim", steps=1, droprate=0.0).run(x[:3])
    assert not [w for w in caught if "droprate" in str(w.message)]
    assert float(res.stats["dropout_cos_tiny"].min()) > DROPOUT_COS_WARN
    torch.testing.assert_close(exact.stats["dropout_cos_tiny"], torch.ones(3), atol=1e-5, rtol=0)
    assert "dropout_cos_tiny" not in opom(steps=1).run(x[:2]).stats  # the plain variant has no dropout


def test_opom_dfanet_drops_features_during_the_attack_only(faces):
    """Within the attack the surrogate's features of the same clean photos differ from step to step (fresh
    dropout masks); afterwards the model is as it was: eval mode, no hooks left, the same weights and outputs."""
    emb = tiny_embedder()
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    clean_out = emb(faces)
    seen: list[torch.Tensor] = []
    spy = emb.net.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        create_attack("opom", embedders=[emb], device="cpu", variant="dfanet-mfim", steps=3)(faces)
    finally:
        spy.remove()
    # passes: clean (no dropout), per step clean + masked (dropout), the masked result and `run`'s stats (none)
    assert len(seen) == 1 + 2 * 3 + 1 + 2
    plain, step0, step1 = seen[0], seen[1], seen[3]
    assert not torch.allclose(step0, plain) and not torch.allclose(step0, step1)
    torch.testing.assert_close(seen[-1], plain)  # `run`'s stats: the clean photos again, without dropout
    assert not emb.training and not any(m.training for m in emb.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in emb.modules())
    assert all(torch.equal(v, before[k]) for k, v in emb.state_dict().items())
    assert torch.equal(emb(faces), clean_out)


def _reference_mfim(emb, x, start, generator, steps, eps, alpha, p):
    """The released code's `DFANet_MFIM.process` loop transcribed line by line (attack/privacy.py; affine hull loss),
    images in [0, 1], its dropout layers replaced by `FeatureDropout` with the per-photo generators the attack seeds."""
    from puface.attacks.feature_dropout import FeatureDropout
    from puface.attacks.opom import affine_projection

    seeds = torch.randint(0, 2**62, (len(x),), generator=generator).tolist()
    gens = [torch.Generator().manual_seed(int(v)) for v in seeds]
    data, data_adv, grad_sum = x, start.detach(), 0
    with FeatureDropout([emb], p, gens) as drop:
        for _ in range(steps):
            n_feature = drop.apply(emb, data, 16).detach()
            data_adv.requires_grad_()
            adv_feature = drop.apply(emb, data_adv, 16)
            loss = torch.nn.functional.mse_loss(adv_feature, affine_projection(adv_feature.detach(), n_feature))
            loss.backward()
            grad_step_mean = torch.abs(data_adv.grad)
            for dim in range(3):
                grad_step_mean = torch.mean(grad_step_mean, dim, keepdim=True)
            grad_sum = grad_sum + data_adv.grad / grad_step_mean
            data_adv = data_adv.detach() + alpha * grad_sum.sign()
            deta = torch.mean(data_adv - data, 0, keepdim=True)
            eta = torch.clamp(deta, min=-eps, max=eps)
            data_adv = torch.clamp(data + eta, 0, 1).detach()
    return eta


def test_opom_dfanet_steps_as_the_reference():
    """The transfer variant's loop is the reference's: momentum (decay 1) of gradients divided by the mean |g| of each
    image column, each photo stepping along the sign of its own sum, the mask the mean step clipped to eps, the
    clean features recomputed with dropout each step (the reference transcribed in `_reference_mfim`)."""
    x = grey(4)
    start = x + 4 / 255 * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) - 1)
    atk = opom(variant="dfanet-mfim", steps=6, droprate=0.2)
    got, _ = atk._mfim(x, start, torch.Generator().manual_seed(7), atk._features(x))
    emb = atk.surrogates[0]
    want = _reference_mfim(emb, x, start, torch.Generator().manual_seed(7), 6, 8 / 255, 1 / 255, 0.2)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert got.abs().max() > 4 / 255


def test_opom_dfanet_dropout_masks_are_fresh_independent_and_scaled():
    """At every step the clean and the masked pass get their own dropout masks, each photo its own, about `droprate`
    of a convolution's outputs zeroed and the rest scaled by 1 / (1 - droprate), as torch's nn.Dropout."""
    emb = tiny_embedder()
    seen: list[torch.Tensor] = []
    spy = emb.net[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    try:
        create_attack("opom", embedders=[emb], device="cpu", variant="dfanet-mfim", steps=2, droprate=0.3)(grey(3))
    finally:
        spy.remove()
    plain, clean0, masked0, clean1 = seen[0], seen[1], seen[2], seen[3]  # no dropout, step 0 clean / masked, step 1
    assert (plain != 0).all()
    kept = clean0 != 0
    assert 0.25 < 1 - kept.float().mean() < 0.35
    torch.testing.assert_close(clean0, plain * kept / 0.7)  # the same photos: kept outputs scaled by 1 / (1 - p)
    assert not torch.equal(kept, masked0 != 0) and not torch.equal(kept, clean1 != 0)
    assert not torch.equal(kept[0], kept[1]) and not torch.equal(kept[1], kept[2])


def test_opom_dfanet_removes_its_hooks_when_the_attack_fails():
    """An error mid-attack (here the surrogate's third pass) leaves no dropout hook on the model."""
    emb = tiny_embedder()
    calls = []

    def fail_third(module, inputs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    trap = emb.net.register_forward_pre_hook(fail_third)
    with pytest.raises(RuntimeError, match="boom"):
        create_attack("opom", embedders=[emb], device="cpu", variant="dfanet-mfim", steps=3)(grey(2))
    trap.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in emb.modules())


def test_feature_dropout_layers_and_scope():
    """Outside `apply` the hooks change nothing; inside, two passes differ, a photo's masks do not depend on the
    chunks it is embedded in (per-photo generators); leaving the block removes the hooks."""
    from puface.attacks.feature_dropout import FeatureDropout, dropout_layers

    emb = tiny_embedder()
    assert [type(m).__name__ for m in dropout_layers(emb)] == ["Conv2d", "Conv2d"]
    x = grey(3)
    ref = emb(x)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with FeatureDropout([emb], 0.5, gens) as drop:
        assert torch.equal(emb(x), ref)
        a, b = drop.apply(emb, x, 2), drop.apply(emb, x, 2)
        assert not torch.allclose(a, ref) and not torch.allclose(a, b)
    again = [torch.Generator().manual_seed(i) for i in range(3)]
    with FeatureDropout([emb], 0.5, again) as drop:
        torch.testing.assert_close(drop.apply(emb, x, 3), a, atol=1e-6, rtol=0)  # one chunk of 3, not 2 + 1
    assert all(not m._forward_hooks for m in emb.modules()) and torch.equal(emb(x), ref)


def test_feature_dropout_drops_a_shared_network_once():
    """An adaptive ensemble (`through = [a, b]`) wraps one face network in several surrogates: each convolution is
    hooked once, so a surrogate's features under dropout are those it has alone (was dropped once per wrapper:
    rate 0.19 for 0.1); the defense's own network is never dropped."""
    from puface.attacks.adaptive import ThroughDefense, through_defense
    from puface.attacks.feature_dropout import FeatureDropout, dropout_layers
    from puface.defenses import create_defense

    emb = tiny_embedder()
    pair = through_defense([emb], ["blur:sigma=1", "none"])
    assert pair[0].net is pair[1].net
    x = grey(3)

    def gens():
        return [torch.Generator().manual_seed(i) for i in range(3)]

    with FeatureDropout(pair[1:], 0.5, gens()) as drop:
        alone = drop.apply(pair[1], x, 3)
    with FeatureDropout(pair, 0.5, gens()) as drop:
        assert all(len(m._forward_hooks) == 1 for m in dropout_layers(emb))
        torch.testing.assert_close(drop.apply(pair[1], x, 3), alone)
    purifier = ThroughDefense(emb, create_defense("puface"))
    assert dropout_layers(purifier) == dropout_layers(emb)


def test_dropout_layers_of_puface_models():
    """dlib ResNet-29: its 29 convolutions (the stem and both of every residual branch; its shortcuts have none);
    SFace: its stem and every depthwise / pointwise convolution; never the final linear layer."""
    from torch import nn

    from puface.attacks.feature_dropout import dropout_layers
    from puface.models.base import FaceEmbedder, InputNormalization
    from puface.models.dlib_resnet import DlibResNet29
    from puface.models.sface import SFaceNet

    def wrap(net):
        return FaceEmbedder(net, name="m", input_size=(112, 112), embedding_dim=128, normalization=InputNormalization())

    dlib = DlibResNet29()
    assert dropout_layers(wrap(dlib)) == dlib.convs() and len(dlib.convs()) == 29
    sface = SFaceNet(channels_last=False)
    convs = [m for m in sface.modules() if isinstance(m, nn.Conv2d)]
    assert dropout_layers(wrap(sface)) == convs and convs[0] is sface.stem and len(convs) > 20


@pytest.mark.parametrize("knobs, message", [
    ({"variant": "dfanet"}, "opom: variant must be one of fim, dfanet-mfim, got 'dfanet'"),
    ({"variant": "dfanet-mfim", "droprate": 1.0}, "opom: droprate must be in [0, 1), got 1.0"),
    ({"droprate": -0.1}, "opom: droprate must be in [0, 1), got -0.1"),
])
def test_opom_bad_variant_settings_are_refused(knobs, message):
    with pytest.raises(ConfigError) as err:
        opom(**knobs)
    assert str(err.value) == message


def test_opom_dfanet_refuses_a_surrogate_without_convolutions():
    from torch import nn

    from puface.models.base import FaceEmbedder, InputNormalization

    flat = FaceEmbedder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), name="flat", input_size=(8, 8),
                        embedding_dim=4, normalization=InputNormalization())
    with pytest.raises(ConfigError, match="surrogate flat has no torch convolution"):
        create_attack("opom", embedders=[flat], device="cpu", variant="dfanet-mfim")
    create_attack("opom", embedders=[flat], device="cpu")  # the plain variant needs none


# ------------------------------------------------------------------ unlearnable examples

def test_unlearnable_samplewise_and_classwise():
    x = grey(6, seed=2)
    labels = ["a"] * 3 + ["b"] * 3
    ref = Reference(grey(4, seed=3), np.array(["c", "c", "d", "d"], dtype=object))
    cw = unlearnable(perturb="classwise").run(x, labels=labels, reference=ref)
    d = cw.images - x
    assert d.abs().max() <= 8 / 255 + 1e-6 and d.abs().max() > 2 / 255
    torch.testing.assert_close(d[0], d[2], atol=1e-6, rtol=0)  # one noise per identity
    torch.testing.assert_close(d[3], d[4], atol=1e-6, rtol=0)
    assert not torch.allclose(d[0], d[3])
    sw = unlearnable(perturb="samplewise").run(x, labels=labels, reference=ref)
    d = sw.images - x
    assert d.abs().max() <= 8 / 255 + 1e-6
    assert not torch.allclose(d[0], d[1])  # one noise per photo
    assert set(sw.stats) >= {"rounds", "head_error", "ue_loss", "shift_tiny"}
    assert 1 <= sw.stats["rounds"][0] <= 2


def test_unlearnable_minimises_the_error(faces):
    """The noise makes the user's photos easier for the inner model: lower loss than random noise of the
    same budget under the model it was fitted with (error-minimizing, not maximizing)."""
    labels = ["a"] * 3 + ["b"] * 3
    atk = unlearnable(perturb="samplewise", max_rounds=3, steps=10)
    res = atk.run(faces, labels=labels)
    assert float(res.stats["ue_loss"].mean()) < 0.5


def test_group_attacks_take_torch_labels_as_their_values():
    """Labels as a torch tensor (a data loader's): its elements, 0-d tensors hashing by identity, keyed the seed as
    "tensor(0)" and OPOM ran each person's mask once per photo; now the same cloaks as the list of values."""
    x = grey(4, seed=4)
    ref = Reference(grey(4, seed=5), torch.tensor([7, 7, 8, 8]))
    assert ref.labels.tolist() == [7, 7, 8, 8]
    for make in (lambda: opom(steps=2), lambda: unlearnable(perturb="classwise")):
        calls: list[list[int]] = []
        atk = make()
        inner = atk._attack_group
        atk._attack_group = lambda x, labels, *a, calls=calls, inner=inner: (calls.append(list(labels)),
                                                                             inner(x, labels, *a))[1]
        by_tensor = atk.run(x, labels=torch.tensor([0, 0, 1, 1]), reference=ref).images
        by_list = make().run(x, labels=[0, 0, 1, 1], reference=Reference(ref.images, np.array([7, 7, 8, 8]))).images
        assert calls == [[0, 0, 1, 1]] and all(type(v) is int for v in calls[0])
        assert torch.equal(by_tensor, by_list)


def test_unlearnable_seeded_budget_and_needs_classes(faces):
    labels = ["a"] * 3 + ["b"] * 3
    a = unlearnable(0)(faces, labels=labels)
    assert torch.equal(a, unlearnable(0)(faces, labels=labels)) and not torch.equal(
        a, unlearnable(1)(faces, labels=labels)
    )
    small = unlearnable(0, epsilon=4)(faces, labels=labels)
    assert (small - faces).abs().max() <= 4 / 255 + 1e-6
    with pytest.raises(PufaceError, match="two classes"):
        unlearnable()(faces)
    with pytest.raises(ConfigError, match="perturb"):
        unlearnable(perturb="pixelwise")


def test_unlearnable_stop_rule_and_start():
    """`stop_on = "all"` (the default, the reference code's rule) judges the head on every training photo, the
    reference's clean ones too: references the head cannot fit keep the loop going to `max_rounds`, where the
    earlier rule (`"protected"`: the protected photos alone, just after PGD made them easy) stops early.
    `start = "zero"` (the default) starts the noise at zero (no steps: the photos come back unchanged; the
    earlier uniform start moves them)."""
    x = grey(4, seed=2)
    labels = ["a"] * 2 + ["b"] * 2
    ref = Reference(grey(16, seed=3), np.array([f"c{i // 2}" for i in range(16)], dtype=object))  # near-identical
    kw = {"max_rounds": 6, "steps": 10, "train_steps": 3, "start": "uniform"}
    protected = unlearnable(stop_on="protected", **kw).run(x, labels=labels, reference=ref).stats
    every = unlearnable(**kw).run(x, labels=labels, reference=ref).stats
    assert protected["rounds"][0] < 6 and protected["head_error"][0] < 0.01
    assert every["rounds"][0] == 6 and every["head_error"][0] >= 0.01
    still = {"max_rounds": 1, "steps": 0, "train_steps": 1}
    assert torch.equal(unlearnable(**still)(x, labels=labels), x)
    assert not torch.equal(unlearnable(start="uniform", **still)(x, labels=labels), x)
    for bad in ({"stop_on": "none"}, {"start": "gaussian"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            unlearnable(**bad)


def test_unlearnable_earlier_loop_keeps_the_published_cache_keys():
    """`stop_on` and `start` came after cloaks were published: at the earlier loop's values ("protected",
    "uniform") they stay out of the cache key (its key has the settings it had before), and the defaults (the
    reference's loop) are in it, so its cloaks never pass for the earlier ones."""
    before = {"perturb", "epsilon", "step_size", "steps", "train_steps", "train_batch", "lr", "momentum",
              "weight_decay", "stop_error", "max_rounds"}
    base = {"attack", "name", "algorithm", "seed", "surrogates"}
    assert set(unlearnable(stop_on="protected", start="uniform").config) == base | before
    default = unlearnable().config
    assert (default["stop_on"], default["start"]) == ("all", "zero")
    assert set(unlearnable(stop_on="protected").config) == base | before | {"start"}


def test_every_published_unlearnable_grid_pins_the_earlier_loop():
    """The default became the reference code's loop on 2026-12-07; every config (packaged, or saved beside published
    numbers in docs/results/ and docs/studies/) whose unlearnable cloaks were made before must pin the earlier loop,
    after `extends` is resolved, or `puface reproduce` makes other cloaks. Only the `-ref` rows of the
    `*-ue-stop` grids run the reference loop."""
    from pathlib import Path

    from puface.experiments.config import load_config

    repo = Path(__file__).resolve().parents[1]
    paths = [*sorted((repo / "src/puface/configs").glob("*.toml")), *sorted(repo.glob("docs/results/*/config.toml")),
             *sorted(repo.glob("docs/studies/**/config.toml"))]
    seen = []
    for path in paths:
        for a in load_config(path).attacks:
            if a.name == "unlearnable":
                loop = (a.params.get("stop_on", "all"), a.params.get("start", "zero"))
                want = ("all", "zero") if a.label.endswith("-ref") else ("protected", "uniform")
                assert loop == want, f"{path.relative_to(repo)}: {a.label} runs {loop}"
                seen.append(a.label)
    assert len(seen) > 40 and sum(label.endswith("-ref") for label in seen) >= 7


def test_unlearnable_leaves_the_global_generator_alone(faces):
    """The heads start from the attack's own generator: a run draws nothing from the global torch generator (the
    default init of nn.Linear did, so a caller's seeded stream changed with each call)."""
    labels = ["a"] * 3 + ["b"] * 3
    atk = unlearnable(0, max_rounds=1, steps=1, train_steps=1)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    out = atk(faces, labels=labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, unlearnable(0, max_rounds=1, steps=1, train_steps=1)(faces, labels=labels))


# ------------------------------------------------------------------ the group cache

def test_group_cache_reuses_only_the_same_group(tmp_path, faces):
    cache = CloakCache(tmp_path)
    atk = opom(steps=2)
    u8 = (faces * 255).round().to(torch.uint8)
    first = cache.cloak_group(atk, u8[:4], ["a"] * 4)
    assert cache.cached_count(atk) == 4
    again = cache.cloak_group(atk, u8[:4], ["a"] * 4)
    assert torch.equal(first, again) and cache.cached_count(atk) == 4
    cache.cloak_group(atk, u8[:3], ["a"] * 3)  # another group: another mask, new files
    assert cache.cached_count(atk) == 7
    torch.testing.assert_close(first, atk.run(u8[:4].float() / 255, labels=["a"] * 4, quantize_output=True).images)


def test_cloak_cli_group_attack(tmp_path, johns_dir, capsys):
    from puface.cli import main

    out = tmp_path / "out"
    assert main(["cloak", "--attack", "opom", "--surrogate", "dlib-resnet29", "--steps", "1", "--no-progress",
                 str(johns_dir), str(out)]) == 0
    assert len(list(out.rglob("*.png"))) == 55 and (out / "cloak_stats.csv").is_file()
    capsys.readouterr()
    assert main(["cloak", "--attack", "opom", "--perturb", "classwise", str(johns_dir), str(tmp_path / "x")]) == 2
    assert "--perturb is not an option of opom" in capsys.readouterr().err


def test_cloak_cli_dfanet_reports_the_dropout_cosine(tmp_path, johns_dir):
    """`puface cloak` with OPOM's transfer variant against SFace at droprate 0.5 (cosine about 0.1) warns once and
    writes each photo's dropout cosine to cloak_stats.csv."""
    from puface.cli import main

    src = tmp_path / "in" / "john"
    src.mkdir(parents=True)
    for path in sorted(next(p for p in sorted(johns_dir.iterdir()) if p.is_dir()).glob("*.jpg"))[:2]:
        shutil.copy(path, src / path.name)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"droprate 0.5 leaves surrogate sface's embedding .* cosine -?0\.\d\d") as rec:
        assert main(["cloak", "--attack", "opom:variant=dfanet-mfim,droprate=0.5", "--surrogate", "sface",
                     "--steps", "1", "--no-progress", str(tmp_path / "in"), str(out)]) == 0
    assert len([w for w in rec if "droprate" in str(w.message)]) == 1
    rows = list(csv.DictReader((out / "cloak_stats.csv").open()))
    assert len(rows) == 2 and all(float(r["dropout_cos_sface"]) < DROPOUT_COS_WARN for r in rows)


@pytest.mark.slow
def test_cloak_cli_unlearnable_learns_the_other_folders(tmp_path, johns_dir):
    """Each identity folder is one class-wise group; the other four folders are its reference classes."""
    import csv

    from puface.cli import main

    out = tmp_path / "ue"
    assert main(["cloak", "--attack", "unlearnable", "--perturb", "classwise", "--surrogate", "dlib-resnet29",
                 "--steps", "2", "--no-progress", str(johns_dir), str(out)]) == 0
    rows = list(csv.DictReader(open(out / "cloak_stats.csv")))
    assert len(rows) == 55 and all(float(r["linf"]) <= 8.5 / 255 for r in rows)
    assert {r["rounds"] for r in rows} and all(float(r["head_error"]) < 1 for r in rows)


def test_cloak_config_records_the_settings_the_cache_key_leaves_out(tmp_path, johns_dir):
    """cloak_config.json's "attack" is the cache key, which leaves unlearnable's earlier-loop values out; its
    "settings" give every setting, so a folder cloaked with the earlier loop says so (it read as the default)."""
    import json
    import shutil

    from puface.cli import main

    tree = tmp_path / "in"
    for ident in sorted(p for p in johns_dir.iterdir() if p.is_dir())[:2]:
        (tree / ident.name).mkdir(parents=True)
        for chip in sorted(ident.iterdir())[:2]:
            shutil.copy(chip, tree / ident.name / chip.name)
    out = tmp_path / "ue"
    spec = "unlearnable:stop_on=protected,start=uniform,steps=1,train_steps=1,max_rounds=1,embedders=dlib-resnet29"
    assert main(["cloak", "--attack", spec, "--no-progress", str(tree), str(out)]) == 0
    record = json.loads((out / "cloak_config.json").read_text())
    assert "stop_on" not in record["attack"]
    assert (record["settings"]["stop_on"], record["settings"]["start"], record["settings"]["steps"]) == \
        ("protected", "uniform", 1)
