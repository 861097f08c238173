"""Face recognition models as differentiable `FaceEmbedder`s, found by name in a registry.

    >>> from puface.models import create_embedder, list_embedders
    >>> emb = create_embedder("dlib-resnet29")       # doctest: +SKIP
    >>> emb(images)  # (N, 3, H, W) in [0, 1] -> (N, 128), L2-normalised   # doctest: +SKIP
"""

from __future__ import annotations

from .base import FaceEmbedder, InputNormalization
from .registry import EMBEDDERS, create_embedder, list_embedders, load_embedder

__all__ = [
    "EMBEDDERS",
    "FaceEmbedder",
    "InputNormalization",
    "create_embedder",
    "list_embedders",
    "load_embedder",
]
