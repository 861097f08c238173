"""Chip geometry: where a face chip lies in a photo, as an invertible affine transform.

Coordinates are pixel positions (x = column, y = row) with integer values at pixel centres, as in
dlib. A `ChipTemplate` says where the five landmarks of dlib's 5-point shape predictor (two corners
of each eye, the bottom of the nose) should land in a square chip of `size` pixels. `chip_transform`
fits that template to detected landmarks exactly as dlib's `get_face_chip_details` +
`extract_image_chip` do (least-squares similarity, then a rectangle whose corners map to the chip's
corner pixels), so our chips equal dlib's `get_face_chip` to the last bit (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..utils.errors import PufaceError
from ..utils.registry import Registry

#: dlib's mean 5-point face (dlib/image_transforms/interpolation.h, `get_face_chip_details`), in a
#: unit square spanning the face: parts 0,1 = corners of the eye on the image's right (outer,
#: inner), 2,3 = corners of the eye on the image's left (outer, inner), 4 = bottom of the nose.
DLIB_MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

#: The ArcFace / InsightFace 112x112 reference points (left eye, right eye, nose tip, left and right
#: mouth corner, in image coordinates), for reference and for detectors that give these points.
ARCFACE_112_POINTS = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)

#: dlib's 5 landmarks expressed in the ArcFace 112x112 frame: the mean over 397 LFW faces of
#: (dlib 5-point landmarks mapped by the similarity that sends YuNet's ArcFace-style 5 points onto
#: `ARCFACE_112_POINTS`). Measured by docs/studies/2026-11-26-arcface-template.
DLIB5_IN_ARCFACE_112 = np.array(
    [
        [79.6277, 53.1577],
        [65.624, 53.8247],
        [30.2259, 53.6526],
        [44.2764, 54.0204],
        [55.2229, 80.708],
    ]
)


@dataclass(frozen=True)
class ChipTemplate:
    """Where dlib's 5 landmarks go in a square chip.

    name: registry name; size: chip side in pixels; points: (5, 2) float chip coordinates (x, y) of
    dlib's parts 0..4; padding: dlib's padding when the template is dlib's (informational).
    """

    name: str
    size: int
    points: np.ndarray
    padding: float | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "padding": self.padding,
            "points": np.round(self.points, 4).tolist(),
        }


def dlib_template(size: int = 150, padding: float = 0.25) -> ChipTemplate:
    """dlib's `get_face_chip(img, shape, size, padding)` layout (150 px, padding 0.25 is what dlib's
    face recognition ResNet expects)."""
    if size < 8 or padding < 0:
        raise PufaceError(f"invalid chip template: size {size} (>= 8), padding {padding} (>= 0)")
    pts = (padding + DLIB_MEAN_FACE_5) / (2 * padding + 1) * size
    return ChipTemplate(f"dlib{size}" if padding == 0.25 else f"dlib{size}-p{padding:g}", size, pts, padding)


def arcface_template(size: int = 112) -> ChipTemplate:
    """The ArcFace 112x112 layout (scaled for other sizes), placed through dlib's 5 landmarks."""
    return ChipTemplate(f"arcface{size}" if size != 112 else "arcface112", size, DLIB5_IN_ARCFACE_112 * (size / 112.0))


TEMPLATES = Registry("chip template")
TEMPLATES.register("dlib150", help="dlib face chip, 150 px, padding 0.25 (dlib ResNet input)")(
    lambda: dlib_template(150, 0.25)
)
TEMPLATES.register("arcface112", help="ArcFace/InsightFace 112 px layout (SFace, ArcFace input)")(
    lambda: arcface_template(112)
)


def template_for_size(size: int) -> ChipTemplate:
    """150 -> dlib150, 112 -> arcface112, other sizes -> dlib layout with padding 0.25."""
    if size == 112:
        return arcface_template(112)
    return dlib_template(size, 0.25)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Umeyama's method, as dlib's `find_similarity_transform`. src, dst: (N, 2), N >= 2.
    Returns a 2x3 matrix A with dst ~ A[:, :2] @ src + A[:, 2].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N>=2, 2) point sets of the same shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("source points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(cov) < 0:
        flip[1, 1] = -1
    rot = u @ flip @ vt
    scale = np.trace(np.diag(sig) @ flip) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def to3x3(a: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(a, np.float64), [0.0, 0.0, 1.0]])


