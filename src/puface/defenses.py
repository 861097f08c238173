"""Defenses: functions images -> images applied to every training image before an FR model is trained.

A defense takes float RGB (N, 3, H, W) in [0, 1] and returns a tensor of the same shape, in [0, 1]
(IBM ART's preprocessor contract). Each image is processed independently and deterministically
(the `noise` defense seeds its generator from the image's own pixels), so a defended image is a
pure function of (defense config, image content): the evaluation caches defended images by that key.

Built in (see `list_defenses()`):

=========  ==========================================================  ==================
name       what it does                                                parameters
=========  ==========================================================  ==================
none       returns the images unchanged                                -
puface     the PuFace purifier (`Purifier.load(weights)`)              weights, batch_size, device
jpeg       JPEG encode + decode with Pillow                            quality (1..95), subsampling
blur       Gaussian blur, reflect padding                              sigma (pixels)
median     median filter, reflect padding                              size (odd, pixels)
bitdepth   keep `bits` bits per channel                                bits (1..8)
noise      add Gaussian noise, clip to [0, 1]                          sigma (0..1 scale), seed
resize     downscale by `factor` (antialiased), upscale back           factor (> 1)
compose    apply `steps` in order                                      steps
=========  ==========================================================  ==================

Create by name and keywords, or from one spec string (the CLI's and TOML's form)::

    create_defense("jpeg", quality=75)
    parse_defense("jpeg:quality=50+median:size=3")      # composition with "+"
    create_defense("compose", steps=["blur:sigma=1", {"name": "bitdepth", "bits": 5}])
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError, PufaceError
from .fingerprint import module_fingerprint
from .registry import Registry

DEFENSES = Registry("defense")


def _check_images(images: torch.Tensor, who: str) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{who}: expected float RGB images (N, 3, H, W) in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{who}: expected a float tensor in [0, 1], got dtype {images.dtype}")


def _image_bytes(image: torch.Tensor) -> bytes:
    """One (3, H, W) image in [0, 1] as its uint8 bytes (what a saved PNG would hold)."""
    return image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy().tobytes()


class Defense:
    """Base class. Subclasses set `kind` and implement `_apply(images) -> images`.

    `params` holds every setting (JSON-serialisable); `config` adds the kind; `name` is a short,
    stable label for tables ("jpeg-q75"); `cache_key` identifies the exact function (including a
    checkpoint's content hash where there is one).
    """

    kind: str = ""

    def __init__(self, **params: Any):
        self.params = params

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.kind, **self.params}

    @property
    def name(self) -> str:
        return self.kind

    @property
    def fingerprint(self) -> str:
        """Content identity beyond `config` (a checkpoint hash); empty for pure functions."""
        return ""

    @property
    def cache_key(self) -> str:
        blob = json.dumps({"config": self.config, "fingerprint": self.fingerprint}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> same shape, float in [0, 1], on the input's device."""
        _check_images(images, f"defense {self.name}")
        if len(images) == 0:
            return images.clone()
        out = self._apply(images)
        if out.shape != images.shape:
            raise RuntimeError(f"defense {self.name} changed the shape {tuple(images.shape)} -> {tuple(out.shape)}")
        return out.to(device=images.device, dtype=images.dtype).clamp_(0.0, 1.0)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def then(self, other: "Defense") -> "Compose":
        """This defense followed by `other`."""
        return Compose([self, other])

    def __add__(self, other: "Defense") -> "Compose":
        return self.then(other)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class NoDefense(Defense):
    """Identity: the images pass unchanged."""

    kind = "none"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()


class JPEG(Defense):
    """JPEG compression at `quality` (1..95) with Pillow; `subsampling` "4:2:0" (the usual) or "4:4:4"."""

    kind = "jpeg"

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0"):
        quality = int(quality)
        if not 1 <= quality <= 95:
            raise ConfigError(f"jpeg: quality must be in 1..95, got {quality}")
        if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
            raise ConfigError(f"jpeg: subsampling must be 4:2:0, 4:2:2 or 4:4:4, got {subsampling!r}")
        super().__init__(quality=quality, subsampling=subsampling)

    @property
    def name(self) -> str:
        return f"jpeg-q{self.params['quality']}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        u8 = images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for a in u8:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(a), "RGB").save(
                buf, format="JPEG", quality=self.params["quality"], subsampling=self.params["subsampling"]
            )
            buf.seek(0)
            dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(dec.copy()).permute(2, 0, 1))
        return torch.stack(out).float().div_(255.0)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius ceil(3 sigma)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


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
        k = gaussian_kernel1d(self.params["sigma"]).to(images)
        r = (len(k) - 1) // 2
        n, c, h, w = images.shape
        x = images.reshape(n * c, 1, h, w)
        mode = "reflect" if r < min(h, w) else "replicate"
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        return x.reshape(n, c, h, w)


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
        return f"noise-s{self.params['sigma']:g}"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images, device="cpu")
        for i, im in enumerate(images):
            h = hashlib.sha256(f"noise|{self.params['seed']}|".encode() + _image_bytes(im)).digest()
            g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
            noise = torch.randn(im.shape, generator=g, dtype=torch.float32)
            out[i] = im.detach().cpu().float() + self.params["sigma"] * noise
        return out


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
        h, w = images.shape[-2:]
        f = self.params["factor"]
        small = (max(1, int(round(h / f))), max(1, int(round(w / f))))
        x = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class PuFaceDefense(Defense):
    """The PuFace purifier as a defense: `Purifier.load(weights)` (None or "default" = the shipped one).

    `training_identities` lists the identities the checkpoint was trained on (when it records them),
    so an evaluation can refuse to protect a user the purifier has seen.
    """

    kind = "puface"

    def __init__(self, weights: str | None = None, batch_size: int = 32, device: str | None = None):
        if weights in ("", "default"):
            weights = None
        super().__init__(weights=str(weights) if weights is not None else "default")
        self.batch_size = int(batch_size)
        self.device = device
        self._purifier = None
        self._weights = weights

    @property
    def purifier(self):
        if self._purifier is None:
            if self._weights is not None and not Path(self._weights).exists():
                raise PufaceError(f"{self._weights}: purifier checkpoint not found")
            try:
                from .purifier import Purifier
            except ImportError as e:
                raise PufaceError(f"the PuFace purifier is not available in this installation ({e})") from None
            p = Purifier.load(self._weights)
            p.eval()
            if self.device:
                p = p.to(self.device)
            self._purifier = p
        return self._purifier

    @property
    def name(self) -> str:
        w = self.params["weights"]
        return "puface" if w == "default" else f"puface-{Path(w).stem}"

    @property
    def fingerprint(self) -> str:
        return module_fingerprint(self.purifier)

    @property
    def training_identities(self) -> set[str] | None:
        return purifier_training_identities(self.purifier)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        p = self.purifier
        if hasattr(p, "purify"):
            kw: dict[str, Any] = {"batch_size": self.batch_size}
            if self.device:
                kw["device"] = self.device
            return p.purify(images, **kw).cpu()
        with torch.no_grad():  # a plain nn.Module
            return torch.cat([p(images[i : i + self.batch_size]).cpu() for i in range(0, len(images), self.batch_size)])


