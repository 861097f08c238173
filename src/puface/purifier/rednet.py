"""RED-Net (Mao et al. 2016): a residual encoder-decoder that predicts a correction to its input.

Encoder: `depth` 3x3 convolutions with ReLU; the first `downsample` of them have stride 2 (4x4
kernels, so each halves H and W exactly). Decoder: `depth` transposed convolutions mirroring the
encoder (stride-2 ones double H and W); every `skip_every` layers the encoder's feature map is added
to the mirrored decoder layer's output before its ReLU (symmetric skips). The last decoder layer
outputs a 3-channel correction r, zero-initialised, and the network returns clamp(x + r, 0, 1)
(global residual), so an untrained RED-Net is the identity.

Fully convolutional: any H x W works; inputs are replicate-padded to a multiple of 2**downsample
and the output cropped back, so the output always has the input's shape.

The default (64 channels, depth 8, two stride-2 stages: 150 -> 76 -> 38 px inside) is sized for a
2-core CPU: 1.73 GFLOP per 150x150 image forward (`conv_flops`), 0.58 M parameters (2.3 MB). The paper-size
RED-Net30 (`RedNetConfig(depth=15, downsample=0)`) costs 46.6 GFLOP per 150x150 image: for GPUs.
Downsampling is the choice that makes the CPU default affordable: cloaks are dense patterns over the
whole face, so a receptive field of tens of pixels (38 px maps, 3x3 kernels) sees their structure,
while the global residual and the skips keep the full-resolution image untouched where no correction
is predicted.

Images are float RGB in [0, 1], shape (N, 3, H, W).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ConfigError


@dataclass(frozen=True)
class RedNetConfig:
    """Architecture of a RED-Net.

    channels: feature maps per layer (RED-Net paper: 64).
    depth: convolutions in the encoder (= transposed convolutions in the decoder); RED-Net30 is 15.
    downsample: how many of the first encoder layers have stride 2 (0 = full resolution throughout,
        as in the paper; each stage quarters the cost of all later layers and doubles the receptive field).
    skip_every: a symmetric skip connection every this many layers (paper: 2); 0 disables skips.
    kernel_size: kernel of the stride-1 layers (odd).
    """

    channels: int = 64
    depth: int = 8
    downsample: int = 2
    skip_every: int = 2
    kernel_size: int = 3

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ConfigError(f"model.channels must be >= 1, got {self.channels}")
        if self.depth < 1:
            raise ConfigError(f"model.depth must be >= 1, got {self.depth}")
        if not 0 <= self.downsample <= self.depth:
            raise ConfigError(f"model.downsample must be in 0..depth ({self.depth}), got {self.downsample}")
        if self.skip_every < 0:
            raise ConfigError(f"model.skip_every must be >= 0, got {self.skip_every}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size must be odd and >= 1, got {self.kernel_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "RedNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown model option(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
            )
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


class RedNet(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1]: clamp(x + correction(x), 0, 1)."""

    def __init__(self, config: RedNetConfig | None = None, in_channels: int = 3):
        super().__init__()
        self.config = cfg = config or RedNetConfig()
        c, k = cfg.channels, cfg.kernel_size
        enc, dec = [], []
        for i in range(cfg.depth):
            cin = in_channels if i == 0 else c
            cout = in_channels if i == 0 else c  # decoder layer i maps back to encoder layer i's input
            if i < cfg.downsample:
                enc.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
                dec.append(nn.ConvTranspose2d(c, cout, 4, stride=2, padding=1))
            else:
                enc.append(nn.Conv2d(cin, c, k, padding=k // 2))
                dec.append(nn.ConvTranspose2d(c, cout, k, padding=k // 2))
        self.encoder = nn.ModuleList(enc)
        self.decoder = nn.ModuleList(dec)  # decoder[i] mirrors encoder[i]; applied in reverse order
        for p in dec[0].parameters():  # the last layer's weight and bias start at zero
            nn.init.zeros_(p)

    @property
    def multiple(self) -> int:
        """H and W are padded to a multiple of this."""
        return 2**self.config.downsample

    def _has_skip(self, i: int) -> bool:
        """Whether encoder layer i's output (i >= 1) is added to the decoder's output at that depth."""
        s = self.config.skip_every
        return s > 0 and i >= 1 and i % s == 0

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted correction r (N, 3, H, W) for inputs already padded to `multiple`."""
        feats = [x]
        h = x
        for conv in self.encoder:
            h = F.relu(conv(h))
            feats.append(h)
        # feats[i] is the input of encoder[i]; decoder[i] maps back to feats[i]'s shape.
        for i in reversed(range(len(self.decoder))):
            h = self.decoder[i](h)
            if i == 0:
                break
            if self._has_skip(i):
                h = h + feats[i]
            h = F.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        m = self.multiple
        ph, pw = (-H) % m, (-W) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        r = self.correction(xp)
        if ph or pw:
            r = r[..., :H, :W]
        return (x + r).clamp(0.0, 1.0)


def conv_flops(model: nn.Module, height: int = 150, width: int = 150) -> int:
    """Floating-point operations (2 x multiply-adds) of the convolutions of one (1, 3, H, W) forward.

    Counted from the layers' actual output shapes (after padding to the model's multiple).
    """
    total = 0

    def hook(mod: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):
            # every input element multiplies the whole kernel for each output channel
            x = inp[0]
            total += 2 * x.numel() * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        elif isinstance(mod, nn.Conv2d):
            total += 2 * out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
