"""Defenses: shapes, ranges, determinism and the behaviour each one promises."""

from __future__ import annotations

import pytest
import torch

from puface.defenses import Compose, create_defense, list_defenses
from puface.utils.errors import ConfigError, PufaceError

PIXEL_DEFENSES = {
    "none": {},
    "jpeg": {"quality": 50},
    "blur": {"sigma": 1.0},
    "median": {"size": 3},
    "bitdepth": {"bits": 4},
    "noise": {"sigma": 0.05},
    "resize": {"factor": 2},
    "sharpen": {"amount": 0.5},
    "gamma": {"gamma": 2.0},
    "contrast": {"factor": 1.5},
}


@pytest.fixture(scope="module")
def faces(johns_images):
    _, _, images = johns_images
    return images[::11][:4].clone()  # 4 real chips (4, 3, 150, 150)


def test_registry_lists_every_baseline():
    assert set(PIXEL_DEFENSES) | {"puface", "compose"} <= set(list_defenses())


@pytest.mark.parametrize("name", sorted(PIXEL_DEFENSES))
@pytest.mark.parametrize("shape", [(4, 3, 150, 150), (2, 3, 37, 50), (1, 3, 3, 3)])
def test_shape_range_and_determinism(name, shape, faces):
    d = create_defense(name, **PIXEL_DEFENSES[name])
    x = faces[: shape[0]] if shape[2:] == (150, 150) else torch.rand(shape, generator=torch.Generator().manual_seed(1))
    y = d(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(d(x), y), "a defense must be deterministic"
    assert torch.equal(d(x[:0]), x[:0])


def test_none_is_identity_and_the_others_change_the_image(faces):
    assert torch.equal(create_defense("none")(faces), faces)
    for name, params in PIXEL_DEFENSES.items():
        if name != "none":
            assert (create_defense(name, **params)(faces) - faces).abs().mean() > 1e-3, name


def test_jpeg_quality_orders_the_error(faces):
    err = [(create_defense("jpeg", quality=q)(faces) - faces).pow(2).mean().item() for q in (10, 50, 90)]
    assert err[0] > err[1] > err[2] > 0


def test_jpeg_at_a_smaller_scale_loses_more_and_scale_one_is_plain_jpeg(faces):
    plain = create_defense("jpeg:quality=75")
    assert create_defense("jpeg:quality=75,scale=1").cache_key == plain.cache_key  # old results and caches stay valid
    assert torch.equal(create_defense("jpeg:quality=75,scale=1")(faces), plain(faces))
    err = {
        s: (create_defense(f"jpeg:quality=75,scale={s}")(faces) - faces).pow(2).mean().item()
        for s in (0.6, 0.8, 1.0, 2.0)
    }
    assert err[0.6] > err[0.8] > err[1.0] > 0 and err[2.0] > 0
    small = create_defense("jpeg:quality=75,scale=0.8")
    assert small.name == "jpeg-q75-x0.8" and small.cache_key != plain.cache_key
    assert small(faces).shape == faces.shape


def test_blur_removes_high_frequencies_and_preserves_flat_images(faces):
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(create_defense("blur", sigma=2)(flat), flat, atol=1e-6)
    def hf(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()
    assert hf(create_defense("blur", sigma=1.5)(faces)) < 0.6 * hf(faces)


def test_median_removes_isolated_outliers():
    x = torch.full((1, 3, 16, 16), 0.5)
    x[0, :, 5, 7] = 1.0
    x[0, :, 10, 3] = 0.0
    assert torch.allclose(create_defense("median", size=3)(x), torch.full_like(x, 0.5))


def test_bitdepth_keeps_only_its_levels():
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    y = create_defense("bitdepth", bits=3)(x)
    assert len(torch.unique(y)) <= 8
    assert (y - x).abs().max() <= 0.5 / 7 + 1e-6


def test_noise_depends_on_the_image_not_the_batch(faces):
    d = create_defense("noise", sigma=0.05, seed=3)
    together = d(faces)
    alone = torch.cat([d(faces[i : i + 1]) for i in range(len(faces))])
    assert torch.equal(together, alone)
    assert not torch.equal(d(faces), create_defense("noise", sigma=0.05, seed=4)(faces))
    std = (together - faces).std().item()
    assert 0.03 < std < 0.06  # sigma 0.05, a little less where clipped


def test_resize_keeps_smooth_images_and_loses_detail(faces):
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    assert (create_defense("resize", factor=2)(ramp) - ramp).abs()[..., 2:-2].max() < 0.02
    assert (create_defense("resize", factor=4)(faces) - faces).abs().mean() > (
        create_defense("resize", factor=2)(faces) - faces
    ).abs().mean()


def test_sharpen_adds_back_detail_and_keeps_flat_images(faces):
    flat = torch.full((1, 3, 32, 32), 0.4)
    assert torch.allclose(create_defense("sharpen", amount=1.0)(flat), flat, atol=1e-6)
    blur = create_defense("blur", sigma=1.0)
    detail = lambda x: (x - blur(x)).abs().mean()  # noqa: E731
    weak, strong = create_defense("sharpen", amount=0.5)(faces), create_defense("sharpen", amount=1.5)(faces)
    assert detail(faces) < detail(weak) < detail(strong)
    assert create_defense("sharpen:amount=0.5,sigma=2").name == "sharpen-a0.5-s2"


def test_gamma_and_contrast_change_tones_as_cameras_do(faces):
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 8, 64).contiguous()
    dark, light = create_defense("gamma", gamma=2.0)(ramp), create_defense("gamma:gamma=0.5")(ramp)
    assert torch.allclose(dark, ramp ** 2, atol=1e-5) and torch.allclose(light, ramp.sqrt(), atol=1e-3)
    assert dark[..., [0, -1]].allclose(ramp[..., [0, -1]], atol=1e-5)  # black and white stay
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(create_defense("contrast", factor=2.0)(flat), flat, atol=1e-6)
    more, less = create_defense("contrast", factor=1.5)(faces), create_defense("contrast", factor=0.7)(faces)
    assert less.std() < faces.std() < more.std()
    assert (less.mean(dim=(1, 2, 3)) - faces.mean(dim=(1, 2, 3))).abs().max() < 1e-5  # the mean is kept
    assert create_defense("gamma:gamma=2.2+contrast:factor=1.5").name == "gamma-2.2+contrast-1.5"


def test_compose_is_sequential_and_flat(faces):
    a, b = create_defense("blur", sigma=1), create_defense("bitdepth", bits=5)
    c = a + b
    assert isinstance(c, Compose) and torch.equal(c(faces), b(a(faces)))
    parsed = create_defense("blur:sigma=1+bitdepth:bits=5")
    assert parsed.name == "blur-s1+bitdepth-5" == c.name
    assert torch.equal(parsed(faces), c(faces))
    nested = create_defense("compose", steps=[c, "jpeg:quality=80"])
    assert [s.kind for s in nested.steps] == ["blur", "bitdepth", "jpeg"]
    assert create_defense({"name": "compose", "steps": ["none", {"name": "median", "size": 5}]}).name == "none+median-5"


def test_cache_key_follows_the_settings():
    assert create_defense("jpeg", quality=75).cache_key == create_defense("jpeg:quality=75").cache_key
    assert create_defense("jpeg", quality=75).cache_key != create_defense("jpeg", quality=76).cache_key
    assert create_defense("noise", seed=1).cache_key != create_defense("noise", seed=2).cache_key


@pytest.mark.parametrize(
    "spec, message",
    [
        ("jpeg:quality=0", "quality"),
        ("median:size=4", "odd"),
        ("bitdepth:bits=9", "bits"),
        ("blur:sigma=-1", "sigma"),
        ("resize:factor=0.5", "factor"),
        ("jpeg:qualty=50", "accepted parameters"),
        ("deblur", "unknown defense"),
        ("sharpen:amount=0", "amount"),
        ("sharpen:sigma=0", "sigma"),
        ("gamma:gamma=0", "gamma"),
        ("contrast:factor=-1", "factor"),
        ("jpeg:quality", "key=value"),
        ("jpeg:scale=0.1", "scale"),
        ("jpeg+", "empty step"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(PufaceError, match=message):
        create_defense(spec)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        create_defense("blur")(torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match="float"):
        create_defense("blur")(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_puface_defense_with_a_missing_checkpoint_is_a_clear_error(tmp_path):
    d = create_defense("puface", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(PufaceError, match="nope.pt"):
        d(torch.rand(1, 3, 8, 8))


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        create_defense("jpeg", quality=200)


def test_puface_step_goes_along_the_purifiers_change(faces):
    """step = s gives x + s (P(x) - x) clamped: 1 is the purifier itself, 2 doubles its change; the exact
    (attacker's) forward pass is the same function before the clamp; settings reach the label and cache key."""
    plain, two = create_defense("puface"), create_defense("puface:step=2")
    p = plain(faces)
    assert torch.allclose(create_defense("puface:step=1")(faces), p)
    assert torch.allclose(two(faces), (faces + 2 * (p - faces)).clamp(0, 1), atol=1e-6)
    change = (two(faces) - faces).abs().mean() / (p - faces).abs().mean()
    assert 1.7 < float(change) <= 2.0  # the clamp trims a little
    with torch.no_grad():
        exact = two.exact_forward(faces)
    assert torch.allclose(exact.clamp(0, 1), two(faces), atol=1e-4)
    assert two.name == "puface-step2" and plain.name == "puface"
    assert "step" not in plain.params  # old configs keep their cache keys
    assert two.cache_key != plain.cache_key
    with pytest.raises(PufaceError, match="step"):
        create_defense("puface:step=0")
