"""Purifier loss: image term, feature term (cosine / L2), weighting, gradients only into the purifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from puface.training.losses import FeatureLoss, PurifierLoss, cosine_distance, l2_distance
from purifier_support import standin_embedder, synthetic_cloak


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 48, 48, generator=g)
    return x, synthetic_cloak(x, seed)


def test_image_loss_mse_and_l1():
    x, xc = _images()
    total, parts = PurifierLoss("mse")(xc, x)
    assert total.item() == pytest.approx(F.mse_loss(xc, x).item())
    assert parts["image"] == pytest.approx(parts["total"]) and "feature" not in parts
    assert PurifierLoss("mse")(x, x)[0].item() == 0.0
    assert PurifierLoss("l1")(xc, x)[0].item() == pytest.approx(F.l1_loss(xc, x).item())


def test_distances():
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.allclose(cosine_distance(a, a), torch.zeros(5), atol=1e-6)
    assert torch.allclose(cosine_distance(a, -a), torch.full((5,), 2.0), atol=1e-6)
    assert torch.allclose(l2_distance(a, b), 2 * cosine_distance(a, b), atol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_feature_loss_zero_on_natural_positive_on_cloaked(distance):
    x, xc = _images()
    fl = FeatureLoss([standin_embedder(0), standin_embedder(1)], distance)
    assert fl(x, x).item() == pytest.approx(0.0, abs=1e-6)
    d = fl(xc, x).item()
    assert d > 1e-4
    # precomputed natural embeddings give the same value
    assert fl(xc, natural_embeddings=fl.embed_natural(x)).item() == pytest.approx(d, rel=1e-5)
    # the mean over embedders
    parts = fl.per_embedder(xc, x)
    assert d == pytest.approx(sum(p.item() for p in parts) / 2, rel=1e-5)


def test_total_is_image_plus_weighted_feature_and_gradients_flow_only_to_purified():
    x, xc = _images()
    emb = standin_embedder(0)
    purified = xc.clone().requires_grad_(True)
    loss = PurifierLoss("mse", feature_weight=0.5, embedders=[emb], distance="cosine")
    total, parts = loss(purified, x)
    assert parts["total"] == pytest.approx(parts["image"] + 0.5 * parts["feature"], rel=1e-5)
    total.backward()
    assert purified.grad is not None and purified.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in emb.parameters())
    # the feature term changes the gradient (it is not just the image loss)
    p2 = xc.clone().requires_grad_(True)
    PurifierLoss("mse")(p2, x)[0].backward()
    assert not torch.allclose(purified.grad, p2.grad)


def test_feature_loss_stays_in_eval_mode():
    emb = standin_embedder(0)
    loss = PurifierLoss("mse", feature_weight=1.0, embedders=[emb])
    loss.train()
    assert not emb.training


def test_zero_weight_runs_no_embedder():
    loss = PurifierLoss("mse", feature_weight=0.0, embedders=[standin_embedder(0)])
    assert loss.feature is None
