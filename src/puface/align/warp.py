"""Cutting chips out of photos and putting changes back.

`extract_chip` reproduces dlib's `extract_image_chip` exactly (bilinear sampling, values truncated
to uint8, black outside the photo, and dlib's 5-tap image pyramid when the chip is more than 2x
smaller than its rectangle), so our chips are dlib's chips. `paste_delta` maps the *change* a chip
went through (chip_out - chip_in) back into the photo through the inverse transform, weighted by a
mask that fades to zero at the chip's border: no photo pixel outside a chip's footprint changes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .geometry import ChipTransform, apply_affine, invert_affine, to3x3


def _bilinear_dlib(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib's `interpolate_bilinear` at float positions; returns (values float64 (..., C), valid)."""
    h, w = img.shape[:2]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    valid = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0c = np.clip(x0, 0, max(w - 2, 0))
    y0c = np.clip(y0, 0, max(h - 2, 0))
    x1c = np.minimum(x0c + 1, w - 1)
    y1c = np.minimum(y0c + 1, h - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    # sample first, then convert: a float copy of a whole phone photo (some 300 MB) for one chip's pixels
    a, b = img[y0c, x0c].astype(np.float64), img[y0c, x1c].astype(np.float64)
    c, d = img[y1c, x0c].astype(np.float64), img[y1c, x1c].astype(np.float64)
    v = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)
    return v, valid