class Compose(Defense):
    """Apply `steps` (defenses) in order."""

    kind = "compose"

    def __init__(self, steps: Sequence["Defense | str | dict"]):
        resolved = [as_defense(s) for s in steps]
        flat: list[Defense] = []
        for d in resolved:
            flat.extend(d.steps if isinstance(d, Compose) else [d])
        if not flat:
            raise ConfigError("compose: needs at least one step")
        self.steps = flat
        super().__init__(steps=[d.config for d in flat])

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.steps)

    @property
    def fingerprint(self) -> str:
        return "|".join(d.fingerprint for d in self.steps)

    @property
    def training_identities(self) -> set[str] | None:
        found = [ids for d in self.steps if (ids := getattr(d, "training_identities", None)) is not None]
        return set().union(*found) if found else None

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        for d in self.steps:
            images = d(images)
        return images


for _cls in (NoDefense, PuFaceDefense, JPEG, GaussianBlur, MedianFilter, BitDepth, GaussianNoise, DownUpResize, Compose):
    DEFENSES.register(_cls.kind, doc=(_cls.__doc__ or "").strip().splitlines()[0])(_cls)


def purifier_training_identities(purifier: Any) -> set[str] | None:
    """Identities a purifier checkpoint says it saw in training or validation, or None when it does not
    record them. Reads `meta["data_summary"]` (train_identities, val_identities) of a `Purifier`, or a
    `training_identities` attribute."""
    meta = getattr(purifier, "meta", None)
    summary = meta.get("data_summary") if isinstance(meta, dict) else None
    if isinstance(summary, dict) and summary.get("train_identities"):
        return set(summary["train_identities"]) | set(summary.get("val_identities") or [])
    v = getattr(purifier, "training_identities", None)
    if v:
        return set(v)
    return None


