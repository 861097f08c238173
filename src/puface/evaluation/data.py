"""The evaluation's data: one seeded split of an identity-folder tree, decoded, and the protected users.

Images are held as uint8 (N, 3, H, W), as they would be stored on disk; `content_hashes` key the
evaluation cache. Unreadable files are left out with a warning naming each.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.layout import FaceDataset, FaceImage, scan_identities
from ..data.loading import load_images
from ..data.split import Split, split_dataset
from ..utils.errors import ImageReadError, PufaceError
from ..utils.fingerprint import content_hashes
from ..utils.images import to_uint8
from ..utils.seeding import stable_seed

log = logging.getLogger(__name__)

__all__ = ["LabelledImages", "load_labelled", "EvaluationData", "choose_users"]


@dataclass
class LabelledImages:
    """Images of a split side: uint8 (N, 3, H, W), their identity labels, files and content hashes."""

    paths: list[Path]
    labels: np.ndarray
    images: torch.Tensor
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def rows_of(self, identity: str) -> np.ndarray:
        return np.flatnonzero(self.labels == identity)


def load_labelled(
    items: Sequence[FaceImage], size: int, *, progress: bool = False, desc: str = "loading"
) -> LabelledImages:
    """Decode `items` to uint8 at size x size; unreadable files are left out with a warning naming them."""
    paths = [im.path for im in items]
    chunks: list[torch.Tensor] = []
    kept_all: list[int] = []
    errors: list[ImageReadError] = []
    for start in range(0, len(paths), 256):
        x, kept, errs = load_images(paths[start : start + 256], size=(size, size), progress=progress, desc=desc)
        chunks.append(to_uint8(x))
        kept_all.extend(start + k for k in kept)
        errors.extend(errs)
    for e in errors:
        log.warning("skipping unreadable image %s", e)
    images = torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return LabelledImages(
        paths=[paths[k] for k in kept_all],
        labels=np.array([items[k].identity for k in kept_all], dtype=object),
        images=images,
        hashes=content_hashes(images),
    )


@dataclass
class EvaluationData:
    """One seeded split of a data set, decoded: `train` and `test` as `LabelledImages`."""

    dataset: FaceDataset
    split: Split
    train: LabelledImages
    test: LabelledImages
    seed: int
    image_size: int

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.train.labels.tolist()))

    @classmethod
    def prepare(
        cls,
        root: str | Path | FaceDataset,
        *,
        seed: int = 0,
        train_fraction: float = 0.7,
        min_images: int = 2,
        max_per_identity: int | None = None,
        identities: Iterable[str] | None = None,
        image_size: int = 150,
        progress: bool = False,
    ) -> "EvaluationData":
        """Scan `root` (identity folders), cap, split (70/30, seeded) and decode every image."""
        ds = root if isinstance(root, FaceDataset) else scan_identities(
            root, min_images=min_images, max_per_identity=max_per_identity, identities=identities, seed=seed
        )
        split = split_dataset(ds, train_fraction=train_fraction, min_train=1, min_test=1, seed=seed)
        train = load_labelled(split.train, image_size, progress=progress, desc="loading training images")
        test = load_labelled(split.test, image_size, progress=progress, desc="loading test images")
        return cls(ds, split, train, test, seed, image_size)


def choose_users(
    data: EvaluationData,
    *,
    count: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    exclude: Iterable[str] = (),
    min_train: int = 2,
    min_test: int = 1,
    excluded_as: str = "",
) -> list[str]:
    """Protected users: `names` as given, or `count` identities drawn with `seed` among those with at
    least `min_train` training and `min_test` test images that are not in `exclude` (`excluded_as` says what they
    are, and how to allow them, when too few are left)."""
    n_train = {str(k): int(v) for k, v in zip(*np.unique(data.train.labels.astype(str), return_counts=True))}
    n_test = {str(k): int(v) for k, v in zip(*np.unique(data.test.labels.astype(str), return_counts=True))}
    if names:
        missing = [n for n in names if n not in n_train]
        if missing:
            raise PufaceError(f"protected user(s) not in the data (or with too few images): {', '.join(missing)}")
        return list(dict.fromkeys(names))
    excluded = set(exclude)
    candidates = sorted(
        k for k in n_train if n_train[k] >= min_train and n_test.get(k, 0) >= min_test and k not in excluded
    )
    if count is None:
        count = 1
    if count > len(candidates):
        raise PufaceError(
            f"asked for {count} protected users but only {len(candidates)} identities qualify "
            f"(>= {min_train} training and >= {min_test} test images"
            + (f", not among the {len(excluded)} excluded" if excluded else "") + ")"
            + (f"; excluded: {excluded_as}" if excluded and excluded_as else "")
        )
    return sorted(random.Random(stable_seed("users", seed)).sample(candidates, count))
