"""`PurifyBatch`: the purifier as a per-batch function for your own data pipeline (Ray Data, or any loop
over batches of decoded images). It imports no Ray: Ray Data calls it as a callable class.

    >>> import ray, puface
    >>> ds = ray.data.read_images("s3://bucket/faces/", mode="RGB")         # doctest: +SKIP
    >>> ds = ds.map_batches(puface.PurifyBatch, batch_size=32, concurrency=4,
    ...                     fn_constructor_kwargs={"device": "cuda"}, num_gpus=1)  # doctest: +SKIP

A batch is a dict of columns (Ray's "numpy" batch format); the image column (default "image") holds
uint8 RGB images, (N, H, W, 3) or a sequence of (H, W, 3) arrays of mixed sizes. The call returns
the batch with that column purified (same shapes and dtype) and every other column untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.jobs import FileJob, LoadedImage, call_process
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from .model import Purifier, as_layouts, primary_purifier

__all__ = ["PurifyBatch"]


class PurifyBatch:
    """Purify the `column` images of a batch dict (uint8 RGB, (N, H, W, 3) or N arrays (H, W, 3)).

    weights: a checkpoint path, a shipped name (None: the shipped purifiers, one per face layout as
    `Purifier.load_layouts`) or a loaded `Purifier`; device: "cpu",
    "cuda", ... (None: CUDA when available); threads: torch threads (None: leave as is); step: how far along the
    purifier's change (None: `puface purify`'s default, `purifier.model.job_step`). The same batch
    function as `puface purify` (same-size images purified together, 8-bit rounding): outputs equal
    the CLI's pixels. Returns the batch with that column replaced by the purified images, uint8 RGB of the same
    shapes (an (N, H, W, 3) array stays one). An image that cannot be purified raises `PufaceError` naming its row.
    """

    def __init__(self, weights: str | Path | Purifier | None = None, device: str | None = None,
                 column: str = "image", threads: int | None = None, step: float | None = None):
        from .folder import make_batch_process

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        layouts = (
            as_layouts(weights) if isinstance(weights, Purifier) else Purifier.load_layouts(weights, device=self.device)
        )
        self.purifier = primary_purifier(layouts)
        self.column = column
        self._process = make_batch_process(layouts, self.device, step=step)

    def __call__(self, batch: dict) -> dict:
        if self.column not in batch:
            raise PufaceError(f"PurifyBatch: no column {self.column!r} in the batch (columns: {', '.join(batch)})")
        images = batch[self.column]
        items = []
        for i, img in enumerate(images):
            a = np.asarray(img)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise PufaceError(f"PurifyBatch: row {i}: expected uint8 RGB (H, W, 3), got {a.dtype} {a.shape}")
            name = Path(f"row{i}")
            items.append(LoadedImage(FileJob(name, name, name), a))
        outs = call_process(self._process, items) if items else []
        purified = []
        for i, o in enumerate(outs):
            if o.status != "ok" or o.image is None:
                raise PufaceError(f"PurifyBatch: row {i}: {o.reason or o.status}")
            purified.append(o.image)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
            result = np.stack(purified) if purified else images.copy()
        else:
            result = np.empty(len(purified), dtype=object)
            result[:] = purified
        return {**batch, self.column: result}
