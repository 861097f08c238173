"""Helpers for the alignment tests (no tests here): a face chip placed into a larger canvas by a
similarity transform, over a textured background."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image


def embed_chip(chip: np.ndarray, hw: tuple[int, int], angle_deg: float, scale: float, center: tuple[float, float],
               canvas: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Place uint8 `chip` (n, n, 3) into a canvas of (h, w): rotated by `angle_deg`, scaled by
    `scale` (canvas px per chip px), its centre at `center` (x, y). Returns (canvas uint8 (h, w, 3),
    2x3 chip -> canvas matrix)."""
    h, w = hw
    n = chip.shape[0]
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    t = np.asarray(center, float) - rot @ np.array([(n - 1) / 2.0, (n - 1) / 2.0])
    m = np.hstack([rot, t[:, None]])
    inv = tuple(np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2].ravel())
    warped = np.asarray(
        Image.fromarray(chip).transform((w, h), Image.AFFINE, inv, Image.BICUBIC, fillcolor=(0, 0, 0)), np.float64
    )
    alpha = (
        np.asarray(
            Image.fromarray(np.full((n, n), 255, np.uint8)).transform(
                (w, h), Image.AFFINE, inv, Image.BILINEAR, fillcolor=0
            ),
            np.float64,
        )[..., None]
        / 255.0
    )
    if canvas is None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w]
        canvas = np.stack([90 + 40 * np.sin(xx / 37.0), 110 + 30 * np.cos(yy / 23.0), 100 + 0 * xx], -1) + rng.normal(
            0, 4, (h, w, 3)
        )
    out = alpha * warped + (1 - alpha) * np.asarray(canvas, np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), m


def shared_data_dir() -> Path | None:
    """../shared/data next to the checkout (or $PUFACE_SHARED_DATA), if present."""
    env = os.environ.get("PUFACE_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands += [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
    for c in cands:
        if (c / "lfw").is_dir() and (c / "lfw-chips150").is_dir():
            return c
    return None
