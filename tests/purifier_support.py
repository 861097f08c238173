"""Helpers for the purifier tests: a small deterministic stand-in face embedder and synthetic cloaks.

The stand-in is a seeded random conv net wrapped in the real `FaceEmbedder` (resize + normalise
inside, L2-normalised output), so the feature loss and the validation cosines run the same code path
as with dlib's ResNet, in milliseconds. The synthetic cloak is a seeded +-`eps` checkerboard with
block-wise random signs, a stand-in for Fawkes/LowKey when the test is about the machinery.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from puface.utils.seeding import stable_seed
from puface.data.loading import load_images
from puface.models.base import FaceEmbedder, InputNormalization


class HighPass(nn.Module):
    """x - local 3x3 mean, scaled: makes the stand-in as sensitive to small pixel patterns as a real
    face model is to a cloak."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x - nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))


def standin_embedder(seed: int = 0, dim: int = 32, name: str = "standin") -> FaceEmbedder:
    """Seeded random net (150x150 input): high-pass, conv, ReLU, pool, linear -> (N, dim) embeddings."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        HighPass(),
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(16), nn.Flatten(), nn.Linear(16 * 16 * 16, dim, bias=False),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))
    return FaceEmbedder(net, name=name, input_size=(150, 150), embedding_dim=dim,
                        normalization=InputNormalization(scale=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def synthetic_cloak(images: torch.Tensor, seed: int, eps: float = 8 / 255) -> torch.Tensor:
    """A deterministic +-eps perturbation per image, clipped to [0, 1]: a pixel checkerboard whose sign
    flips in random 8x8 blocks (per image, seeded by `seed` and the image). High-frequency and locally
    recognisable, like a cloak's texture, so a small purifier can learn to remove it in a few steps."""
    out = []
    for i, x in enumerate(images):
        g = torch.Generator().manual_seed(stable_seed("synthetic-cloak", seed, i, round(float(x.sum()), 3)) % 2**63)
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        checker = ((yy + xx) % 2 * 2 - 1).float()
        blocks = torch.randint(0, 2, (3, (h + 7) // 8, (w + 7) // 8), generator=g).float() * 2 - 1
        blocks = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w]
        out.append((x + eps * checker * blocks).clamp(0, 1))
    return torch.stack(out)


def synthetic_cloak_fn(eps: float = 8 / 255):
    """A `build_pairs` cloak function: (spec, paths) -> (cloaked, kept, errors) using `synthetic_cloak`."""

    def cloak(spec: dict, paths: list[Path]):
        imgs, kept, errors = load_images(paths)
        seed = stable_seed(spec.get("name"), spec.get("mode")) % 1000
        return synthetic_cloak(imgs, seed, eps * float(spec.get("strength", 1.0))), kept, errors

    return cloak


def visible_purifier(seed: int = 0, std: float = 0.03):
    """A small purifier (8 channels, depth 4, one stride-2 stage) that visibly changes images: seeded random
    non-zero weights of standard deviation `std`."""
    from puface.purifier import Purifier, RedNetConfig

    torch.manual_seed(seed)
    p = Purifier(RedNetConfig(channels=8, depth=4, downsample=1))
    for prm in p.parameters():
        nn.init.normal_(prm, std=std)
    return p


def visible_purifier_file(path: Path, seed: int = 0) -> Path:
    """`visible_purifier(seed)`, saved to `path`."""
    return visible_purifier(seed).save(path)
