"""The purifier's training loss: image loss + lambda * feature loss (both swappable by name).

    L = image_loss(P(x~), x) + lambda * mean_e distance(E_e(P(x~)), E_e(x))

image_loss: "mse" (PuFace's image loss) or "l1", per pixel on [0, 1] images.
distance: "cosine" (1 - cos, in [0, 2]) or "l2" (squared L2 between the L2-normalised embeddings,
equal to 2 * (1 - cos) for unit vectors, in [0, 4]; kept for parity with L2-trained setups).
E_e are frozen face embedders (`FaceEmbedder`, any input size); their gradients flow only into P.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.registry import Registry

IMAGE_LOSSES = Registry("image loss")
FEATURE_DISTANCES = Registry("feature distance")


@IMAGE_LOSSES.register("mse", help="mean squared error per pixel, images in [0, 1]")
def _mse() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda a, b: F.mse_loss(a, b)


@IMAGE_LOSSES.register("l1", help="mean absolute error per pixel, images in [0, 1]")
def _l1() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda a, b: F.l1_loss(a, b)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row 1 - cos(a, b) for (N, D) embeddings; shape (N,), range [0, 2]."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row squared L2 distance between the L2-normalised rows; shape (N,), range [0, 4]."""
    return (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(dim=1)


FEATURE_DISTANCES.register("cosine", help="1 - cosine similarity")(lambda: cosine_distance)
FEATURE_DISTANCES.register("l2", help="squared L2 of normalised embeddings")(lambda: l2_distance)


class FeatureLoss(nn.Module):
    """Mean over embedders and rows of distance(E(purified), E(natural)); E frozen (eval, no grad in E).

    `natural_embeddings` (one (N, D) tensor per embedder) can be passed to skip re-embedding x.
    """

    def __init__(self, embedders: Sequence[nn.Module], distance: str = "cosine"):
        super().__init__()
        if not embedders:
            raise ValueError("FeatureLoss needs at least one embedder")
        self.embedders = nn.ModuleList(embedders)
        for e in self.embedders:
            e.eval()
            for p in e.parameters():
                p.requires_grad_(False)
        self.distance_name = distance
        self.distance = FEATURE_DISTANCES.create(distance)

    def train(self, mode: bool = True) -> "FeatureLoss":  # embedders stay in eval mode
        super().train(mode)
        for e in self.embedders:
            e.eval()
        return self

    @torch.no_grad()
    def embed_natural(self, natural: torch.Tensor) -> list[torch.Tensor]:
        return [e(natural) for e in self.embedders]

    def per_embedder(self, purified: torch.Tensor, natural: torch.Tensor | None = None,
                     natural_embeddings: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-embedder mean distance (scalars), differentiable w.r.t. `purified`."""
        if natural_embeddings is None:
            if natural is None:
                raise ValueError("pass natural images or their embeddings")
            natural_embeddings = self.embed_natural(natural)
        return [self.distance(e(purified), t.detach()).mean() for e, t in zip(self.embedders, natural_embeddings)]

    def forward(self, purified: torch.Tensor, natural: torch.Tensor | None = None,
                natural_embeddings: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        parts = self.per_embedder(purified, natural, natural_embeddings)
        return torch.stack(parts).mean()


class PurifierLoss(nn.Module):
    """image_loss(P(x~), x) + feature_weight * FeatureLoss. Returns (total, parts) with float parts.

    feature_weight = 0 or no embedders: image loss only (no embedder is run).
    """

    def __init__(self, image: str = "mse", feature_weight: float = 0.0, embedders: Sequence[nn.Module] = (),
                 distance: str = "cosine"):
        super().__init__()
        self.image_name = image
        self.image_loss = IMAGE_LOSSES.create(image)
        self.feature_weight = float(feature_weight)
        self.feature = FeatureLoss(embedders, distance) if (embedders and self.feature_weight > 0) else None

    def forward(self, purified: torch.Tensor, natural: torch.Tensor,
                natural_embeddings: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        img = self.image_loss(purified, natural)
        parts = {"image": float(img.detach())}
        total = img
        if self.feature is not None:
            feat_parts = self.feature.per_embedder(purified, natural, natural_embeddings)
            feat = torch.stack(feat_parts).mean()
            total = total + self.feature_weight * feat
            parts["feature"] = float(feat.detach())
        parts["total"] = float(total.detach())
        return total, parts
