"""Decode many image files into one float tensor, in parallel, skipping (and reporting) bad files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..io.images import read_image
from ..utils.errors import ImageReadError, PufaceError
from ..utils.images import image_to_tensor


def _load_one(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    t = image_to_tensor(read_image(path))
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    return t


def load_images(
    paths: Sequence[str | Path],
    *,
    size: int | tuple[int, int] | None = None,
    workers: int = 4,
    progress: bool = False,
    desc: str = "loading",
) -> tuple[torch.Tensor, list[int], list[ImageReadError]]:
    """Load images as float RGB (N, 3, H, W) in [0, 1].

    Args:
        paths: image files.
        size: resize every image to (H, W) (or a square side) with antialiasing; needed when the
            images differ in size. None keeps the size (all images must then be the same size).
    Returns:
        (images, kept indices into `paths`, errors for files that could not be read).
    Raises:
        PufaceError: without `size`, when the readable files differ in size (naming two of them).
    """
    if isinstance(size, int):
        size = (size, size)
    files = [Path(p) for p in paths]

    def task(i: int) -> tuple[int, torch.Tensor | None, ImageReadError | None]:
        try:
            return i, _load_one(files[i], size), None
        except ImageReadError as e:
            return i, None, e

    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it: Iterable[tuple[int, torch.Tensor | None, ImageReadError | None]] = pool.map(task, range(len(paths)))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(paths), desc=desc, unit="img", leave=False)
        results = list(it)
    kept = [i for i, t, e in results if t is not None]
    errors = [e for _, _, e in results if e is not None]
    tensors = [t for _, t, _ in results if t is not None]
    if not tensors:
        return torch.empty(0, 3, *(size or (0, 0))), kept, errors
    first = tuple(tensors[0].shape[-2:])
    odd = next((j for j, t in enumerate(tensors) if tuple(t.shape[-2:]) != first), None)
    if odd is not None:
        def wh(j: int) -> str:
            return "x".join(str(v) for v in reversed(tensors[j].shape[-2:]))

        raise PufaceError(f"{paths[kept[odd]]}: {wh(odd)} px, unlike {paths[kept[0]]} ({wh(0)} px): these images must "
                          "be of one size (face chips cut alike; resize them first)")
    return torch.stack(tensors), kept, errors


__all__ = ["load_images"]
