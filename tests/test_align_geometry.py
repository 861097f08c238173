"""Chip geometry and warping: similarity fits, dlib-exact chips, feathered paste-back locality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from puface.align.geometry import (
    ChipTransform,
    apply_affine,
    arcface_template,
    chip_transform,
    dlib_template,
    face_size,
    fit_similarity,
    invert_affine,
    template_for_size,
)
from puface.align.warp import extract_chip, feather_mask, paste_back, paste_delta


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 7.0 + yy / 13.0), 128 + 90 * np.cos(yy / 5.0), (xx * 3 + yy * 5) % 256], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = _similarity(rng.uniform(-3, 3), rng.uniform(0.2, 5), *rng.uniform(-100, 100, 2))
        src = rng.uniform(0, 150, (5, 2))
        got = fit_similarity(src, apply_affine(m, src))
        np.testing.assert_allclose(got, m, atol=1e-9)


def test_fit_similarity_is_least_squares_under_noise_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (50, 2))
    m = _similarity(0.3, 1.7, 10, -5)
    dst = apply_affine(m, src) + rng.normal(0, 0.5, (50, 2))
    got = fit_similarity(src, dst)
    np.testing.assert_allclose(got[:, :2], m[:, :2], atol=0.01)
    # least squares: no similarity fits better, the true one included
    resid = lambda a: ((apply_affine(a, src) - dst) ** 2).sum()  # noqa: E731
    assert resid(got) <= resid(m)
    assert resid(got) < resid(_similarity(0.31, 1.7, 10, -5))
    with pytest.raises(ValueError):
        fit_similarity(np.zeros((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        fit_similarity(np.zeros((3, 2)), np.ones((4, 2)))


def test_templates():
    t150 = dlib_template(150, 0.25)
    assert t150.size == 150 and t150.points.shape == (5, 2)
    # padding 0.25: the unit face spans the middle 1/1.5 of the chip
    assert 25 < t150.points[:, 0].min() < t150.points[:, 0].max() < 125
    assert template_for_size(150).name == "dlib150"
    t112 = template_for_size(112)
    assert t112.name == "arcface112" and t112.size == 112
    # the ArcFace layout: eyes at y ~ 51.6, nose below, face centred horizontally
    eyes_y = t112.points[:4, 1].mean()
    assert 45 < eyes_y < 60 and t112.points[4, 1] > eyes_y + 15
    assert abs(t112.points[:, 0].mean() - 56) < 3
    assert arcface_template(224).points[0, 0] == pytest.approx(2 * t112.points[0, 0])


def test_chip_transform_puts_landmarks_on_the_template_and_inverts():
    tpl = dlib_template(150, 0.25)
    m = _similarity(0.4, 1.9, 300, 120)
    lm = apply_affine(m, tpl.points)
    tf = chip_transform(lm, tpl)
    # dlib's convention maps the template to within a pixel of the landmarks (its rectangle is
    # scaled by (size*s - 1)/(size - 1) instead of s)
    err = np.linalg.norm(apply_affine(tf.image_to_chip, lm) - tpl.points, axis=1)
    assert err.max() < 1.0
    assert tf.scale == pytest.approx((150 * 1.9 - 1) / 149, rel=1e-9)
    assert tf.angle == pytest.approx(0.4)
    np.testing.assert_allclose(
        apply_affine(tf.image_to_chip, apply_affine(tf.chip_to_image, tpl.points)), tpl.points, atol=1e-9
    )
    back = ChipTransform.from_json(tf.to_json())
    np.testing.assert_allclose(back.chip_to_image, tf.chip_to_image, atol=1e-5)
    assert face_size(lm) == pytest.approx(1.9 * 150 / 1.5, rel=1e-6)
    np.testing.assert_allclose(invert_affine(invert_affine(m)), m, atol=1e-9)


@pytest.mark.parametrize("scale", [0.6, 1.0, 2.5, 5.5])  # 2.5 and 5.5 go through dlib's image pyramid
def test_extract_chip_equals_dlib_get_face_chip(scale):
    dlib = pytest.importorskip("dlib")
    rng = np.random.default_rng(int(scale * 10))
    tpl = dlib_template(150, 0.25)
    size = int(150 * scale * 2.2)
    img = _textured(size + 17, size, seed=3)
    for _ in range(3):
        m = _similarity(
            rng.uniform(-0.6, 0.6), scale * rng.uniform(0.9, 1.1), *(rng.uniform(0.3, 0.7, 2) * size - 75 * scale)
        )
        lm = np.rint(apply_affine(m, tpl.points))  # dlib's landmarks are integer points
        det = dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in lm])
        ref = dlib.get_face_chip(img, det, size=150, padding=0.25)
        ours = extract_chip(img, chip_transform(lm, tpl))
        assert ours.shape == ref.shape == (150, 150, 3)
        assert np.array_equal(ours, ref)


def test_extract_chip_outside_the_photo_is_black():
    tpl = dlib_template(150, 0.25)
    img = np.full((100, 100, 3), 200, np.uint8)
    lm = apply_affine(_similarity(0.0, 1.0, -60, -60), tpl.points)  # chip hangs off the top-left
    chip = extract_chip(img, chip_transform(lm, tpl))
    assert chip[0, 0].tolist() == [0, 0, 0]
    assert chip[-1, -1].tolist() == [200, 200, 200]


def test_feather_mask():
    m = feather_mask(150, 8)
    assert m.shape == (150, 150)
    assert m[0].max() == 0 and m[:, -1].max() == 0
    assert m[8:-8, 8:-8].min() == 1.0
    assert 0 < m[4, 75] < 1
    np.testing.assert_allclose(m, m.T)


def _inside_chip(tf: ChipTransform, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pc = apply_affine(tf.image_to_chip, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    n = tf.size
    return (pc[..., 0] > 0) & (pc[..., 0] < n - 1) & (pc[..., 1] > 0) & (pc[..., 1] < n - 1)


@pytest.mark.parametrize("refine_steps", [0, 2])
def test_paste_back_changes_only_the_face_region_and_keeps_the_size(refine_steps):
    tpl = dlib_template(150, 0.25)
    img = _textured(240, 320, seed=5)
    tfs = [chip_transform(apply_affine(_similarity(a, s, x, y), tpl.points), tpl)
           for a, s, x, y in ((0.3, 0.8, 40, 30), (-0.2, 1.3, 150, 60))]
    rng = np.random.default_rng(0)
    chips = []
    for tf in tfs:
        cin = extract_chip(img, tf)
        cout = np.clip(cin.astype(int) + rng.integers(-20, 21, cin.shape), 0, 255).astype(np.uint8)
        chips.append((tf, cin, cout))
    out = paste_back(img, chips, feather=8, refine_steps=refine_steps)
    assert out.shape == img.shape and out.dtype == np.uint8
    region = _inside_chip(tfs[0], 240, 320) | _inside_chip(tfs[1], 240, 320)
    changed = (out != img).any(-1)
    assert changed.sum() > 0.5 * region.sum()
    assert not (changed & ~region).any(), "a pixel outside every chip footprint changed"


def test_paste_back_reproduces_the_chip_change_when_realigned():
    tpl = dlib_template(150, 0.25)
    img = _textured(300, 300, seed=6)
    tf = chip_transform(apply_affine(_similarity(0.15, 1.2, 60, 50), tpl.points), tpl)
    cin = extract_chip(img, tf)
    yy, xx = np.mgrid[0:150, 0:150]
    smooth = (12 * np.sin(xx / 6.0) * np.cos(yy / 9.0))[..., None]  # a cloak-like smooth change
    cout = np.clip(cin + smooth, 0, 255)
    inner = feather_mask(150, 8) == 1
    want = (cout - cin)[inner]
    errs = []
    for steps in (0, 3):
        again = extract_chip(paste_back(img, [(tf, cin, cout)], feather=8, refine_steps=steps), tf).astype(float)
        errs.append(np.abs((again - cin)[inner] - want).mean())
    assert errs[0] < 1.5  # a smooth change survives the round trip within about a grey level
    assert errs[1] < errs[0]  # and refinement brings it closer


def test_paste_delta_zero_change_and_off_photo_chips_leave_the_photo_alone():
    tpl = dlib_template(150, 0.25)
    img = _textured(100, 120, seed=7)
    tf = chip_transform(apply_affine(_similarity(0.0, 0.5, 10, 10), tpl.points), tpl)
    assert np.array_equal(paste_delta(img, [(tf, np.zeros((150, 150, 3)))]), img)
    far = chip_transform(apply_affine(_similarity(0.0, 0.5, 5000, 5000), tpl.points), tpl)
    assert np.array_equal(paste_delta(img, [(far, np.full((150, 150, 3), 50.0))]), img)
    assert np.array_equal(paste_back(img, []), img)


def test_paste_back_of_a_small_face_in_a_large_photo_allocates_about_the_photo_not_float_copies_of_it():
    # a 3 MP photo with one 150 px face: paste_back made float64 buffers of the whole photo (accumulator, weights,
    # the photo as float, its sum, rounding) on each of its three passes: 44x the photo's bytes at its peak, some
    # 1.4 GB and 6 s for a 9 MP photo of `purify --align`; only the union of the faces' footprints is worked on now
    import tracemalloc

    img = _textured(1500, 2000, seed=9)
    tf = chip_transform(apply_affine(_similarity(0.2, 1.0, 900, 700), dlib_template(150, 0.25).points),
                        dlib_template(150, 0.25))
    cin = extract_chip(img, tf)
    cout = np.clip(cin.astype(int) + 7, 0, 255).astype(np.uint8)
    tracemalloc.start()
    try:
        out = paste_back(img, [(tf, cin, cout)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * img.nbytes, f"peak {peak / img.nbytes:.1f}x the photo's bytes"
    assert (out != img).any(-1).sum() > 0.5 * _inside_chip(tf, 1500, 2000).sum()


def test_paste_delta_in_strips_equals_one_pass(monkeypatch):
    # a large face is mapped in strips of rows; the strips' seams must not show: the same bytes as one pass
    import puface.align.warp as warp

    tpl = dlib_template(150, 0.25)
    img = _textured(400, 420, seed=10)
    tfs = [chip_transform(apply_affine(_similarity(a, s, x, y), tpl.points), tpl)
           for a, s, x, y in ((0.4, 2.2, 40, 30), (-0.3, 1.5, 170, 120))]
    rng = np.random.default_rng(1)
    deltas = [(tf, rng.normal(0, 15, (150, 150, 3))) for tf in tfs]
    whole = paste_delta(img, deltas, feather=6)
    monkeypatch.setattr(warp, "_STRIP_PIXELS", 997)
    assert np.array_equal(paste_delta(img, deltas, feather=6), whole)


@pytest.mark.parametrize("side", [(0, 1), (1, 0)])
def test_a_large_face_cut_by_the_photos_edge_shows_no_black_rim_inside_the_photo(side):
    # a large face's chip is sampled from a reduced copy of the photo, which stops some photo pixels short of the
    # photo's edge: dlib's chip has a black line there, inside the photo. fill_off_photo left it (it filled two chip
    # pixels from the edge), so the chip function answered it with a band (purify --align, a blur, face 8x the chip:
    # up to 116 grey levels along the photo's bottom edge, face 10), and paste_back pasted changes from it
    from puface.align.geometry import transform_from_rect
    from puface.align.warp import _edge_distance, fill_off_photo, inside_photo_weight

    h = w = 1500
    img = np.random.default_rng(0).integers(100, 200, (h, w, 3)).astype(np.uint8)  # no black pixel
    size = 1195.0  # photo pixels: a chip pixel is 8 photo pixels, a pyramid of depth 2
    start = [w / 3, w / 3]
    start[side[0]] = w - size * 0.4  # the face's lower (right) 60% lies beyond the photo's bottom (right) edge
    tf = transform_from_rect((start[1], start[0], start[1] + size, start[0] + size), 0.0, 150)
    chip = extract_chip(img, tf)
    inside = _edge_distance(tf, h, w)[1] > 0
    filled = fill_off_photo(img, tf, chip)
    assert not ((filled == 0).all(-1) & inside).any()
    assert (filled[~inside] > 0).all()  # off the photo: the edge continued
    # no change is pasted from where the chip as cut is black
    assert (inside_photo_weight(tf, h, w, 4.0)[(chip == 0).all(-1)] == 0).all()


def test_a_large_face_inside_the_photo_keeps_its_chip_and_weight():
    # the reduced copy a large face is sampled from is a crop a little beyond the chip's corners: only its sides cut
    # by the photo's edge may count as an edge (its other sides weighted the chip's corners down: the bytes of every
    # large face changed)
    from puface.align.geometry import transform_from_rect
    from puface.align.warp import fill_off_photo, inside_photo_weight

    h, w = 1700, 1800
    img = _textured(h, w, seed=3)
    for angle in (0.0, 0.5, -2.0):
        tf = transform_from_rect((400.0, 350.0, 1399.0, 1349.0), angle, 150)  # 6.7 photo px per chip px
        chip = extract_chip(img, tf)
        assert (inside_photo_weight(tf, h, w, 4.0) == 1).all()
        assert np.array_equal(fill_off_photo(img, tf, chip), chip)


def test_a_face_held_back_at_the_photos_edge_does_not_dilute_an_overlapping_faces_change():
    """Two faces overlap near the photo's left edge: a large one cut by it (its change held back there by
    `inside_photo_weight`) and a small one wholly inside. Both shift their chip by +20: where they overlap, the small
    face's change must not be averaged down by the held-back one (it was, to 11 grey levels)."""
    from puface.align.geometry import transform_from_rect
    from puface.align.warp import footprint_box, inside_photo_weight

    h = w = 900
    img = (_textured(h, w, seed=3) // 2 + 64).astype(np.uint8)  # room for +20 without clipping
    cut = transform_from_rect((-300, 0, 599, 899), 0.0, 150)
    inner = transform_from_rect((6, 400, 105, 499), 0.0, 150)
    assert inside_photo_weight(cut, h, w, 4.0).min() == 0 and (inside_photo_weight(inner, h, w, 4.0) == 1).all()

    def shifted(tf):
        c = extract_chip(img, tf)
        return tf, c, c.astype(np.float64) + 20

    both = paste_back(img, [shifted(cut), shifted(inner)], refine_steps=0).astype(int) - img
    alone = paste_back(img, [shifted(inner)], refine_steps=0).astype(int) - img
    x0, y0, _, y1 = footprint_box(inner, h, w)
    band = np.s_[y0 + 20 : y1 - 20, x0 + 3 : x0 + 25]  # inside the small face, where the cut one is held back
    assert (alone[band] == 20).all()
    assert (both[band] == 20).all()
    # the averaging weight of paste_delta: a held-back face (keep 0) weighs nothing, a keep of ones changes nothing
    d = [(cut, np.zeros((150, 150, 3))), (inner, np.full((150, 150, 3), 20.0))]
    zero = np.zeros((150, 150))
    assert (paste_delta(img, d, keeps=[zero, None]) == paste_delta(img, d[1:])).all()
    assert (paste_delta(img, d, keeps=[np.ones((150, 150)), None]) == paste_delta(img, d)).all()