def apply_affine(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points by a 2x3 (or 3x3) affine matrix."""
    a = np.asarray(a, np.float64)
    pts = np.asarray(pts, np.float64)
    return pts @ a[:2, :2].T + a[:2, 2]


def invert_affine(a: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix, as 2x3."""
    return np.linalg.inv(to3x3(a))[:2]


@dataclass(frozen=True)
class ChipTransform:
    """Where one chip lies in its photo.

    chip_to_image: 2x3 affine, chip pixel (x, y) -> photo pixel (x, y); image_to_chip is its inverse.
    rect: dlib's extraction rectangle (left, top, right, bottom) before rotation, photo pixels;
    angle: its rotation in radians (dlib's convention); size: chip side in pixels;
    scale: photo pixels per chip pixel.
    """

    chip_to_image: np.ndarray
    rect: tuple[float, float, float, float]
    angle: float
    size: int

    @property
    def image_to_chip(self) -> np.ndarray:
        return invert_affine(self.chip_to_image)

    @property
    def scale(self) -> float:
        return float(math.hypot(self.chip_to_image[0, 0], self.chip_to_image[1, 0]))

    def corners(self) -> np.ndarray:
        """(4, 2) photo coordinates of the chip's corner pixel centres: tl, tr, br, bl."""
        s = self.size - 1
        return apply_affine(self.chip_to_image, np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64))

    def to_json(self) -> dict:
        return {
            "chip_to_image": np.round(self.chip_to_image, 6).tolist(),
            "rect": [round(v, 4) for v in self.rect],
            "angle": round(self.angle, 6),
            "size": self.size,
        }

    @classmethod
    def from_json(cls, d: dict) -> "ChipTransform":
        return cls(np.asarray(d["chip_to_image"], np.float64), tuple(d["rect"]), float(d["angle"]), int(d["size"]))


def _rotate_about(center: np.ndarray, p: np.ndarray, angle: float) -> np.ndarray:
    ca, sa = math.cos(angle), math.sin(angle)
    d = p - center
    return center + np.array([ca * d[0] - sa * d[1], sa * d[0] + ca * d[1]])


def chip_transform(landmarks: np.ndarray, template: ChipTemplate) -> ChipTransform:
    """Fit `template` to 5 detected landmarks (dlib's part order, photo pixels), the dlib way.

    dlib's `chip_details(chip_points, img_points, dims)`: a similarity T (chip -> photo) is fitted;
    the extraction rectangle is centred on T(size/2, size/2) with side size * scale (drectangle
    convention: width = right - left + 1) and rotated by T's angle; chip pixel (0, 0) maps to its
    top-left corner, (size-1, 0) to its top-right one, (0, size-1) to its bottom-left one.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got {landmarks.shape}")
    n = template.size
    t = fit_similarity(template.points, landmarks)
    p = t[:, :2] @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    ctr = t[:, :2] @ np.array([n / 2.0, n / 2.0]) + t[:, 2]
    half = (n * scale - 1.0) / 2.0  # centered_drect: width-- then +-width/2
    rect = (ctr[0] - half, ctr[1] - half, ctr[0] + half, ctr[1] + half)
    return transform_from_rect(rect, angle, n)


def transform_from_rect(rect: tuple[float, float, float, float], angle: float, size: int) -> ChipTransform:
    """The chip -> photo affine of dlib's `extract_image_chip` for a rotated square rectangle."""
    left, top, right, bottom = rect
    ctr = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    tl = _rotate_about(ctr, np.array([left, top]), angle)
    tr = _rotate_about(ctr, np.array([right, top]), angle)
    bl = _rotate_about(ctr, np.array([left, bottom]), angle)
    ax = (tr - tl) / (size - 1)
    ay = (bl - tl) / (size - 1)
    m = np.stack([ax, ay, tl], axis=1)
    return ChipTransform(m, (float(left), float(top), float(right), float(bottom)), float(angle), int(size))


def face_size(landmarks: np.ndarray) -> float:
    """Face size in photo pixels: the side of dlib's unit face square (eyebrows to chin, about the
    width of a HOG detection box) fitted to the 5 landmarks. Independent of the chip template."""
    t = fit_similarity(DLIB_MEAN_FACE_5, np.asarray(landmarks, np.float64))
    return float(math.hypot(t[0, 0], t[1, 0]))
