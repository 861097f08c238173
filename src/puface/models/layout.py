"""Face layouts of embedder inputs: the fixed warp between two chip templates (`puface.align.geometry`).

A network trained on one layout (dlib's 150 px chip, padding 0.25; ArcFace's 112 px five-point crop) sees
inputs cut with another through one similarity: the least-squares fit between the two templates' five
dlib landmarks. `layout_warp` gives it in the normalised coordinates `FaceEmbedder(input_warp=...)` takes.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["LAYOUTS", "layout_warp"]

LAYOUTS = ("dlib150", "arcface112")


def layout_warp(input_layout: str, net_layout: str) -> torch.Tensor:
    """2x3 affine (normalised coordinates, align_corners=False) mapping the network's input grid (a chip of
    `net_layout`) onto an image of `input_layout`. Resolution independent."""
    from ..align.geometry import TEMPLATES, fit_similarity, to3x3

    src, dst = TEMPLATES.create(input_layout), TEMPLATES.create(net_layout)
    in_to_net = to3x3(fit_similarity(src.points, dst.points))  # input-chip pixels -> network-chip pixels
    net_to_in = np.linalg.inv(in_to_net)
    n_out = np.array([[dst.size / 2, 0, (dst.size - 1) / 2], [0, dst.size / 2, (dst.size - 1) / 2], [0, 0, 1]])
    n_in_inv = np.array([[2 / src.size, 0, 1 / src.size - 1], [0, 2 / src.size, 1 / src.size - 1], [0, 0, 1]])
    return torch.tensor((n_in_inv @ net_to_in @ n_out)[:2], dtype=torch.float32)
