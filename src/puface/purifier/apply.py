"""`Purifier`: a trained RED-Net as an images -> images module, plus folder purification.

    >>> from puface.purifier import Purifier
    >>> p = Purifier.load()                 # the default purifier shipped with the package
    >>> clean = p.purify(images)            # (N, 3, H, W) in [0, 1] -> same shape, no grad, batched

Any H x W works (the network is fully convolutional). The shipped purifier was trained on aligned
150x150 face chips; other scales of face work less well.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import PufaceError
from .checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from .rednet import RedNet, RedNetConfig, conv_flops

DEFAULT_WEIGHTS_NAME = "purifier-default.safetensors"


def default_weights_path() -> Path:
    """The default purifier file inside the installed package (`puface/weights/`)."""
    return Path(str(resources.files("puface") / "weights" / DEFAULT_WEIGHTS_NAME))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/"auto" -> cuda when available, else cpu. Raises `PufaceError` for an unusable device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PufaceError(f"invalid device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PufaceError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


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

    @property
    def config(self) -> RedNetConfig:
        return self.net.config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @property
    def heldout_identities(self) -> list[str]:
        """Identities deliberately kept out of training (evaluation may use them as protected users)."""
        return list(self.meta.get("data_summary", {}).get("heldout_identities", []))

    @property
    def training_identities(self) -> list[str]:
        """Identities whose photos the purifier was trained on (exclude them from evaluation)."""
        return list(self.meta.get("data_summary", {}).get("train_identities", []))

    def flops(self, height: int = 150, width: int = 150) -> int:
        """Convolution FLOPs of one forward pass on an H x W image."""
        return conv_flops(self.net, height, width)

    @torch.no_grad()
    def purify(self, images: torch.Tensor, batch_size: int = 32, device: str | torch.device | None = None,
               channels_last: bool = True) -> torch.Tensor:
        """Purify a (possibly large) batch in chunks without gradients; returns a CPU float tensor.

        images: (N, 3, H, W) float in [0, 1] (uint8 is accepted and scaled). device: where to run
        (None: the module's current device). channels_last: NHWC memory layout, 1.5-2x faster on CPU.
        """
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        if device is not None:
            self.to(resolve_device(device))
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=fmt)
        out = []
        try:
            for i in range(0, len(images), max(1, batch_size)):
                x = images[i : i + batch_size].to(dev, non_blocking=True).contiguous(memory_format=fmt)
                out.append(self(x).to("cpu").contiguous())
        finally:
            self.train(was_training)
        return torch.cat(out) if out else images.new_empty(images.shape)

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
        """Load a purifier checkpoint (`.pt` or `.safetensors`); None = the default shipped purifier."""
        if path is None:
            path = default_weights_path()
            if not path.is_file():
                raise PufaceError(f"the default purifier is missing from this installation ({path}); "
                                  "reinstall puface or pass --weights")
        p = cls.from_checkpoint(load_checkpoint(path))
        return p.to(resolve_device(device)) if device is not None else p


def make_batch_process(purifier: Purifier, device: torch.device, channels_last: bool = True) -> Callable:
    """A `run_folder_job` batch function: purify each same-size group of decoded images at once."""
    from ..imageio import to_uint8
    from ..pipeline import LoadedImage, Outcome, group_by_size

    purifier.to(device).eval()

    def process(items: list[LoadedImage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        for _, idx in group_by_size(items).items():
            arr = np.stack([items[i].image for i in idx])  # (n, H, W, 3) uint8
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
            y = purifier.purify(x, batch_size=len(idx), channels_last=channels_last)
            for j, i in enumerate(idx):
                out = to_uint8(y[j])
                change = np.abs(out.astype(np.int16) - items[i].image.astype(np.int16))
                outcomes[i] = Outcome.ok(out, mean_abs_change=round(float(change.mean()), 3), max_abs_change=int(change.max()))
        return outcomes  # type: ignore[return-value]

    return process


def purify_folder(in_path: str | Path, out_path: str | Path, *, purifier: Purifier | None = None,
                  weights: str | Path | None = None, device: str | None = None, batch_size: int = 16,
                  resume: bool = True, rank: int = 0, world_size: int = 1, quality: int = 95,
                  io_workers: int = 2, progress: bool = True, stats_csv: Path | None = None,
                  align: bool = False, largest_face: bool = False, no_face: str = "copy"):
    """Purify every image under `in_path` into the mirrored tree `out_path` (names, formats and sizes kept).

    rank/world_size: this process handles every world_size-th file (multi-process purification).
    align: detect faces, purify aligned 150x150 chips and paste them back (needs `puface.align`).
    Returns the `JobReport`.
    """
    from ..pipeline import plan_mirror, run_folder_job, shard

    dev = resolve_device(device)
    if purifier is None:
        purifier = Purifier.load(weights, device=dev)
    jobs = plan_mirror(in_path, out_path)
    if world_size > 1:
        jobs = shard(jobs, rank, world_size)
    process = make_batch_process(purifier, dev)
    if align:
        try:
            from ..align import align_adapter  # type: ignore[attr-defined]
        except ImportError:
            raise PufaceError("--align needs puface.align, which is not available in this installation") from None
        process = align_adapter(process, chip_size=150, no_face=no_face, largest_face=largest_face)
    return run_folder_job(jobs, process, batch_size=batch_size, resume=resume, desc="purifying", verb="purified",
                          stats_csv=stats_csv, quality=quality, io_workers=io_workers, progress=progress)
