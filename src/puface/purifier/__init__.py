"""The PuFace purifier network: a RED-Net that maps (cloaked) face images to natural ones.

    >>> from puface.purifier import Purifier
    >>> p = Purifier.load()                 # default purifier shipped with the package   # doctest: +SKIP
    >>> clean = p.purify(images)            # (N, 3, H, W) in [0, 1] -> same shape          # doctest: +SKIP

Modules: `rednet` (architecture), `model` (`Purifier`: load, purify, save), `checkpoint` (file
formats), `folder` (purify a folder tree or shards), `batch` (`PurifyBatch`, the per-batch function for
Ray Data's `map_batches` and other pipelines). Training a purifier is `puface.training`.
"""

from __future__ import annotations

from .batch import PurifyBatch
from .model import Purifier, default_weights_path
from .rednet import RedNet, RedNetConfig

__all__ = ["Purifier", "PurifyBatch", "RedNet", "RedNetConfig", "default_weights_path"]
