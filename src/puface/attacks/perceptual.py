"""LPIPS-family perceptual distance (ST-LPIPS, shift-tolerant AlexNet/VGG16), no torchvision needed.

A faithful port of the 'shift_tolerant' variant of `stlpips-pytorch==0.0.2` (Ghildyal & Liu,
"Shift-tolerant Perceptual Similarity Metric", ECCV 2022; BSD-2), whose wheel ships the complete
networks (backbone + linear heads) in `stlpips_pytorch/weights/vST0.0/`. Only those weight files are
read (`torch.load(weights_only=True)`); the package's code, which imports torchvision, IPython and
torchsummary, is never imported.

The network, for an image pair x, y in [0, 1]:
  1. v = 2x - 1, then (v - shift) / scale with the ImageNet-ish constants stored in the weights;
  2. five feature maps f_l from an anti-aliased backbone: every stride-2 step is replaced by a
     stride-1 op followed by a 3x3 binomial blur [1,2,1]^T[1,2,1]/16, reflect-padded by 2 on every
     side, sampled with stride 2 (BlurPool with "pad_more"); AlexNet's first conv has stride 1;
  3. each f_l is unit-normalised along channels per pixel; d_l = (f_l(x) - f_l(y))^2;
  4. distance = sum_l mean_{h,w} (w_l . d_l), w_l the non-negative 1x1 linear head of layer l.
Values are >= 0, 0 for identical images, roughly 0.0-0.1 for visually close pairs, larger
(up to ~1) for unrelated images.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.weights import package_dir, verify_sha256
from ..utils.errors import MissingDependencyError

__all__ = ["LPIPS", "load_lpips", "lpips_weights_path"]

PIP_NAME = "stlpips-pytorch==0.0.2"

# net -> (file inside the stlpips_pytorch package, its sha256 in the 0.0.2 wheel)
_WEIGHTS = {
    "alex": (
        "weights/vST0.0/alex_shift_tolerant.pth",
        "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
    ),
    "vgg": (
        "weights/vST0.0/vgg_shift_tolerant.pth",
        "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
    ),
}

# Smallest square side each backbone accepts (reflection padding needs every map to exceed 2 px).
_MIN_SIDE = {"alex": 21, "vgg": 18}


def lpips_weights_path(net: str = "alex") -> Path:
    """Path of the ST-LPIPS `.pth` for `net` ("alex" or "vgg"), sha256-checked.

    Raises `MissingDependencyError` (with the pip command) when `stlpips-pytorch` is not installed.
    """
    if net not in _WEIGHTS:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {sorted(_WEIGHTS)}")
    relpath, sha = _WEIGHTS[net]
    try:
        path = package_dir("stlpips_pytorch", PIP_NAME) / relpath
    except MissingDependencyError:
        raise MissingDependencyError(
            f"the LPIPS weights come from the Python package {PIP_NAME!r}, which is not installed; "
            f"fix: pip install {PIP_NAME}  (a dependency of puface: reinstalling puface brings it back)"
        ) from None
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall: pip install --force-reinstall {PIP_NAME}")
    verify_sha256(path, sha)
    return path


class _BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 2 px per side, depthwise 3x3 binomial blur, stride 2.

    (N, C, H, W) -> (N, C, floor((H + 1) / 2), floor((W + 1) / 2)). The filter is the buffer `filt`
    (C, 1, 3, 3), overwritten by the stored weights (identical to [1,2,1]^T[1,2,1]/16).
    """

    filt: torch.Tensor  # buffer

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _slice(layers: dict[int, nn.Module]) -> nn.Sequential:
    """nn.Sequential whose children are named by their index in the reference `features` list,
    so that the stored state-dict keys (`net.slice2.5.weight`, ...) load unchanged."""
    seq = nn.Sequential()
    for i, m in layers.items():
        seq.add_module(str(i), m)
    return seq


