"""Purifier checkpoints: weights + full config + package version + training-data summary.

Two interchangeable formats, chosen by the file extension:

* `.pt` (torch.save): a dict of tensors and plain Python values, loadable with
  `torch.load(path, weights_only=True)`. Keys: format, format_version, state_dict, model_config,
  config, puface_version, torch_version, data_summary, metrics, epoch; training checkpoints
  (`last.pt`) also hold `train_state` (optimizer, scheduler, step counters, RNG state) for resuming.
* `.safetensors`: the weights as tensors; everything else as JSON in the metadata entry "puface".

Writes go through a temporary file and an atomic rename, so an interruption never leaves a broken
checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import PufaceError
from ..utils.paths import create_temporary
from ..utils.version import __version__

FORMAT = "puface-purifier"
FORMAT_VERSION = 1
_META_KEYS = ("model_config", "config", "puface_version", "torch_version", "data_summary", "metrics", "epoch")


def make_checkpoint(state_dict: dict[str, torch.Tensor], model_config: dict, *, config: dict | None = None,
                    data_summary: dict | None = None, metrics: dict | None = None, epoch: int = 0,
                    train_state: dict | None = None) -> dict[str, Any]:
    """Assemble the checkpoint dict (tensors moved to CPU)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()},
        "model_config": dict(model_config),
        "config": json.loads(json.dumps(config or {})),
        "puface_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "data_summary": json.loads(json.dumps(data_summary or {})),
        "metrics": json.loads(json.dumps(metrics or {})),
        "epoch": int(epoch),
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    return ckpt


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write `ckpt` (from `make_checkpoint`) atomically; `.safetensors` drops `train_state`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new temporary named as `io.jobs.remove_stale_temporaries` finds a killed process's (never through a link)
    fd, tmp = create_temporary(path)
    try:
        with open(fd, "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save

                meta = {k: ckpt[k] for k in _META_KEYS if k in ckpt}
                meta.update(format=ckpt["format"], format_version=ckpt["format_version"])
                f.write(save(ckpt["state_dict"], metadata={"puface": json.dumps(meta)}))
            else:
                torch.save(ckpt, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a `.pt` or `.safetensors` purifier checkpoint into the `make_checkpoint` dict.

    Uses `torch.load(weights_only=True)`: no code is executed from the file. Raises `PufaceError`
    naming the file when it is missing, unreadable or not a puface purifier.
    """
    path = Path(path)
    if not path.is_file():
        raise PufaceError(f"{path}: purifier checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("puface")
            if raw is None:
                raise PufaceError(f"{path}: not a puface purifier (no 'puface' metadata in the safetensors file)")
            ckpt = json.loads(raw)
            ckpt["state_dict"] = load_file(str(path), device=str(map_location))
        else:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PufaceError:
        raise
    except Exception as e:
        raise PufaceError(f"{path}: not a purifier checkpoint (expected a puface .safetensors or torch .pt file; "
                          f"reading it failed with {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PufaceError(f"{path}: not a puface purifier checkpoint (format {found!r})")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise PufaceError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this puface ({FORMAT_VERSION}); "
            "upgrade puface"
        )
    missing = [k for k in ("state_dict", "model_config") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise PufaceError(f"{path}: incomplete purifier checkpoint (no {' or '.join(missing)})")
    return ckpt
