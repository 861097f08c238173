"""`FaceEmbedder`: the one interface every face-recognition model in puface is used through.

Callers always pass float RGB in [0, 1], shape (N, 3, H, W), any H and W. The embedder resizes
(antialiased bilinear, differentiable) and normalises *inside* to what the wrapped network expects,
so a wrong normalisation cannot happen at the call site. Output: L2-normalised embeddings (N, D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.fingerprint import module_fingerprint
from ..utils.images import check_batch_size, check_unit_images


@dataclass(frozen=True)
class InputNormalization:
    """How the wrapped network wants its input: net_in = (x * scale - mean) / std, channels in `order`.

    x is RGB in [0, 1]. `scale` is 255.0 for networks that take 0..255 pixels, 1.0 for [0, 1].
    `mean`/`std` are per channel *in the network's channel order*, on the scaled range.
    """

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    order: str = "RGB"  # or "BGR"

    def __post_init__(self) -> None:
        if self.order not in ("RGB", "BGR"):
            raise ValueError(f"channel order must be RGB or BGR, got {self.order!r}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must be non-zero")

    def describe(self) -> str:
        rng = "0..255" if self.scale == 255.0 else ("0..1" if self.scale == 1.0 else f"0..{self.scale:g}")
        mean = ",".join(f"{m:g}" for m in self.mean)
        std = ",".join(f"{s:g}" for s in self.std)
        return f"{self.order} {rng}, -[{mean}], /[{std}]"

    def as_dict(self) -> dict:
        return asdict(self)


class FaceEmbedder(nn.Module):
    """Wraps a face network `net` that maps normalised (N, 3, h, w) input to (N, D) embeddings.

    Args:
        net: the network, fed with the resized, normalised batch.
        name: registry name or file name.
        input_size: (height, width) the network expects, in pixels.
        embedding_dim: D.
        normalization: what the network expects (see `InputNormalization`).
        source: where the weights came from (package, file), for `puface models list`.
        licence: licence of the weights.
        input_layout: the face layout callers' images are in (e.g. "dlib150": dlib chips, padding 0.25).
        input_warp: when the network was trained on another face layout (SFace: ArcFace 112), the 2x3
            affine, in normalised coordinates (align_corners=False), that maps the network's input grid
            onto the caller's image; the image is then resampled (antialiased, differentiable) instead
            of plainly resized. None: plain resize. Stored as a buffer, so it is part of the
            embedder's fingerprint.
    """

    # buffers (register_buffer), declared for the type checker
    input_warp: "torch.Tensor | None"
    _order: torch.Tensor
    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        input_size: tuple[int, int],
        embedding_dim: int,
        normalization: InputNormalization,
        source: str = "",
        licence: str = "",
        input_layout: str = "",
        input_warp: "torch.Tensor | None" = None,
    ):
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.embedding_dim = int(embedding_dim)
        self.normalization = normalization
        self.source = source
        self.licence = licence
        self.input_layout = input_layout
        if input_warp is not None:
            input_warp = torch.as_tensor(input_warp, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("input_warp", input_warp)
        order = [2, 1, 0] if normalization.order == "BGR" else [0, 1, 2]
        self.register_buffer("_order", torch.tensor(order), persistent=False)
        self.register_buffer("_mean", torch.tensor(normalization.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(normalization.std).view(1, 3, 1, 1), persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] RGB (N,3,H,W) -> the network's input (N,3,h,w): resize, reorder, normalise."""
        x = check_unit_images(images, self.name).to(self._mean.dtype)  # float64 into a float32 model, and back
        if self.input_warp is not None:
            x = self._warp(x)
        elif tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        if self.normalization.order == "BGR":
            x = x.index_select(1, self._order)
        x = x * self.normalization.scale
        return (x - self._mean) / self._std

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        """Resample (N, 3, H, W) into the network's layout: an antialiased resize to the scale the warp
        samples at (about one input pixel per output pixel), then a bilinear affine warp; outside the
        image is zero."""
        assert self.input_warp is not None, "only an embedder with an input_warp warps"
        theta = self.input_warp.to(x.dtype)
        h, w = self.input_size
        if len(x) == 0:  # affine_grid refuses an empty batch; an empty batch embeds to (0, D) as with a plain resize
            return x.new_zeros((0, x.shape[1], h, w))
        # input pixels stepped per output pixel = |column of theta| * (input size / output size)
        step_y = float(theta[:, 1].norm()) * x.shape[-2] / h
        step_x = float(theta[:, 0].norm()) * x.shape[-1] / w
        if step_y > 1.0 or step_x > 1.0:
            size = (max(1, round(x.shape[-2] / max(step_y, 1.0))), max(1, round(x.shape[-1] / max(step_x, 1.0))))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), [x.shape[0], 3, h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float RGB in [0, 1] -> (N, D) L2-normalised embeddings."""
        emb = self.net(self.preprocess(images))
        if emb.ndim > 2:
            emb = emb.flatten(1)
        return F.normalize(emb, dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of a (possibly large) batch without gradients, computed in chunks; returns CPU."""
        batch_size = check_batch_size(batch_size, self.name)
        device = next(self.parameters(), torch.empty(0)).device
        out = [self(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def fingerprint(self) -> str:
        """Content hash of the weights (and of a defense's network for an adaptive surrogate): the part
        of cache keys that tells two models of one name apart."""
        return module_fingerprint(self)

    def embedding_key(self) -> str:
        """What its embeddings of an image depend on, as "<name>:<weights fingerprint>:<settings hash>": the
        weights (`fingerprint`), and the input size and normalisation, which are no weights (a user's model takes
        them from its sidecar or options, so one file gives other embeddings when they change). The evaluation's
        content cache keys embeddings by it."""
        import hashlib
        import json

        n = self.normalization  # as floats: 255 and 255.0 are one setting
        settings = json.dumps(
            {
                "input_size": list(self.input_size),
                "scale": float(n.scale),
                "mean": [float(v) for v in n.mean],
                "std": [float(v) for v in n.std],
                "order": n.order,
            },
            sort_keys=True,
        )
        return f"{self.name}:{self.fingerprint()}:{hashlib.sha256(settings.encode()).hexdigest()[:8]}"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "input_layout": self.input_layout or "any (plain resize)",
            "embedding_dim": self.embedding_dim,
            "normalization": self.normalization.describe(),
            "source": self.source,
            "licence": self.licence,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, dim={self.embedding_dim}"
