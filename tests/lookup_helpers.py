"""A face "model" whose embeddings are chosen by hand: each image carries its row number in its top-left pixel
(red * 256 + green) and the embedder returns that row of a fixed table. The evaluation's answers on it are then
computable with scikit-learn alone, from the table (`tests/test_evaluation_known_answers.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from puface.models.base import FaceEmbedder, InputNormalization

SIZE = 32


def row_of(images: torch.Tensor) -> torch.Tensor:
    """The table row each float image in [0, 1] (N, 3, H, W) carries."""
    px = (images[:, :2, 0, 0] * 255).round().long()
    return px[:, 0] * 256 + px[:, 1]


def with_row(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Float images with their top-left pixel set to carry `rows`."""
    out = images.clone()
    out[:, 0, 0, 0] = (rows // 256).float() / 255
    out[:, 1, 0, 0] = (rows % 256).float() / 255
    return out


class LookupNet(nn.Module):
    def __init__(self, table: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[row_of(x)]


def lookup_embedder(table: np.ndarray, name: str = "lookup") -> FaceEmbedder:
    return FaceEmbedder(LookupNet(table), name=name, input_size=(SIZE, SIZE), embedding_dim=table.shape[1],
                        normalization=InputNormalization())


class ShiftRows:
    """A "cloak": image of row i -> the same image carrying row i + offset (its cloaked embedding)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return with_row(images, row_of(images) + self.offset)


def write_lookup_faces(root: Path, identities: int, per_identity: int, seed: int = 0) -> int:
    """root/<idNN>/<j>.png, random pixels, each image carrying its own row (0 .. N-1); returns N."""
    rng = np.random.default_rng(seed)
    row = 0
    for k in range(identities):
        d = root / f"id{k:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            a = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            a[0, 0, 0], a[0, 0, 1] = row // 256, row % 256
            Image.fromarray(a, "RGB").save(d / f"{j:02d}.png")
            row += 1
    return row
