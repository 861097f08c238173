"""Small, fully understood stand-ins for the evaluation tests: a synthetic identity-folder data set
whose answers are known, an embedder that sees colour and texture, a trainable tiny conv embedder,
and a "cloak" that only a blur removes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from puface.models.base import FaceEmbedder, InputNormalization

# Identity colours, distinct in direction (embeddings are L2-normalised), away from 0 and 1 so that
# the checker cloak is never clipped.
COLOURS = {
    "Alice": (0.8, 0.2, 0.2),
    "Bob": (0.2, 0.75, 0.2),
    "Carol": (0.2, 0.25, 0.8),
    "Dave": (0.75, 0.7, 0.2),
}


def write_colour_faces(root: Path, per_identity: int = 10, size: int = 32, seed: int = 0) -> Path:
    """root/<identity>/<i>.png: a flat image of the identity's colour, jittered per image (+-0.03), PNG."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_identity):
            a = (
                np.clip(np.array(rgb) + rng.uniform(-0.03, 0.03, 3), 0, 1)[None, None, :]
                .repeat(size, 0)
                .repeat(size, 1)
            )
            Image.fromarray((a * 255).round().astype(np.uint8), "RGB").save(d / f"{name}_{i:02d}.png")
    return root


class ColourTextureNet(nn.Module):
    """(N,3,H,W) -> (N,4): mean colour and 10 x mean absolute horizontal gradient. Counts its calls."""

    def __init__(self):
        super().__init__()
        self.register_buffer("dummy", torch.zeros(1))
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(x)
        mean = x.mean((2, 3))
        grad = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3))[:, None]
        return torch.cat([mean, 10.0 * grad], 1)


def colour_embedder(name: str = "colour-texture") -> FaceEmbedder:
    return FaceEmbedder(
        ColourTextureNet(), name=name, input_size=(32, 32), embedding_dim=4, normalization=InputNormalization()
    )


def tiny_conv_embedder(seed: int = 0) -> FaceEmbedder:
    """A seeded random conv net (trainable) as a 16-d embedder on 32 px input."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 16)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return FaceEmbedder(
        net, name=f"tiny-conv-{seed}", input_size=(32, 32), embedding_dim=16, normalization=InputNormalization()
    )


class CheckerCloak:
    """A "cloak" that adds a +-amplitude checkerboard: invisible to the mean colour, huge to the texture
    feature; a Gaussian blur (sigma >= 1) removes it."""

    name = "checker"

    def __init__(self, amplitude: float = 0.1):
        self.amplitude = amplitude

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        return (images + self.amplitude * checker).clamp(0, 1)


STANDIN_EMBEDDER = "test-colour-texture"
STANDIN_ATTACK = "test-checker"


def register_standins() -> None:
    """Make the stand-ins reachable by name, as a config refers to them (idempotent)."""
    from puface.attacks import ATTACKS
    from puface.models.registry import EMBEDDERS, list_embedders

    list_embedders()  # load the built-in ones first
    if STANDIN_EMBEDDER not in EMBEDDERS:
        EMBEDDERS.register(STANDIN_EMBEDDER)(lambda **kw: colour_embedder(STANDIN_EMBEDDER))
    if STANDIN_ATTACK not in ATTACKS:
        ATTACKS.register(STANDIN_ATTACK)(lambda seed=0, device=None, amplitude=0.1, **kw: CheckerCloak(amplitude))


# A whole experiment on the colour faces with the stand-ins ({root}: the data folder).
EXPERIMENT_COLOURS_TOML = f"""
name = "colours"
seeds = [0]

[data]
root = "{{root}}"
image_size = 32

[users]
count = 2

[[attacks]]
name = "none"

[[attacks]]
name = "{STANDIN_ATTACK}"
label = "checker"
embedders = ["{STANDIN_EMBEDDER}"]

[victims]
embedders = ["{STANDIN_EMBEDDER}"]

[[trainers]]
name = "nn"

[[trainers]]
name = "linear"

[[defenses]]
name = "none"

[[defenses]]
name = "blur"
sigma = 1.0

[[defenses]]
name = "bitdepth"
bits = 4

[run]
cache = false
device = "cpu"

[report]
users = 1
"""
