"""Fawkes' +-15 grey-level cap: v1.0.2's clip inside the loss vs the projected cap (`cap="project"`)."""

from __future__ import annotations

import pytest
import torch

from puface.attacks.fawkes import MODES, TANH_CONSTANT, Fawkes, _project_into_cap
from puface.utils.errors import ConfigError

from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAP = 15 / 255


@pytest.fixture(scope="module")
def chips(small_chips):
    """4 johns chips at 64 px (fast), float [0, 1]."""
    return small_chips(step=13, count=4, size=64)


def _image(simg_tanh, modifier):
    return torch.tanh(simg_tanh + modifier) / TANH_CONSTANT + 0.5


def test_projection_moves_only_the_pixels_past_the_cap_and_revives_their_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g) * 0.9 + 0.05
    simg_tanh = torch.atanh((x - 0.5) * TANH_CONSTANT)
    modifier = torch.randn(2, 3, 8, 8, generator=g) * 0.3  # many pixels land past +-15 grey levels
    past = (_image(simg_tanh, modifier) - x).abs() > CAP
    assert 0 < past.float().mean() < 1

    projected = _project_into_cap(modifier, simg_tanh, x, CAP)
    change = _image(simg_tanh, projected) - x
    assert (change.abs() <= CAP).all()
    assert torch.equal(projected[~past], modifier[~past])  # pixels inside the cap are not touched
    # the sign of the change is kept: a pixel pushed up stays up, at the cap
    assert torch.equal(change[past].sign(), (_image(simg_tanh, modifier) - x)[past].sign())
    assert torch.allclose(change[past].abs(), torch.full_like(change[past], CAP), rtol=2e-3)

    def grad_of_clipped_change(m):
        m = m.clone().requires_grad_(True)
        (_image(simg_tanh, m) - x).clamp(-CAP, CAP).sum().backward()
        return m.grad

    assert (grad_of_clipped_change(modifier)[past] == 0).all()  # v1.0.2: stuck past the cap
    assert (grad_of_clipped_change(projected) != 0).all()  # projected: every pixel can move back
    assert torch.allclose(_project_into_cap(projected, simg_tanh, x, CAP), projected, atol=1e-5)  # a fixed point


def test_projected_cap_keeps_the_budget_and_the_cap(chips):
    emb = tiny_embedder()
    th = MODES["mid"].th
    res = Fawkes("mid", [emb], cap="project", save_last_on_failed=False, device="cpu").run(chips, quantize_output=True)
    assert (res.stats["dssim"] <= 1.1 * th + 1e-6).all() and res.stats["dssim"].mean() > 0.5 * th
    assert ((res.images - chips).abs() <= CAP + 0.5 / 255 + 1e-6).all()  # the cap, plus 8-bit rounding
    assert (res.stats["shift_tiny"] > 0).all()


@pytest.mark.parametrize(
    "knob, default, other, unknown",
    [
        ("geometry", "chip", "square112", "square224"),
        ("cap", "clip", "project", "wrap"),
        ("ensemble", "sum", "min", "max"),
    ],
)
def test_knob_names_the_cache_key_only_when_not_the_default(knob, default, other, unknown):
    emb = tiny_embedder()
    plain = Fawkes("mid", [emb], device="cpu").config
    assert knob not in plain  # earlier cloaks keep their cache keys
    assert Fawkes("mid", [emb], device="cpu", **{knob: default}).config == plain
    changed = Fawkes("mid", [emb], device="cpu", **{knob: other}).config
    assert changed[knob] == other and changed != plain
    with pytest.raises(ConfigError, match=f"unknown {knob}"):
        Fawkes("mid", [emb], **{knob: unknown})