def purifier_amplification(purifier: Any, default: float = 3.0) -> float:
    """The largest cloak amplification factor k the purifier was trained with (for illustrations)."""
    meta = getattr(purifier, "meta", None)
    amp = ((meta or {}).get("config") or {}).get("amplify") if isinstance(meta, dict) else None
    if isinstance(amp, dict):
        if amp.get("k_values"):
            return float(max(amp["k_values"]))
        if amp.get("k_max") is not None:
            return float(amp["k_max"])
    return default


def list_defenses() -> list[str]:
    """Names of the built-in defenses."""
    return DEFENSES.names()


def create_defense(name: str, **params: Any) -> Defense:
    """A defense by name with its parameters, e.g. `create_defense("jpeg", quality=75)`.

    Unknown names and parameters raise `ConfigError` listing what is accepted.
    """
    entry = DEFENSES.get(name)
    try:
        return entry.factory(**params)
    except TypeError as e:
        import inspect

        accepted = [p for p in inspect.signature(entry.factory.__init__).parameters if p != "self"]
        raise ConfigError(f"defense {name!r}: {e}; accepted parameters: {', '.join(accepted) or '(none)'}") from None


def _parse_value(text: str) -> Any:
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def parse_defense(spec: str) -> Defense:
    """A defense from a spec string: ``name[:key=value[,key=value]]``, joined with ``+`` to compose.

    Examples: ``none``, ``jpeg:quality=50``, ``puface:weights=runs/p/purifier.pt``,
    ``blur:sigma=1+bitdepth:bits=5``.
    """
    parts = [p.strip() for p in str(spec).split("+")]
    if not all(parts):
        raise ConfigError(f"defense spec {spec!r}: empty step")
    defenses = []
    for part in parts:
        name, _, args = part.partition(":")
        params: dict[str, Any] = {}
        if args:
            for kv in args.split(","):
                k, eq, v = kv.partition("=")
                if not eq or not k.strip():
                    raise ConfigError(f"defense spec {part!r}: expected key=value, got {kv!r}")
                params[k.strip()] = _parse_value(v)
        defenses.append(create_defense(name.strip(), **params))
    return defenses[0] if len(defenses) == 1 else Compose(defenses)


def as_defense(spec: "Defense | str | dict") -> Defense:
    """A `Defense` from a defense, a spec string, or a table {"name": ..., **params} (TOML form)."""
    if isinstance(spec, Defense):
        return spec
    if isinstance(spec, str):
        return parse_defense(spec)
    if isinstance(spec, dict):
        params = dict(spec)
        params.pop("label", None)
        name = params.pop("name", None)
        if name is None:
            raise ConfigError(f"defense table {spec!r} has no 'name'")
        if "+" in str(name) or ":" in str(name):
            if params:
                raise ConfigError(f"defense {name!r}: give parameters inside the spec string or use a table per step")
            return parse_defense(name)
        return create_defense(str(name), **params)
    raise ConfigError(f"cannot make a defense from {spec!r}")


__all__ = [
    "Defense", "NoDefense", "PuFaceDefense", "JPEG", "GaussianBlur", "MedianFilter", "BitDepth",
    "GaussianNoise", "DownUpResize", "Compose", "DEFENSES", "create_defense", "list_defenses",
    "parse_defense", "as_defense", "module_fingerprint", "purifier_training_identities", "purifier_amplification",
]
