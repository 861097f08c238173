"""`Purifier`: a trained RED-Net as an images -> images module, loaded from and saved to checkpoints.

    >>> from puface.purifier import Purifier
    >>> p = Purifier.load()                 # the default purifier shipped with the package
    >>> clean = p.purify(images)            # (N, 3, H, W) in [0, 1] -> same shape, no grad, batched
    >>> p.purify_folder("scraped/", "purified/")   # a folder tree (see `folder.purify_folder`)

Any H x W works (the network is fully convolutional). The shipped purifier was trained on aligned
150x150 face chips; other scales of face work less well.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.device import resolve_device
from ..utils.errors import MissingFileError, PufaceError
from ..utils.images import check_batch_size, check_unit_images
from ..utils.paths import current_folder, package_weights
from .checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from .rednet import RedNet, RedNetConfig, conv_flops

DEFAULT_WEIGHTS_NAME = "purifier-default.safetensors"

#: The purifiers shipped in `puface/weights/`, by the name `--weights` and configs use: "default" (v6, trained
#: on dlib 150 px chips) and "arcface112" (v6 fine-tuned on ArcFace 112 px crops, recipe `arcface112`).
SHIPPED_WEIGHTS = {"default": DEFAULT_WEIGHTS_NAME, "arcface112": "purifier-arcface112.safetensors"}

#: Face layouts a purifier can serve: its own (the one it was trained on, "dlib150" for the shipped one)
#: natively, and the other by resampling to its face scale (see `Purifier.purify`).
TEMPLATES = ("dlib150", "arcface112")


#: How far a purification job (`puface purify`, `purify_folder`, ...) goes along a shipped purifier's change when no
#: step is given (`job_step`): the default (dlib150) purifier 1.5, measured on every grid of docs/RESULTS.md
#: sections 15.8 and 15.9; the ArcFace 112 one 1 (at 1.5 it removes more of an unseen model's cloaks but lost one
#: user's cell of its own grid, section 16.3); checkpoints of your own 1 (their output; not measured past it).
SHIPPED_STEPS = {"default": 1.5}


def check_step(step: float) -> float:
    """A purification step (`extrapolate`) as a float; PufaceError unless it is a finite number > 0."""
    try:
        value = float(step)
    except (TypeError, ValueError):
        raise PufaceError(f"step must be a number > 0, got {step!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise PufaceError(f"step must be a number > 0, got {step!r}")
    return value


def job_step(purifier: "Purifier", step: float | None = None) -> float:
    """The step a purification job takes with `purifier`: `step` (checked, `check_step`), or when None the one
    `SHIPPED_STEPS` gives the shipped purifier it was loaded as (`Purifier.shipped_as`), else 1."""
    if step is not None:
        return check_step(step)
    return SHIPPED_STEPS.get(purifier.shipped_as or "", 1.0)


def extrapolate(images: torch.Tensor, purified: torch.Tensor, step: float, clamp: bool = True) -> torch.Tensor:
    """x + step * (P(x) - x): go `step` times the purifier's change (1 = P(x); 1.5 goes half again as far, which
    removes more of a cloak made against a face model the purifier never saw; docs/RESULTS.md section 15.8).
    (N, 3, H, W) floats in [0, 1]; clamped to [0, 1] unless `clamp` is False (an attacker's exact forward pass)."""
    out = images + step * (purified - images)
    return out.clamp(0, 1) if clamp else out


@functools.lru_cache(maxsize=None)
def template_scale(template: str, trained_on: str = "dlib150") -> float:
    """How many pixels of a `trained_on` chip one pixel of a `template` chip spans at equal face size: the
    scale of the least-squares similarity between the two templates' landmarks (arcface112 -> dlib150:
    1.494, so a 112 px ArcFace crop resized to 167 px shows the face at the scale of a 150 px dlib chip);
    exactly 1 for the same layout. Cached: every forward pass asks."""
    from ..align.geometry import TEMPLATES as REG
    from ..align.geometry import fit_similarity

    for t in (template, trained_on):
        if t not in TEMPLATES:
            raise PufaceError(f"unknown face template {t!r}; choose one of {', '.join(TEMPLATES)}")
    if template == trained_on:
        return 1.0
    src, dst = REG.create(template), REG.create(trained_on)
    a = fit_similarity(src.points, dst.points)  # template-chip pixels -> trained-chip pixels
    return float(np.hypot(a[0, 0], a[1, 0]))


def default_weights_path() -> Path:
    """The default purifier file inside the installed package (`puface/weights/`)."""
    return shipped_weights_path("default")


def shipped_weights_path(name: str = "default") -> Path:
    """The file of a shipped purifier (`SHIPPED_WEIGHTS`: "default", "arcface112") inside the installed package."""
    if name not in SHIPPED_WEIGHTS:
        raise PufaceError(f"no shipped purifier named {name!r}; shipped: {', '.join(SHIPPED_WEIGHTS)}")
    return package_weights(SHIPPED_WEIGHTS[name])


def is_shipped(weights: str | Path | None) -> bool:
    """Whether `weights` names a shipped purifier (None and "" mean "default"), not a file."""
    return weights is None or str(weights) in ("", *SHIPPED_WEIGHTS)


#: `Purifier.purify` runs a photo larger than TILE x TILE pixels in tiles of TILE x TILE, each with TILE_MARGIN pixels
#: of its neighbours around it (`tiled`), so memory stays bounded whatever the photo's size: the activations take
#: about 0.33 GB per megapixel on a CPU, a 100 MP photo whole some 33 GB, a tile under 0.5 GB. The margin is wider
#: than the shipped network's receptive field (about 115 px), so tiles give the whole photo's result (to float
#: rounding) for purifiers of that size at their own face scale; both are multiples of 2**downsample up to 4 stages.
TILE = 1024
TILE_MARGIN = 128


def tiled(fn, images: torch.Tensor, tile: int | None = None, margin: int | None = None) -> torch.Tensor:
    """`fn(images)` computed tile by tile: each tile x tile block of (N, 3, H, W) `images` is taken with `margin`
    pixels of context on each side (fewer at the borders), passed through `fn` (images -> same shape), and its
    block of the result kept (None: `TILE`, `TILE_MARGIN`). Images no larger than tile x tile go through `fn` whole."""
    tile, margin = tile or TILE, TILE_MARGIN if margin is None else margin
    H, W = images.shape[-2:]
    if (H <= tile and W <= tile) or H == 0 or W == 0:  # one tile, or none to cut
        return fn(images)
    out = None
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            y1, x1 = min(H, y0 + tile), min(W, x0 + tile)
            a, b = max(0, y0 - margin), max(0, x0 - margin)
            part = fn(images[..., a : min(H, y1 + margin), b : min(W, x1 + margin)])
            if out is None:
                out = part.new_empty(images.shape)
            out[..., y0:y1, x0:x1] = part[..., y0 - a : y1 - a, x0 - b : x1 - b]
    assert out is not None  # H, W >= 1: at least one tile
    return out


class AtFaceScale(nn.Module):
    """`net` run at another face scale: (N, 3, H, W) images resized by `scale` (bicubic, clamped to [0, 1]),
    passed through `net`, and only the change resized back to H x W (antialiased bilinear) and added to the
    input. scale 1: the plain `net`, bit for bit. How a purifier serves another face layout than its network's
    (`Purifier.forward_template`) and how training fine-tunes one for it (`[train] face_scale`)."""

    def __init__(self, net: nn.Module, scale: float = 1.0):
        super().__init__()
        self.net, self.scale = net, float(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(self.net, images, self.scale)

    @staticmethod
    def run(net: nn.Module, images: torch.Tensor, scale: float) -> torch.Tensor:
        if abs(scale - 1.0) < 1e-9:
            return net(images)
        h, w = images.shape[-2:]
        up = F.interpolate(images, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bicubic",
                           align_corners=False).clamp(0, 1)
        delta = net(up) - up
        return images + F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def weights_memory_format(module: nn.Module) -> torch.memory_format:
    """The memory layout of a module's convolution weights: `torch.channels_last` when its first 4-D weight with a
    spatial extent (k > 1) is stored NHWC, else `torch.contiguous_format`."""
    for w in module.parameters():
        if w.ndim == 4 and w.shape[2] * w.shape[3] > 1:
            return torch.channels_last if not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
    return torch.contiguous_format


class Purifier(nn.Module):
    """A RED-Net purifier: (N, 3, H, W) float RGB in [0, 1] -> purified images, same shape and range.

    `meta` holds what the checkpoint carried: config (the training config), data_summary
    (training/held-out identities, attacks), metrics (validation), puface_version.
    """

    def __init__(self, config: RedNetConfig | dict | None = None, meta: dict[str, Any] | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = RedNetConfig.from_dict(config)
        self.net = RedNet(config)
        self.meta: dict[str, Any] = dict(meta or {})
        #: the `SHIPPED_WEIGHTS` name it was loaded under (`load`), None for a checkpoint file:
        #: picks `job_step`'s default
        self.shipped_as: str | None = None

    @property
    def config(self) -> RedNetConfig:
        return self.net.config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images of its own layout (`template`) -> purified, at its network's face scale (`net_template`)."""
        return self.forward_template(images)

    @property
    def heldout_identities(self) -> list[str]:
        """Identities deliberately kept out of training (evaluation may use them as protected users)."""
        return list(self.meta.get("data_summary", {}).get("heldout_identities", []))

    @property
    def training_identities(self) -> list[str]:
        """Identities whose photos the purifier was trained on (exclude them from evaluation)."""
        return list(self.meta.get("data_summary", {}).get("train_identities", []))

    @property
    def seen_identities(self) -> set[str] | None:
        """Identities the purifier saw in training or validation (an evaluation must not protect them), or
        None when the checkpoint does not record them."""
        summary = self.meta.get("data_summary") or {}
        if not summary.get("train_identities"):
            return None
        return set(summary["train_identities"]) | set(summary.get("val_identities") or [])

    @property
    def amplification(self) -> float:
        """The largest cloak amplification factor k it was trained with (3 when not recorded)."""
        amp = (self.meta.get("config") or {}).get("amplify") or {}
        if amp.get("k_values"):
            return float(max(amp["k_values"]))
        return float(amp["k_max"]) if amp.get("k_max") is not None else 3.0

    def flops(self, height: int = 150, width: int = 150) -> int:
        """Convolution FLOPs of one forward pass on an H x W image."""
        return conv_flops(self.net, height, width)

    @property
    def template(self) -> str:
        """The face layout it was trained on ("dlib150" unless its training config says otherwise)."""
        data = (self.meta.get("config") or {}).get("data") or {}
        return str(data.get("template") or "dlib150")

    @property
    def net_template(self) -> str:
        """The layout whose face scale its network runs at: `[train] face_scale` of its training config, else
        `template` (a purifier fine-tuned on ArcFace crops from a dlib150 one keeps the dlib150 scale)."""
        train = (self.meta.get("config") or {}).get("train") or {}
        return str(train.get("face_scale") or self.template)

    def forward_template(self, images: torch.Tensor, template: str | None = None) -> torch.Tensor:
        """The forward pass on images of face layout `template` (None: the purifier's own).

        Images whose face scale differs from the network's (`net_template`) are resized to it (bicubic; an
        ArcFace 112 crop to 167 px for a dlib150 network), purified, and only the change the purifier made is
        resized back (antialiased) and added to the input, so resampling blur never reaches the output
        (`AtFaceScale`). Differentiable.
        """
        s = template_scale(template or self.template, self.net_template)
        dtype = next(self.net.parameters()).dtype
        return AtFaceScale.run(self.net, check_unit_images(images, "purifier").to(dtype), s)

    @torch.no_grad()
    def purify(self, images: torch.Tensor, batch_size: int = 32, device: str | torch.device | None = None,
               channels_last: bool = True, template: str | None = None, step: float = 1.0) -> torch.Tensor:
        """Purify a (possibly large) batch in chunks without gradients; returns a CPU float tensor in [0, 1], the
        input's shape.

        images: (N, 3, H, W) float in [0, 1] (uint8 is accepted and scaled). device: where to run
        (None: the module's current device). channels_last: NHWC memory layout, 1.5-2x faster on CPU.
        The module is left as it was (its device, training mode and weights' memory layout: moving its 2.3 MB of
        weights there and back costs about a millisecond); to run many calls on a device, move it there once.
        template: the images' face layout ("dlib150", "arcface112"; None: the purifier's own); another
        layout than the purifier's is served by resampling (`forward_template`). step: how far along the
        purifier's change to go, x + step * (P(x) - x) clamped to [0, 1] (`extrapolate`; 1 = P(x)). Images
        larger than `TILE` on a side go through in overlapping tiles (`tiled`), so memory does not grow with them.
        """
        step = check_step(step)
        batch_size = check_batch_size(batch_size, "purifier")
        images = check_unit_images(images, "purifier", uint8=True)
        if 0 in images.shape[2:]:
            raise ValueError(f"expected (N, 3, H, W) RGB images of at least 1 x 1 px, got shape {tuple(images.shape)}")
        home, home_fmt = next(self.parameters()).device, weights_memory_format(self)
        if device is not None:
            self.to(resolve_device(device))
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if fmt != home_fmt:
            self.to(memory_format=fmt)  # type: ignore[call-overload]  # stubs lack memory_format
        out = []
        try:
            for i in range(0, len(images), batch_size):
                x = images[i : i + batch_size].to(dev, non_blocking=True).contiguous(memory_format=fmt)
                y = tiled(lambda t: self.forward_template(t, template), x)
                if step != 1.0:
                    y = extrapolate(x.to(y.dtype), y, step)  # in the network's dtype, as step 1 (float64 in: float32)
                else:  # the change resized back from the network's face scale (`AtFaceScale`) may overshoot [0, 1]
                    y = y.clamp(0, 1)
                out.append(y.to("cpu").contiguous())
        finally:  # the caller's module as it was
            self.train(was_training)
            if fmt != home_fmt:
                self.to(memory_format=home_fmt)  # type: ignore[call-overload]  # stubs lack memory_format
            if dev != home:
                self.to(home)
        return torch.cat(out) if out else images.new_empty(images.shape)

    def purify_folder(self, in_path: str | Path, out_path: str | Path, **options: Any):
        """Purify every image under `in_path` into the mirrored tree `out_path`; returns the `JobReport`.
        Options as `puface.purifier.folder.purify_folder` (device, batch_size, resume, align, ...)."""
        from .folder import purify_folder

        return purify_folder(in_path, out_path, purifier=self, **options)

    # ---- persistence -------------------------------------------------------------------------
    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        meta = {**self.meta, **extra}
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        return make_checkpoint(state, self.config.as_dict(), config=meta.get("config"),
                               data_summary=meta.get("data_summary"), metrics=meta.get("metrics"),
                               epoch=int(meta.get("epoch", 0)))

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write a `.pt` or `.safetensors` checkpoint (see `checkpoint.py`)."""
        return save_checkpoint(path, self.checkpoint(**extra))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "Purifier":
        meta = {k: ckpt.get(k) for k in ("config", "data_summary", "metrics", "puface_version", "epoch")}
        p = cls(ckpt["model_config"], meta=meta)
        try:
            p.net.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise PufaceError(f"checkpoint weights do not match its model config ({e})") from None
        return p.eval()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device | None = "cpu") -> "Purifier":
        """Load a purifier checkpoint (`.pt` or `.safetensors`); None, "" or "default" = the shipped purifier
        (how configs name it), "arcface112" = the shipped one for ArcFace 112 px crops (`SHIPPED_WEIGHTS`)."""
        name = None
        if path is None or is_shipped(path):
            name = str(path or "default")
            path = shipped_weights_path(name)
            if not path.is_file():
                raise PufaceError(f"the shipped purifier {name!r} is missing from this installation ({path}); "
                                  "reinstall puface or pass --weights")
        elif not Path(path).is_file():  # a misspelt name too: say what else it could be
            where = f"; a relative path is read from the current folder {current_folder()}"
            where = "" if Path(path).is_absolute() else where
            raise MissingFileError(path, f"{path}: purifier checkpoint not found; give a checkpoint file "
                                   f"(.safetensors, .pt) or a shipped purifier's name: {', '.join(SHIPPED_WEIGHTS)}"
                                   f"{where}")
        p = cls.from_checkpoint(load_checkpoint(path))
        p.shipped_as = name
        return p.to(resolve_device(device)) if device is not None else p

    @classmethod
    def load_layouts(
        cls, weights: str | Path | None = None, device: str | torch.device | None = "cpu"
    ) -> dict[str, "Purifier"]:
        """The purifier to use for each face layout: {its template: `load(weights)`}, and when `weights` is the
        shipped default (None, "", "default") also the other shipped purifiers that are installed, each under the
        layout it was trained on (so 112 px ArcFace crops get the one trained on them)."""
        main = cls.load(weights, device=device)
        found = {main.template: main}
        if weights is None or str(weights) in ("", "default"):
            for name in SHIPPED_WEIGHTS:
                if name != "default" and shipped_weights_path(name).is_file():
                    p = cls.load(name, device=device)
                    found.setdefault(p.template, p)
        return found


def as_layouts(purifier: "Purifier | Mapping[str, Purifier]") -> dict[str, Purifier]:
    """{face layout: purifier} of one purifier (under the layout it was trained on) or of such a mapping."""
    layouts = dict(purifier) if isinstance(purifier, Mapping) else {purifier.template: purifier}
    if not layouts:
        raise PufaceError("no purifier given")
    return layouts


def primary_purifier(purifier: "Purifier | Mapping[str, Purifier]") -> Purifier:
    """The purifier for images of no known layout (and the dlib150 chips `--align` cuts): the dlib150 one,
    else the first."""
    layouts = as_layouts(purifier)
    return layouts.get("dlib150") or next(iter(layouts.values()))
