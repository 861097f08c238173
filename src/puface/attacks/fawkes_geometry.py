"""Where Fawkes measures its budget: the chip itself, or Fawkes v1.0.2's padded 112 px square.

Fawkes v1.0.2 (`utils.Faces`, `merge_faces`) never optimises the photo it returns. It pads each face box
to a square of side max(h, w) + 30 (margin), centred, the border filled with the box's per-channel mean
colour, resizes that square to 112 x 112 (PIL bicubic), optimises the cloak there (the DSSIM budget, the
+-15 cap and the tanh variable all live at 112 px), then resizes the 112 px cloak back to the square,
crops the box out and adds it to the full-resolution photo.

`ChipView` ("chip", puface's default) optimises on the chip at its native size. `SquareView`
("square112") reproduces v1.0.2's geometry for a face box that is the whole chip (what `--no-align`
means for pre-aligned faces, without v1.0's bug that returns the 112 px square): the budget is measured on
the padded 112 px square, and the saved image is the chip plus the upsampled cloak. That budget is
looser on the chip than the same `th` at native size (the flat border dilutes the mean DSSIM, and the
cloak is smoother after upsampling): `Fawkes` reports both (`dssim` on the chip, `dssim_work` on the
square).

Images are float RGB in [0, 1], NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils.errors import ConfigError

__all__ = ["GEOMETRIES", "ChipView", "SquareView", "make_view"]

GEOMETRIES = ("chip", "square112")


class ChipView:
    """The identity geometry: the cloak is optimised and measured on the chip itself."""

    name = "chip"

    def __init__(self, x: torch.Tensor):
        self.x = x

    def to_work(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        """The output image for a cloak `delta` in work space (here: the chip's)."""
        return (self.x + delta).clamp(0, 1)


class SquareView:
    """Fawkes v1.0.2's view of a face box that is the whole image (see the module docstring).

    Args:
        x: (N, 3, H, W) the clean images in [0, 1].
        size: side of the work square in px (Fawkes: 112).
        margin: px added to the longer side before the resize (Fawkes: 30).
    """

    name = "square112"

    def __init__(self, x: torch.Tensor, size: int = 112, margin: int = 30):
        self.x = x
        h, w = x.shape[-2:]
        self.side = max(h, w) + margin
        self.top = (self.side - h) // 2  # Fawkes' get_ends
        self.left = (self.side - w) // 2
        self.size = size
        self.fill = x.mean(dim=(2, 3), keepdim=True)  # per image, per channel: the box's mean colour

    def to_work(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, size, size): pad with the clean images' mean colour, resize (bicubic,
        antialiased as PIL's downsampling is), clamp to [0, 1]."""
        h, w = images.shape[-2:]
        square = self.fill.expand(-1, -1, self.side, self.side).clone()
        square[:, :, self.top : self.top + h, self.left : self.left + w] = images
        out = F.interpolate(square, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        return out.clamp(0, 1)

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        """(N, 3, size, size) cloak at work size -> the output chip: upsample to the square (bicubic),
        crop the box, add to the clean chip, clamp to [0, 1]."""
        h, w = self.x.shape[-2:]
        up = F.interpolate(delta, size=(self.side, self.side), mode="bicubic", align_corners=False)
        return (self.x + up[:, :, self.top : self.top + h, self.left : self.left + w]).clamp(0, 1)


def make_view(geometry: str, x: torch.Tensor) -> ChipView | SquareView:
    """The view named `geometry` ("chip" or "square112") of clean images `x` (N, 3, H, W)."""
    if geometry == "chip":
        return ChipView(x)
    if geometry == "square112":
        return SquareView(x)
    raise ConfigError(f"fawkes: unknown geometry {geometry!r}; choose one of {', '.join(GEOMETRIES)}")
