"""Shared test fixtures. Nothing here reads ../shared: the johns chips come from Debian's package
through `puface.data.johns.fetch_johns` (the product's own path)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def johns_dir() -> Path:
    """The 5 x 11 johns chips (150x150 JPEG), fetched once into the puface cache."""
    from puface.data.johns import fetch_johns

    return fetch_johns()


@pytest.fixture(scope="session")
def johns_images(johns_dir):
    """(paths, labels, images): the 55 johns chips as a float tensor (55, 3, 150, 150) in [0, 1]."""
    import torch

    from puface.imageio import read_image, to_tensor

    paths = sorted(johns_dir.glob("*/*.jpg"))
    labels = [p.parent.name for p in paths]
    images = torch.stack([to_tensor(read_image(p)) for p in paths])
    return paths, labels, images
