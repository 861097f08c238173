"""Pixel-space baseline defenses: JPEG, Gaussian blur, median filter, bit-depth reduction, Gaussian
noise, down-up resizing. Each is images -> images on float RGB (N, 3, H, W) in [0, 1] (see `base`).

=========  ==========================================================  ==================
name       what it does                                                parameters
=========  ==========================================================  ==================
jpeg       JPEG encode + decode with Pillow                            quality (1..95), subsampling, scale
blur       Gaussian blur, reflect padding                              sigma (pixels)
median     median filter, reflect padding                              size (odd, pixels)
bitdepth   keep `bits` bits per channel                                bits (1..8)
noise      add Gaussian noise, clip to [0, 1]                          sigma (0..1 scale), seed
resize     downscale by `factor` (antialiased), upscale back           factor (> 1)
sharpen    unsharp masking, x + amount (x - blur(x)), clipped          amount (> 0), sigma
gamma      x ** gamma per channel (> 1 darkens the mid-tones)          gamma (> 0)
contrast   m + factor (x - m), m = the image's mean, clipped           factor (> 0)
palette    colour quantisation to a palette (8-bit PNG, GIF)           colors (2..256), mode
=========  ==========================================================  ==================

`sharpen`, `gamma`, `contrast` and `palette` remove nothing: they are what cameras and photo editors do to natural
photos, registered here so that natural-photo variants (purifier and detector training, false-positive checks) are
specs like the others.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.errors import ConfigError
from ..utils.filters import blur_radius, gaussian_blur, gaussian_taps
from ..utils.fingerprint import image_seed
from ..utils.images import to_float, to_uint8
from .base import Defense
from .registry import register

__all__ = ["JPEG", "GaussianBlur", "MedianFilter", "BitDepth", "GaussianNoise", "DownUpResize", "Sharpen", "Gamma",
           "Contrast", "Palette"]


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `sigma` pixels, reflect padding (replicate for images smaller than the taps)."""
    r = blur_radius(sigma)
    mode = "reflect" if r < min(images.shape[-2:]) else "replicate"
    return gaussian_blur(images, gaussian_taps(2 * r + 1, sigma), mode)


@register
class JPEG(Defense):
    """JPEG compression at `quality` (1..95) with Pillow; `subsampling` "4:2:0" (the usual) or "4:4:4".

    `scale` (0.25..4, default 1): encode at that many pixels per image pixel (Pillow bilinear resize, antialiased
    when shrinking) and resize back, as a face chip cut from a re-encoded photo whose face has `scale` photo
    pixels per chip pixel."""

    kind = "jpeg"

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0", scale: float = 1.0):
        quality = int(quality)
        if not 1 <= quality <= 95:
            raise ConfigError(f"jpeg: quality must be in 1..95, got {quality}")
        if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
            raise ConfigError(f"jpeg: subsampling must be 4:2:0, 4:2:2 or 4:4:4, got {subsampling!r}")
        scale = float(scale)
        if not 0.25 <= scale <= 4.0:
            raise ConfigError(f"jpeg: scale must be in 0.25..4 (pixels encoded per image pixel), got {scale:g}")
        # scale 1 is left out of the recorded settings, so cache keys and results of plain JPEG stay as they were
        super().__init__(quality=quality, subsampling=subsampling, **({"scale": scale} if scale != 1.0 else {}))

    @property
    def name(self) -> str:
        # every setting that changes the output is in the name (an adaptive attack's surrogate is named after the
        # defense it goes through, and that name is part of its cloak cache key); the defaults add nothing
        scale, sub = self.params.get("scale", 1.0), self.params["subsampling"]
        return (f"jpeg-q{self.params['quality']}" + (f"-x{scale:g}" if scale != 1.0 else "")
                + (f"-{sub.replace(':', '')}" if sub != "4:2:0" else ""))

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        scale = self.params.get("scale", 1.0)
        for a in to_uint8(images).permute(0, 2, 3, 1).numpy():
            im = Image.fromarray(np.ascontiguousarray(a), "RGB")
            if scale != 1.0:
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(size, Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=self.params["quality"], subsampling=self.params["subsampling"])
            buf.seek(0)
            dec = Image.open(buf).convert("RGB")
            if scale != 1.0:
                dec = dec.resize((a.shape[1], a.shape[0]), Image.Resampling.BILINEAR)
            out.append(torch.from_numpy(np.asarray(dec, dtype=np.uint8).copy()).permute(2, 0, 1))
        return to_float(torch.stack(out))


