"""Seeded per-identity train/test splits (FaceCure's 70/30 by default).

Each identity is shuffled with its own seed derived from (seed, identity name), so adding or removing
other identities never changes an identity's split.

Counts: round(0.7 n) training photos (`split_counts`). FaceCure's own scripts count otherwise: eval.py (NN, linear)
draws int(0.3 n) test photos of every identity, so training keeps one photo more there wherever 0.7 n has a fraction
below a half (6 photos: 5 / 1 there, 4 / 2 here; 9, 12, 13, 16, 19, ...: 169 of the sizes 2 to 399); eval_e2e.py
keeps int(0.7 n) of the protected user's photos for training, one fewer there wherever the fraction is a half or more
(5: 3 / 2 there, 4 / 1 here; 11, 14, 15, ...). Of 10 to 20 photos (the LFW grids' identities) all three agree at 10
and 20 only. Every documented grid uses this rule; changing it would change their splits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..utils.errors import PufaceError
from ..utils.seeding import stable_seed
from .layout import FaceDataset, FaceImage


@dataclass
class Split:
    train: list[FaceImage]
    test: list[FaceImage]

    def identities(self) -> list[str]:
        return sorted({im.identity for im in self.train} | {im.identity for im in self.test})


def split_counts(n: int, train_fraction: float, min_train: int, min_test: int) -> tuple[int, int]:
    """(n_train, n_test) for n images: round(n * fraction) (a half up, as the binary product gives it: 0.7 * 5 = 3.5
    -> 4, 0.7 * 45 = 31.499... -> 31), then moved to respect both minimums. Not FaceCure's int(0.3 n) test photos
    (module docstring)."""
    if not 0.0 < train_fraction < 1.0:
        raise PufaceError(f"train fraction must be in (0, 1), got {train_fraction}")
    if n < min_train + min_test:
        raise PufaceError(f"{n} images cannot give {min_train} training and {min_test} test images")
    n_train = int(math.floor(n * train_fraction + 0.5))
    n_train = max(min_train, min(n_train, n - min_test))
    return n_train, n - n_train


def split_dataset(
    ds: FaceDataset,
    *,
    train_fraction: float = 0.7,
    min_train: int = 1,
    min_test: int = 1,
    seed: int = 0,
    drop_small: bool = True,
) -> Split:
    """Split every identity `train_fraction` / rest, seeded.

    Identities with fewer than `min_train + min_test` images are dropped when `drop_small`,
    otherwise they raise a `PufaceError` naming the identity.
    """
    train: list[FaceImage] = []
    test: list[FaceImage] = []
    for identity, images in ds.by_identity().items():
        if len(images) < min_train + min_test:
            if drop_small:
                continue
            raise PufaceError(
                f"identity {identity!r} has {len(images)} images; a split needs at least {min_train + min_test}"
            )
        n_train, _ = split_counts(len(images), train_fraction, min_train, min_test)
        order = sorted(images)
        random.Random(stable_seed("split", seed, identity)).shuffle(order)
        train.extend(sorted(order[:n_train]))
        test.extend(sorted(order[n_train:]))
    if not train:
        raise PufaceError(f"{ds.root}: no identity has enough images for a split (need {min_train + min_test} each)")
    return Split(train, test)


def split_identities(
    identities: list[str], fraction: float, seed: int, tag: str = "identities"
) -> tuple[list[str], list[str]]:
    """Split a list of identity names into two disjoint groups (first gets round(n*fraction)), seeded."""
    names = sorted(identities)
    random.Random(stable_seed(tag, seed)).shuffle(names)
    k = int(math.floor(len(names) * fraction + 0.5))
    return sorted(names[:k]), sorted(names[k:])
