"""Amplification: x~ = clip(x + k (x_c - x), 0, 1) with natural pairs mixed in."""

from __future__ import annotations

import pytest
import torch

from puface.utils.errors import ConfigError
from puface.training.amplify import AmplifyConfig, amplified_batch, amplify, sample_factors


def _pair(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 10, 12, generator=g) * 0.6 + 0.2
    xc = (x + (torch.rand(x.shape, generator=g) - 0.5) * 0.1).clamp(0, 1)
    return x, xc


def test_amplify_formula_and_special_factors():
    x, xc = _pair()
    assert torch.allclose(amplify(x, xc, 1.0), xc)
    assert torch.allclose(amplify(x, xc, 0.0), x)
    assert torch.allclose(amplify(x, xc, 2.5), (x + 2.5 * (xc - x)).clamp(0, 1))
    k = torch.tensor([0.0, 1.0, 2.0, 3.0])
    y = amplify(x, xc, k)
    for i in range(4):
        assert torch.allclose(y[i], (x[i] + k[i] * (xc[i] - x[i])).clamp(0, 1))


def test_amplify_clips_to_unit_range():
    x = torch.full((1, 3, 4, 4), 0.95)
    xc = torch.full((1, 3, 4, 4), 0.99)
    y = amplify(x, xc, 5.0)
    assert y.max() == 1.0 and torch.allclose(y, torch.ones_like(y))
    with pytest.raises(ValueError, match="differ in shape"):
        amplify(x, xc[..., :2], 1.0)


def test_sample_factors_range_share_and_seed():
    cfg = AmplifyConfig(k_min=1.5, k_max=2.5, natural_share=0.3)
    k = sample_factors(20000, cfg, torch.Generator().manual_seed(0))
    natural = k == 0
    assert abs(natural.float().mean().item() - 0.3) < 0.02
    amp = k[~natural]
    assert amp.min() >= 1.5 and amp.max() <= 2.5
    assert abs(amp.mean().item() - 2.0) < 0.02
    again = sample_factors(20000, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(k, again)
    other = sample_factors(20000, cfg, torch.Generator().manual_seed(1))
    assert not torch.equal(k, other)


def test_sample_factors_from_a_set():
    cfg = AmplifyConfig(k_values=(1, 3, 5), natural_share=0.0)
    k = sample_factors(3000, cfg, torch.Generator().manual_seed(0))
    assert set(k.unique().tolist()) == {1.0, 3.0, 5.0}
    assert "k in {1, 3, 5}" in cfg.describe()


def test_amplified_batch_natural_rows_are_untouched():
    x, xc = _pair(n=64)
    inp, k = amplified_batch(x, xc, AmplifyConfig(natural_share=0.5), torch.Generator().manual_seed(0))
    nat = k == 0
    assert 0 < nat.sum() < 64
    assert torch.equal(inp[nat], x[nat])
    assert torch.allclose(inp[~nat], amplify(x[~nat], xc[~nat], k[~nat]))


@pytest.mark.parametrize("bad", [dict(k_min=2, k_max=1), dict(k_min=-1), dict(natural_share=1.0),
                                 dict(natural_share=-0.1), dict(k_values=(-1,))])
def test_bad_amplify_config(bad):
    with pytest.raises(ConfigError):
        AmplifyConfig(**bad)
    with pytest.raises(ConfigError, match="unknown amplify"):
        AmplifyConfig.from_dict({"k": 2})