def _alexnet() -> nn.ModuleList:
    """Shift-tolerant AlexNet features; outputs relu1..relu5 with 64, 192, 384, 256, 256 channels."""
    return nn.ModuleList([
        _slice({0: nn.Conv2d(3, 64, 11, stride=1, padding=2), 1: _BlurPool(64), 2: nn.ReLU()}),
        _slice({3: nn.MaxPool2d(3, stride=1), 4: _BlurPool(64), 5: nn.Conv2d(64, 192, 5, padding=2), 6: nn.ReLU()}),
        _slice({7: nn.MaxPool2d(3, stride=1), 8: _BlurPool(192), 9: nn.Conv2d(192, 384, 3, padding=1), 10: nn.ReLU()}),
        _slice({11: nn.Conv2d(384, 256, 3, padding=1), 12: nn.ReLU()}),
        _slice({13: nn.Conv2d(256, 256, 3, padding=1), 14: nn.ReLU()}),
    ])


def _vgg16() -> nn.ModuleList:
    """Shift-tolerant VGG16 features (max-pool 2x2 stride 1 + BlurPool); outputs relu1_2..relu5_3."""
    cfg: list[list[int | str]] = [[64, 64], ["M", 128, 128], ["M", 256, 256, 256], ["M", 512, 512, 512],
                                  ["M", 512, 512, 512]]
    slices, i, cin = [], 0, 3
    for group in cfg:
        layers: dict[int, nn.Module] = {}
        for v in group:
            if isinstance(v, str):  # "M"
                layers[i], layers[i + 1] = nn.MaxPool2d(2, stride=1), _BlurPool(cin)
            else:
                layers[i], layers[i + 1] = nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()
                cin = v
            i += 2
        slices.append(_slice(layers))
    return nn.ModuleList(slices)


class _Backbone(nn.Module):
    def __init__(self, slices: nn.ModuleList):
        super().__init__()
        for k, s in enumerate(slices, start=1):
            self.add_module(f"slice{k}", s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.children():
            x = s(x)
            feats.append(x)
        return feats


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """f / (||f||_2 over channels + eps), as the reference's `normalize_tensor`.

    `vector_norm` has the same value as sqrt(sum f^2) but a zero (not NaN) gradient where f == 0.
    """
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)


class LPIPS(nn.Module):
    """ST-LPIPS perceptual distance with frozen pretrained weights.

    Args:
        net: "alex" (default; what LowKey uses) or "vgg".

    `forward(x, y)`: x, y float RGB in [0, 1], shape (N, 3, H, W) each (same shape; any H, W of at
    least 21 px for alex, 18 px for vgg) -> distances (N,), float, >= 0. Differentiable w.r.t. both
    inputs; the weights never require grad.
    """

    shift: torch.Tensor  # buffers
    scale: torch.Tensor

    def __init__(self, net: str = "alex"):
        super().__init__()
        path = lpips_weights_path(net)
        self.net_name = net
        self.net = _Backbone(_alexnet() if net == "alex" else _vgg16())
        chns = [64, 192, 384, 256, 256] if net == "alex" else [64, 128, 256, 512, 512]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in chns)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))

        state = torch.load(path, map_location="cpu", weights_only=True)
        renamed = {}
        for k, v in state.items():
            if k.startswith("scaling_layer."):
                k = k[len("scaling_layer."):]
            elif k.startswith("lin") and ".model.1." in k:  # lin3.model.1.weight -> lins.3.weight
                k = f"lins.{k[3:k.index('.')]}.{k.rsplit('.', 1)[1]}"
            renamed[k] = v
        self.load_state_dict(renamed, strict=True)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        side = _MIN_SIDE[self.net_name]
        if min(x.shape[2:]) < side:
            raise ValueError(
                f"LPIPS({self.net_name}) needs images of at least {side}x{side} px, got {tuple(x.shape[2:])}"
            )
        n = x.shape[0]
        v = (torch.cat([x, y]) * 2 - 1 - self.shift) / self.scale  # both images in one pass
        dist = x.new_zeros(n)
        for f, lin in zip(self.net(v), self.lins):
            d = (_unit(f[:n]) - _unit(f[n:])) ** 2
            dist = dist + lin(d).mean(dim=(1, 2, 3))
        return dist


@functools.lru_cache(maxsize=None)
def _cached(net: str, device: str) -> LPIPS:
    return LPIPS(net).to(device)


def load_lpips(net: str = "alex", device: torch.device | str | None = None) -> LPIPS:
    """Shared, frozen `LPIPS(net)` on `device` (default CPU), built once per (net, device)."""
    return _cached(net, str(torch.device(device if device is not None else "cpu")))