@register
class GaussianBlur(Defense):
    """Separable Gaussian blur with standard deviation `sigma` pixels, reflect padding."""

    kind = "blur"

    def __init__(self, sigma: float = 1.0):
        sigma = float(sigma)
        if not sigma > 0:
            raise ConfigError(f"blur: sigma must be > 0 pixels, got {sigma}")
        super().__init__(sigma=sigma)

    @property
    def name(self) -> str:
        return f"blur-s{self.params['sigma']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.exact_forward(images)

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        return _blur(images, self.params["sigma"])


@register
class MedianFilter(Defense):
    """Median over a `size` x `size` window (odd size), reflect padding."""

    kind = "median"

    def __init__(self, size: int = 3):
        size = int(size)
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"median: size must be an odd number of pixels >= 1, got {size}")
        super().__init__(size=size)

    @property
    def name(self) -> str:
        return f"median-{self.params['size']}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        s = self.params["size"]
        r = s // 2
        n, c, h, w = images.shape
        outs = []
        for i in range(0, n, 16):  # bounded memory: 16 images x s^2 copies
            x = images[i : i + 16]
            m = len(x)
            mode = "reflect" if r < min(h, w) else "replicate"
            xp = F.pad(x, (r, r, r, r), mode=mode) if r else x
            patches = F.unfold(xp.reshape(m * c, 1, h + 2 * r, w + 2 * r), kernel_size=s)  # (m*c, s*s, h*w)
            outs.append(patches.median(dim=1).values.reshape(m, c, h, w))
        return torch.cat(outs)


@register
class BitDepth(Defense):
    """Colour-depth reduction to `bits` bits per channel (feature squeezing, Xu et al. 2018)."""

    kind = "bitdepth"

    def __init__(self, bits: int = 5):
        bits = int(bits)
        if not 1 <= bits <= 8:
            raise ConfigError(f"bitdepth: bits must be in 1..8, got {bits}")
        super().__init__(bits=bits)

    @property
    def name(self) -> str:
        return f"bitdepth-{self.params['bits']}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.params["bits"] - 1
        return torch.round(images.clamp(0, 1) * levels) / levels


@register
class GaussianNoise(Defense):
    """Additive Gaussian noise of standard deviation `sigma` (on the [0, 1] scale), then clipped.

    Deterministic: each image's generator is seeded from (seed, the image's uint8 content), so the
    same image always gets the same noise whatever batch it is in.
    """

    kind = "noise"

    def __init__(self, sigma: float = 0.03, seed: int = 0):
        sigma = float(sigma)
        if not 0 < sigma <= 1:
            raise ConfigError(f"noise: sigma must be in (0, 1] (the [0, 1] image scale), got {sigma}")
        super().__init__(sigma=sigma, seed=int(seed))

    @property
    def name(self) -> str:
        seed = self.params["seed"]  # in the name as the JPEG's subsampling is; seed 0 adds nothing
        return f"noise-s{self.params['sigma']:g}" + (f"-seed{seed}" if seed != 0 else "")

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images, device="cpu")
        for i, im in enumerate(images):
            g = torch.Generator().manual_seed(image_seed("noise", self.params["seed"], im))
            noise = torch.randn(im.shape, generator=g, dtype=torch.float32)
            out[i] = im.detach().cpu().float() + self.params["sigma"] * noise
        return out


