"""Amplification: x~ = clip(x + k (x_c - x), 0, 1) with natural pairs mixed in."""

from __future__ import annotations

import pytest
import torch

from puface.utils.errors import ConfigError
from puface.defenses import create_defense
from puface.training.amplify import (
    AmplifyConfig,
    amplified_batch,
    amplify,
    input_variants,
    sample_factors,
    source_variants,
)


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


def test_source_variants_change_the_photo_and_keep_the_cloak():
    x, xc = _pair(n=64)
    specs = ("contrast:factor=1.5", "gamma:gamma=2")
    cfg = AmplifyConfig(source_share=0.5, source_variants=specs)
    v, vc = source_variants(x, xc, cfg, torch.Generator().manual_seed(0))
    changed = (v - x).flatten(1).abs().amax(1) > 0
    assert 10 < changed.sum() < 54  # about half the rows
    assert torch.equal(v[~changed], x[~changed]) and torch.equal(vc[~changed], xc[~changed])
    assert torch.allclose(vc - v, xc - x, atol=1e-6)  # the cloak's change rides on the variant
    for i in changed.nonzero().flatten().tolist():  # each changed row is exactly one of the variants
        assert any(torch.allclose(v[i], create_defense(s)(x[i:i + 1])[0], atol=1e-6) for s in specs)
    again, _ = source_variants(x, xc, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(again, v)
    # off by default, and then the generator is not touched (older recipes keep their random stream)
    g = torch.Generator().manual_seed(3)
    assert source_variants(x, xc, AmplifyConfig(), g)[0] is x
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert "photo variants 0.5 (2 kinds)" in cfg.describe()
    assert AmplifyConfig.from_dict(cfg.as_dict()) == cfg


def test_input_variants_reencode_input_and_target_alike():
    """[amplify] input_variants: chosen rows' finished input and target both go through the same variant (a JPEG
    of the cloaked photo -> the JPEG of the natural one); other rows are untouched; seeded; off = nothing drawn."""
    x, xc = _pair(n=64)
    cfg = AmplifyConfig(input_share=0.5, input_variants=("jpeg:quality=75", "jpeg:quality=90"))
    g = torch.Generator().manual_seed(0)
    inp, _ = amplified_batch(x, xc, cfg, g)
    t, vi = input_variants(x, inp, cfg, torch.Generator().manual_seed(1))
    changed = (t - x).flatten(1).abs().amax(1) > 0
    assert 10 < changed.sum() < 54
    assert torch.equal(t[~changed], x[~changed]) and torch.equal(vi[~changed], inp[~changed])
    jpeg = {q: create_defense(f"jpeg:quality={q}") for q in (75, 90)}
    for i in changed.nonzero().flatten().tolist():  # input and target through the same one of the two
        assert any(torch.allclose(t[i], d(x[i:i + 1])[0]) and torch.allclose(vi[i], d(inp[i:i + 1])[0])
                   for d in jpeg.values())
    again = input_variants(x, inp, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], t) and torch.equal(again[1], vi)
    g = torch.Generator().manual_seed(3)
    off = input_variants(x, inp, AmplifyConfig(), g)
    assert off[0] is x and off[1] is inp
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert "re-encoded inputs 0.5 (2 kinds)" in cfg.describe()
    assert AmplifyConfig.from_dict(cfg.as_dict()) == cfg
    assert "input_variants" not in AmplifyConfig().as_dict()  # older recipes record the config they always did


@pytest.mark.parametrize(
    "bad",
    [
        dict(k_min=2, k_max=1),
        dict(k_min=-1),
        dict(natural_share=1.0),
        dict(natural_share=-0.1),
        dict(k_values=(-1,)),
        dict(source_share=1.5, source_variants=("gamma",)),
        dict(source_share=0.5),
        dict(source_variants=("gamma:gamma=0",)),
        dict(source_variants="gamma"),
        dict(input_share=0.3),
        dict(input_variants="jpeg"),
        dict(input_share=2.0, input_variants=("jpeg",)),
        dict(input_variants=("jpeg:quality=0",)),
    ],
)
def test_bad_amplify_config(bad):
    with pytest.raises(ConfigError):
        AmplifyConfig(**bad)
    with pytest.raises(ConfigError, match="unknown amplify"):
        AmplifyConfig.from_dict({"k": 2})