def _pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib's `pyramid_down<2>` on uint8 RGB: 5-tap [1 4 6 4 1] filter, every other pixel, /256
    truncated. Output ((H-3)//2, (W-3)//2, C)."""
    h, w = img.shape[:2]
    oh, ow = (h - 3) // 2, (w - 3) // 2
    if h <= 8 or w <= 8 or oh <= 0 or ow <= 0:
        return np.zeros((0, 0, img.shape[2]), np.uint8)
    a = img.astype(np.int32)  # at most 255 * 16 * 16: int32 halves the temporaries of a large face's crop
    c = 2 * np.arange(ow)
    rows = a[:, c] + 4 * a[:, c + 1] + 6 * a[:, c + 2] + 4 * a[:, c + 3] + a[:, c + 4]
    r = 2 + 2 * np.arange(oh)
    out = rows[r - 2] + 4 * rows[r - 1] + 6 * rows[r] + 4 * rows[r + 1] + rows[r + 2]
    return np.clip(out // 256, 0, 255).astype(np.uint8)


def _point_down(p: np.ndarray) -> np.ndarray:
    return p / 2.0 - np.array([1.25, 0.75])


def _rect_area(left: float, top: float, right: float, bottom: float) -> float:
    return max(0.0, right - left + 1) * max(0.0, bottom - top + 1)


def _round_rect(left: float, top: float, right: float, bottom: float) -> tuple[int, int, int, int]:
    # dlib: drectangle -> rectangle rounds each side to the nearest integer
    return (
        int(math.floor(left + 0.5)),
        int(math.floor(top + 0.5)),
        int(math.floor(right + 0.5)),
        int(math.floor(bottom + 0.5)),
    )


def _level(tf: ChipTransform, h: int, w: int) -> tuple[int, tuple[int, int, int, int] | None, np.ndarray, int, int]:
    """Where `extract_chip` samples the chip `tf` of an (h, w) photo: pyramid depth, the crop (x0, y0, x1, y1),
    inclusive, the pyramid is built on (None: the photo itself, depth 0; or nothing left to sample), the chip -> level
    affine (3x3) and the level's (height, width) (0, 0 when nothing is left)."""
    n = tf.size
    left, top, right, bottom = tf.rect
    # Pyramid depth: halve while the rectangle is still more than 4x the chip's area.
    depth = 0
    grow = 2.0
    pl, pt = _point_down(np.array([left, top]))
    pr, pb = _point_down(np.array([right, bottom]))
    while _rect_area(pl, pt, pr, pb) > n * n:
        (pl, pt), (pr, pb) = _point_down(np.array([pl, pt])), _point_down(np.array([pr, pb]))
        depth += 1
        grow = grow * 2 + 2
    m = to3x3(tf.chip_to_image)
    if depth == 0:
        return 0, None, m, h, w
    # crop the rotated rectangle (grown by `grow`) as dlib does, then build the pyramid on it
    corners = tf.corners()
    bl_, bt_ = corners.min(0) - grow
    br_, bb_ = corners.max(0) + grow
    bl_, bt_ = max(bl_, 0.0), max(bt_, 0.0)
    br_, bb_ = min(br_, w - 1.0), min(bb_, h - 1.0)
    x0, y0, x1, y1 = _round_rect(bl_, bt_, br_, bb_)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    if x1 < x0 or y1 < y0:
        return depth, None, m, 0, 0
    lh, lw = y1 - y0 + 1, x1 - x0 + 1
    for _ in range(depth):  # as _pyramid_down sizes its output
        oh, ow = (lh - 3) // 2, (lw - 3) // 2
        lh, lw = (oh, ow) if lh > 8 and lw > 8 and oh > 0 and ow > 0 else (0, 0)
    # chip -> level: translate by the crop, then point_down `depth` times (a similarity)
    m = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ m
    down = np.array([[0.5, 0, -1.25], [0, 0.5, -0.75], [0, 0, 1.0]])
    for _ in range(depth):
        m = down @ m
    return depth, (x0, y0, x1, y1), m, lh, lw


def extract_chip(image: np.ndarray, tf: ChipTransform) -> np.ndarray:
    """Cut the chip `tf` out of uint8 RGB `image` (H, W, 3): uint8 (size, size, 3), as dlib does."""
    n = tf.size
    h, w = image.shape[:2]
    depth, crop, m, lh, lw = _level(tf, h, w)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    chip_pts = np.stack([xx.ravel(), yy.ravel()], 1)
    if depth == 0:
        p = apply_affine(tf.chip_to_image, chip_pts)
        v, valid = _bilinear_dlib(image, p[:, 0], p[:, 1])
    else:
        if crop is None:
            return np.zeros((n, n, 3), np.uint8)
        x0, y0, x1, y1 = crop
        src = image[y0 : y1 + 1, x0 : x1 + 1]
        for _ in range(depth):
            src = _pyramid_down(src)
            if src.size == 0:
                return np.zeros((n, n, 3), np.uint8)
        p = apply_affine(m, chip_pts)
        v, valid = _bilinear_dlib(src, p[:, 0], p[:, 1])
    out = np.clip(np.floor(v), 0, 255).astype(np.uint8)  # dlib's assign_pixel truncates
    out[~valid] = 0
    return out.reshape(n, n, image.shape[2])


def feather_mask(size: int, feather: float) -> np.ndarray:
    """Chip-space weight (size, size) in [0, 1]: 0 on the outermost pixel ring, rising linearly to 1
    at `feather` pixels from the border."""
    d = np.arange(size, dtype=np.float64)
    edge = np.minimum(d, size - 1 - d)
    if feather <= 0:
        ramp = (edge > 0).astype(np.float64)
    else:
        ramp = np.clip(edge / feather, 0.0, 1.0)
    return np.minimum.outer(ramp, ramp)


def _edge_distance(tf: ChipTransform, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """For each chip pixel: its source in the photo ((size * size, 2) x, y) and how far that lies inside the (h, w)
    photo's edge ((size, size) photo pixels, <= 0 off the photo; as extract_chip's sampler has it: a source needs its
    right and lower neighbours)."""
    n = tf.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    p = apply_affine(tf.chip_to_image, np.stack([xx.ravel(), yy.ravel()], 1))
    edge = np.minimum.reduce([p[:, 0], (w - 1.0) - p[:, 0], p[:, 1], (h - 1.0) - p[:, 1]]).reshape(n, n)
    return p, edge


def _sampled_distance(tf: ChipTransform, h: int, w: int) -> np.ndarray:
    """For each chip pixel, in chip pixels, how far its source lies inside what `extract_chip` samples of an (h, w)
    photo ((size, size); <= 0 where the chip is black): the photo's edge, or for a large face cut by it the edge of the
    reduced copy of the photo it is sampled from, which lies some chip pixels inside the photo's edge."""
    dist = _edge_distance(tf, h, w)[1] / max(tf.scale, 1e-12)
    depth, crop, m, lh, lw = _level(tf, h, w)
    if depth == 0:
        return dist
    if crop is None or lh == 0:
        return np.minimum(dist, 0.0)
    n = tf.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    p = apply_affine(m, np.stack([xx.ravel(), yy.ravel()], 1))
    # only the reduced copy's sides cut by the photo's edge: its other sides lie beyond the chip (a face inside the
    # photo keeps its chip, and its weight, as before)
    x0, y0, x1, y1 = crop
    sides = [d for d, cut in ((p[:, 0], x0 == 0), ((lw - 1.0) - p[:, 0], x1 == w - 1), (p[:, 1], y0 == 0),
                              ((lh - 1.0) - p[:, 1], y1 == h - 1)) if cut]
    if not sides:
        return dist
    level_scale = float(np.hypot(m[0, 0], m[1, 0]))
    return np.minimum(dist, np.minimum.reduce(sides).reshape(n, n) / max(level_scale, 1e-12))


def inside_photo_weight(tf: ChipTransform, h: int, w: int, feather: float) -> np.ndarray:
    """Chip-space weight (size, size) in [0, 1] of how far inside an (h, w) photo each chip pixel's source lies: 0 where
    it is off the photo (black in the chip: for a large face also a rim inside the photo's edge, see
    `_sampled_distance`), rising linearly to 1 at `feather` chip pixels inside."""
    dist = _sampled_distance(tf, h, w)
    if feather <= 0:
        return (dist > 0).astype(np.float64)
    return np.clip(dist / feather, 0.0, 1.0)


def fill_off_photo(image: np.ndarray, tf: ChipTransform, chip: np.ndarray) -> np.ndarray:
    """`chip` (cut from uint8 RGB `image` (H, W, 3) by `extract_chip(image, tf)`) with the part off the photo, black
    there, filled with the photo's nearest edge pixels (and the pixels within two chip pixels of the edge, and any
    that a reduced copy of a large photo left black, resampled alike): what a chip process should see of a face cut by
    the photo's edge, whose black border it would otherwise answer with a band along that edge. uint8 (S, S, 3)."""
    h, w = image.shape[:2]
    p, edge = _edge_distance(tf, h, w)
    near = (edge < max(1.0, 2.0 * tf.scale)) | (_sampled_distance(tf, h, w) <= 0)
    if not near.any() or h < 2 or w < 2:
        return chip
    sel = near.ravel()
    x = np.clip(p[sel, 0], 0.0, w - 1.0 - 1e-6)
    y = np.clip(p[sel, 1], 0.0, h - 1.0 - 1e-6)
    v, _ = _bilinear_dlib(image, x, y)
    out = np.array(chip, copy=True)
    out[near] = np.clip(np.floor(v), 0, 255).astype(np.uint8)
    return out


def footprint_box(tf: ChipTransform, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1), inclusive, of photo pixels a chip can touch; None if off the photo."""
    c = tf.corners()
    x0, y0 = np.floor(c.min(0)).astype(int)
    x1, y1 = np.ceil(c.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x1 < x0 or y1 < y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _sample_zero_pad(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of (S, S, C) `a` at float positions, zero outside."""
    s = a.shape[0]
    pad = np.zeros((s + 2, s + 2, a.shape[2]), np.float64)
    pad[1:-1, 1:-1] = a
    xp = np.clip(x + 1.0, 0.0, s + 1.0)
    yp = np.clip(y + 1.0, 0.0, s + 1.0)
    x0 = np.minimum(np.floor(xp).astype(np.int64), s)
    y0 = np.minimum(np.floor(yp).astype(np.int64), s)
    fx = (xp - x0)[..., None]
    fy = (yp - y0)[..., None]
    return (1 - fy) * ((1 - fx) * pad[y0, x0] + fx * pad[y0, x0 + 1]) + fy * (
        (1 - fx) * pad[y0 + 1, x0] + fx * pad[y0 + 1, x0 + 1]
    )


#: Photo pixels `paste_delta` maps at once (a face's footprint is done in strips of rows of about this many).
_STRIP_PIXELS = 1 << 18


def paste_delta(
    image: np.ndarray,
    deltas: Sequence[tuple[ChipTransform, np.ndarray]],
    *,
    feather: float = 4.0,
    keeps: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Add chip-space changes back into a photo.

    Args:
        image: uint8 RGB (H, W, 3), the photo the chips were cut from.
        deltas: (transform, delta) per face; delta is float (size, size, 3) in grey levels
            (chip_out - chip_in, in 0..255 units).
        feather: width in chip pixels over which a change fades to zero towards the chip border.
        keeps: per face (or None), a chip-space weight (size, size) or (size, size, 1) in [0, 1] its delta was
            already multiplied by (`inside_photo_weight`: a change held back where the chip reaches past the
            photo's edge). It also scales the face's weight in the averaging of overlapping changes, so that a
            face held back there does not dilute another face's change. None: 1.
    Returns:
        uint8 (H, W, 3): the photo plus the mapped changes, rounded. Where footprints overlap, the
        changes are averaged by their weights. Pixels outside every chip footprint are unchanged.
    """
    h, w = image.shape[:2]
    if keeps is None:
        keeps = [None] * len(deltas)
    if len(keeps) != len(deltas):
        raise ValueError(f"keeps has {len(keeps)} entries for {len(deltas)} deltas")
    boxes = [
        (tf, delta, keep, box)
        for (tf, delta), keep in zip(deltas, keeps)
        if (box := footprint_box(tf, h, w)) is not None
    ]
    if not boxes:
        return image.copy()
    # work in the union of the footprints only: a phone photo's full-size float buffers took some 1.4 GB and most
    # of the time of a paste, though only the faces change
    ux0 = min(b[0] for *_, b in boxes)
    uy0 = min(b[1] for *_, b in boxes)
    ux1 = max(b[2] for *_, b in boxes)
    uy1 = max(b[3] for *_, b in boxes)
    acc = np.zeros((uy1 - uy0 + 1, ux1 - ux0 + 1, 3), np.float64)
    wsum = np.zeros((uy1 - uy0 + 1, ux1 - ux0 + 1, 1), np.float64)
    for tf, delta, keep, (x0, y0, x1, y1) in boxes:
        n = tf.size
        mask = feather_mask(n, feather)[..., None]
        weighted = np.asarray(delta, np.float64) * mask
        if keep is not None:  # the averaging weight (the delta carries its keep already)
            mask = mask * np.asarray(keep, np.float64).reshape(n, n, 1)
        to_chip = invert_affine(tf.chip_to_image)
        rows = max(1, _STRIP_PIXELS // (x1 - x0 + 1))  # a large face in strips: its temporaries stay small
        for ya in range(y0, y1 + 1, rows):
            yb = min(y1, ya + rows - 1)
            yy, xx = np.mgrid[ya : yb + 1, x0 : x1 + 1].astype(np.float64)
            pc = apply_affine(to_chip, np.stack([xx.ravel(), yy.ravel()], 1))
            cx = pc[:, 0].reshape(xx.shape)
            cy = pc[:, 1].reshape(xx.shape)
            wd = _sample_zero_pad(weighted, cx, cy)
            ww = _sample_zero_pad(mask, cx, cy)
            inside = (cx >= 0) & (cx <= n - 1) & (cy >= 0) & (cy <= n - 1)
            wd[~inside] = 0
            ww[~inside] = 0
            acc[ya - uy0 : yb - uy0 + 1, x0 - ux0 : x1 - ux0 + 1] += wd
            wsum[ya - uy0 : yb - uy0 + 1, x0 - ux0 : x1 - ux0 + 1] += ww
    # wd = sum(w_i d_i); normalise only where weights overlap above 1 (a single face keeps its fade)
    acc /= np.maximum(wsum, 1.0)
    res = image.copy()
    part = res[uy0 : uy1 + 1, ux0 : ux1 + 1]
    acc += part
    part[...] = np.clip(np.rint(acc, out=acc), 0, 255, out=acc).astype(np.uint8)
    return res


def paste_back(
    image: np.ndarray,
    chips: Sequence[tuple[ChipTransform, np.ndarray, np.ndarray]],
    *,
    feather: float = 4.0,
    refine_steps: int = 2,
) -> np.ndarray:
    """Put processed chips back into a photo by their change only.

    Args:
        image: uint8 RGB (H, W, 3).
        chips: (transform, chip_in, chip_out) per face; chip_in is the chip cut from `image`
            (uint8 (S, S, 3)), chip_out what processing made of it (uint8 or float 0..255).
        feather: chip pixels over which the change fades out towards the chip border.
        refine_steps: extra passes that re-cut each chip from the result and paste the remaining
            difference to the feathered target chip_in + mask * (chip_out - chip_in), so that
            re-aligning the output photo gives back (nearly) the processed chip despite the two
            resamplings and uint8 rounding. 0 = a single paste.
    Returns:
        uint8 (H, W, 3), same size as `image`; pixels outside every chip footprint are unchanged.
    """
    if not chips:
        return image.copy()
    h, w = image.shape[:2]
    masks: dict[int, np.ndarray] = {}
    targets = []
    first = []
    inside = []
    for tf, cin, cout in chips:
        m = masks.setdefault(tf.size, feather_mask(tf.size, feather))[..., None]
        # a face cut by the photo's edge: no change off the photo, fading in over `feather` chip pixels inside it (the
        # processing's answer to the chip's black border was pasted along that edge: a band of up to 70 grey levels)
        keep = inside_photo_weight(tf, h, w, feather)[..., None]
        d = keep * (np.asarray(cout, np.float64) - np.asarray(cin, np.float64))
        targets.append(np.asarray(cin, np.float64) + m * d)
        first.append((tf, d))
        inside.append(keep)
    # the inside-photo weight also in the averaging where faces overlap: a face held back at the photo's edge would
    # otherwise dilute the other's change there
    out = paste_delta(image, first, feather=feather, keeps=inside)
    for _ in range(max(0, int(refine_steps))):
        res = [(tf, keep * (tgt - extract_chip(out, tf))) for (tf, _, _), tgt, keep in zip(chips, targets, inside)]
        out = paste_delta(out, res, feather=feather, keeps=inside)
    return out
