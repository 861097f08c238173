"""`ResidualNet`: the detector's small CNN, on what purification changed in a chip.

Input: the chip x and its purified version P(x) (both float RGB in [0, 1], (N, 3, S, S), on the 8-bit
grid), plus a few scalar features per image. The network sees residuals (`inputs`), in grey levels / 4: the
purifier's change P(x) - x ("change": a cloak is what a purifier trained to remove cloaks takes out), x's own
high-pass x - mean3x3(x) ("highpass": the fine texture a cloak adds) and, optionally, the purified chip's
high-pass ("highpass_purified": the natural edges left, against which a sharpened photo's change lines up and a
cloak's does not); pooled mean and standard deviation of its last
feature maps, with the scalars, go through one linear layer to a logit (higher = more likely cloaked).
With the default widths (8, 16, 32, 32) about 0.04 GFLOP per 150x150 chip (the purifier: 1.73); on
a CPU it costs about 4% of a purification.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ConfigError

__all__ = ["ResidualNet", "ResidualNetConfig", "INPUTS"]

INPUTS = ("change", "highpass", "highpass_purified")


def _highpass(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3x3 mean (borders: the mean of the pixels inside), (N, C, H, W). The same values, bit for bit, as
    x - avg_pool2d(x, 3, 1, 1, count_include_pad=False) (test), which is 2-3x slower on a CPU: the nine shifted
    views are summed in that kernel's order and divided by the count of pixels inside each window."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    total = p[..., 0:h, 0:w].clone()
    for i, j in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)):
        total += p[..., i : i + h, j : j + w]
    rows = torch.full((h,), 3.0, dtype=x.dtype, device=x.device)
    cols = torch.full((w,), 3.0, dtype=x.dtype, device=x.device)
    rows[0] = rows[-1] = 2.0
    cols[0] = cols[-1] = 2.0
    return x - total / (rows[:, None] * cols[None, :])


@dataclass(frozen=True)
class ResidualNetConfig:
    """channels: conv widths; the first runs at full resolution, each later one after a 2x downsampling.
    scalars: names of the scalar features fed next to the pooled maps. dropout: on the pooled features
    while training. inputs: the residuals the convolutions see, 3 channels each (see the module docstring)."""

    channels: tuple[int, ...] = (8, 16, 32, 32)
    scalars: tuple[str, ...] = ()
    dropout: float = 0.2
    inputs: tuple[str, ...] = ("change", "highpass")

    def __post_init__(self) -> None:
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad or not self.inputs:
            raise ConfigError(f"[net] inputs must be among {', '.join(INPUTS)}; got {list(self.inputs)}")

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualNetConfig":
        return cls(channels=tuple(int(c) for c in d.get("channels", cls.channels)),
                   scalars=tuple(str(s) for s in d.get("scalars", ())), dropout=float(d.get("dropout", 0.2)),
                   inputs=tuple(str(i) for i in d.get("inputs", cls.inputs)))


class ResidualNet(nn.Module):
    """(x, P(x), scalars) -> logit (N,). See the module docstring."""

    def __init__(self, config: ResidualNetConfig | dict | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = ResidualNetConfig.from_dict(config)
        self.config = config or ResidualNetConfig()
        layers: list[nn.Module] = []
        cin = 3 * len(self.config.inputs)
        for i, c in enumerate(self.config.channels):
            layers.append(nn.Conv2d(cin, c, 3, stride=1 if i == 0 else 2, padding=1))
            layers.append(nn.ReLU(inplace=True))
            cin = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(2 * cin + len(self.config.scalars), 1)
        # channels_last: 1.2-2x faster on CPU for these narrow convs
        self.features.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format

    def residuals(self, images: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """(N, 3 len(inputs), S, S): the config's residuals (by default the purifier's change and the chip's 3x3
        high-pass), in grey levels / 4."""
        parts = {"change": lambda: purified - images, "highpass": lambda: _highpass(images),
                 "highpass_purified": lambda: _highpass(purified)}
        return torch.cat([parts[i]() for i in self.config.inputs], dim=1) * (255.0 / 4.0)

    def forward(self, images: torch.Tensor, purified: torch.Tensor, scalars: torch.Tensor | None = None,
                drop_maps: torch.Tensor | None = None) -> torch.Tensor:
        """images, purified: (N, 3, S, S) in [0, 1]; scalars: (N, len(config.scalars)); drop_maps: (N,)
        bool, training only: zero those images' pooled maps (the head must then rely on the scalars)."""
        f = self.features(self.residuals(images, purified).contiguous(memory_format=torch.channels_last))
        pooled = torch.cat([f.mean(dim=(2, 3)), f.flatten(2).std(dim=2)], dim=1)
        pooled = self.dropout(pooled)
        if drop_maps is not None:
            pooled = pooled * (~drop_maps).to(pooled.dtype)[:, None]
        if self.config.scalars:
            if scalars is None or scalars.shape != (len(images), len(self.config.scalars)):
                raise ValueError(f"ResidualNet expects scalars of shape ({len(images)}, {len(self.config.scalars)})")
            pooled = torch.cat([pooled, scalars.to(pooled.dtype)], dim=1)
        return self.head(pooled).squeeze(1)
