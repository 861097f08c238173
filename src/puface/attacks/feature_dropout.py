"""DFANet feature dropout (Zhong & Deng, "Towards Transferable Adversarial Attack against Deep Face Recognition",
IEEE TIFS 2021; used by OPOM's `DFANet_MFIM`): dropout on a surrogate's intermediate feature maps during an
attack, so each forward pass sees a slightly different model (an ensemble for free).

OPOM's released code drops (rate 0.1, its `--droprate`) the output of the stem convolution and of both
convolutions of every residual branch of its IR-50, and keeps the output layer's dropout off. Here the same
rule is applied to any surrogate by forward hooks on every convolution of the face network
(`FaceEmbedder.net`: dlib ResNet-29's stem and the 28 convolutions of its residual branches, whose shortcuts
have no convolution; SFace's stem and each depthwise / pointwise convolution); the final linear layer is left
alone, and so is an adaptive surrogate's defense network. The model is never put in train mode: the hooks
exist only inside the `with` block and the masks are drawn from per-photo generators (never the global one),
so a run is reproducible and a photo's masks do not depend on how the group is cut into batches. The generators
live on the model's device, where the masks are drawn: a GPU draws other masks than the CPU from the same seed, so
the same settings give other cloaks there. A network with convolutions on its shortcuts (an ONNX IR-50) has those
dropped too, where the reference's IR-50 keeps its shortcuts whole.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..models.base import FaceEmbedder
from ..models.onnx_import import Conv as OnnxConv

__all__ = ["FeatureDropout", "dropout_layers"]


def dropout_layers(emb: FaceEmbedder) -> list[nn.Module]:
    """The convolutions of `emb`'s face network whose outputs are dropped (empty for a TorchScript model)."""
    return [m for m in emb.net.modules() if isinstance(m, (nn.Conv2d, OnnxConv))]


class FeatureDropout:
    """Within `with FeatureDropout(embedders, p, generators):`, each convolution output of the embedders' face
    networks is multiplied by a keep mask (Bernoulli(1 - p)) / (1 - p), drawn per photo from `generators[i]`
    (one per photo of the group, on the model's device) in `apply`; outside `apply` the hooks do nothing."""

    def __init__(self, embedders: Sequence[FaceEmbedder], p: float, generators: Sequence[torch.Generator]):
        self.p = float(p)
        self.generators = list(generators)
        self._rows: list[torch.Generator] | None = None
        # once each: the surrogates of an adaptive ensemble (`through = [a, b]`) share one face network
        self._layers = list({id(m): m for emb in embedders for m in dropout_layers(emb)}.values())
        self._handles: list = []

    def __enter__(self) -> "FeatureDropout":
        self._handles = [m.register_forward_hook(self._hook) for m in self._layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._rows = None

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        rows = self._rows
        if rows is None or self.p == 0:
            return None
        if len(rows) != len(output):  # pragma: no cover - apply() always sets one generator per row
            raise RuntimeError(f"feature dropout: {len(rows)} generators for a batch of {len(output)}")
        keep = torch.stack([torch.rand(output.shape[1:], generator=g, device=g.device) for g in rows]) >= self.p
        return output * keep.to(output.dtype) / (1.0 - self.p)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """fn(x) for the group's photos x (n, 3, H, W) with dropout, in chunks of `batch_size`, concatenated."""
        if len(x) != len(self.generators):
            raise RuntimeError(f"feature dropout: {len(self.generators)} generators for {len(x)} photos")
        parts = []
        try:
            for i in range(0, len(x), batch_size):
                self._rows = self.generators[i : i + batch_size]
                parts.append(fn(x[i : i + batch_size]))
        finally:
            self._rows = None
        return torch.cat(parts)