@register
class DownUpResize(Defense):
    """Downscale by `factor` (antialiased bilinear), then upscale back to the original size (bilinear)."""

    kind = "resize"

    def __init__(self, factor: float = 2.0):
        factor = float(factor)
        if not factor > 1.0:
            raise ConfigError(f"resize: factor must be > 1 (2 = half size, then back), got {factor}")
        super().__init__(factor=factor)

    @property
    def name(self) -> str:
        return f"resize-x{self.params['factor']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.exact_forward(images)

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        f = self.params["factor"]
        small = (max(1, int(round(h / f))), max(1, int(round(w / f))))
        x = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@register
class Sharpen(Defense):
    """Unsharp masking: x + `amount` (x - blur(x)) with a Gaussian blur of `sigma` pixels, clipped to [0, 1]."""

    kind = "sharpen"

    def __init__(self, amount: float = 0.5, sigma: float = 1.0):
        amount, sigma = float(amount), float(sigma)
        if not amount > 0:
            raise ConfigError(f"sharpen: amount must be > 0 (0.5 = 50%), got {amount}")
        if not sigma > 0:
            raise ConfigError(f"sharpen: sigma must be > 0 pixels, got {sigma}")
        super().__init__(amount=amount, sigma=sigma)

    @property
    def name(self) -> str:
        return f"sharpen-a{self.params['amount']:g}-s{self.params['sigma']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.exact_forward(images).clamp(0, 1)

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.params["amount"] * (images - _blur(images, self.params["sigma"]))


@register
class Gamma(Defense):
    """x ** `gamma` on every channel: > 1 darkens the mid-tones and stretches the highlights, < 1 lightens."""

    kind = "gamma"

    def __init__(self, gamma: float = 1.5):
        gamma = float(gamma)
        if not gamma > 0:
            raise ConfigError(f"gamma: gamma must be > 0 (1 = unchanged), got {gamma}")
        super().__init__(gamma=gamma)

    @property
    def name(self) -> str:
        return f"gamma-{self.params['gamma']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.exact_forward(images)

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.clamp_min(1e-6) ** self.params["gamma"]


@register
class Contrast(Defense):
    """m + `factor` (x - m) with m the image's mean over pixels and channels, clipped: > 1 more contrast."""

    kind = "contrast"

    def __init__(self, factor: float = 1.3):
        factor = float(factor)
        if not factor > 0:
            raise ConfigError(f"contrast: factor must be > 0 (1 = unchanged), got {factor}")
        super().__init__(factor=factor)

    @property
    def name(self) -> str:
        return f"contrast-{self.params['factor']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.exact_forward(images).clamp(0, 1)

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        m = images.mean(dim=(1, 2, 3), keepdim=True)
        return m + self.params["factor"] * (images - m)


@register
class Palette(Defense):
    """Colour quantisation as an 8-bit PNG or GIF encoder stores a photo (what a palette image's reader gets back):
    mode "adaptive" = `colors` (2..256) chosen per image by median cut (Pillow `Image.quantize`, no dithering);
    mode "web" = the fixed 216-colour web palette with Floyd-Steinberg dithering (`colors` is not used)."""

    kind = "palette"

    def __init__(self, colors: int = 256, mode: str = "adaptive"):
        colors = int(colors)
        if not 2 <= colors <= 256:
            raise ConfigError(f"palette: colors must be in 2..256, got {colors}")
        if mode not in ("adaptive", "web"):
            raise ConfigError(f"palette: mode must be adaptive or web, got {mode!r}")
        super().__init__(colors=colors, mode=mode)

    @property
    def name(self) -> str:
        return "palette-web" if self.params["mode"] == "web" else f"palette-{self.params['colors']}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for a in to_uint8(images).permute(0, 2, 3, 1).numpy():
            im = Image.fromarray(np.ascontiguousarray(a), "RGB")
            if self.params["mode"] == "web":
                p = im.convert("P", palette=Image.Palette.WEB, dither=Image.Dither.FLOYDSTEINBERG)
            else:
                p = im.quantize(self.params["colors"], method=Image.Quantize.MEDIANCUT)
            out.append(torch.from_numpy(np.asarray(p.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1))
        return to_float(torch.stack(out))
