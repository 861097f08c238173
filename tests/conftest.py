"""Shared test fixtures. Nothing here reads ../shared: the johns chips come from Debian's package
through `puface.data.johns.fetch_johns` (the product's own path)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skip them (with the reason) where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def johns_dir() -> Path:
    """The 5 x 11 johns chips (150x150 JPEG), fetched once into the puface cache."""
    from puface.data.johns import fetch_johns

    return fetch_johns()


@pytest.fixture(scope="session")
def johns_images(johns_dir):
    """(paths, labels, images): the 55 johns chips as a float tensor (55, 3, 150, 150) in [0, 1]."""
    import torch

    from puface.io.images import read_image

    from puface.utils.images import image_to_tensor

    paths = sorted(johns_dir.glob("*/*.jpg"))
    labels = [p.parent.name for p in paths]
    images = torch.stack([image_to_tensor(read_image(p)) for p in paths])
    return paths, labels, images


@pytest.fixture(scope="session")
def small_chips(johns_images):
    """`small_chips(step, count, size)`: every `step`-th johns chip, the first `count` of them, resized to
    size x size (antialiased bilinear; fast attack tests), float (count, 3, size, size) in [0, 1]."""
    import torch.nn.functional as F

    def make(step: int, count: int, size: int = 48):
        x = johns_images[2][::step][:count]
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of attack tests: they run many small tensor ops, for which threads
    only add synchronisation (badly so on a shared, oversubscribed CPU); the attacks' own multi-core use
    is measured in bench/. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory) -> Path:
    """A tiny finished experiment (tests/evaluation_helpers.py's colour stand-ins: 2 users, 2 trainers, 3 defenses)
    with its report.html, results.json and examples: the run folder. Read only; copy it to change it."""
    from evaluation_helpers import EXPERIMENT_COLOURS_TOML, register_standins, write_colour_faces
    from puface.experiments import load_config, run_experiment

    register_standins()
    tmp = tmp_path_factory.mktemp("colour_run")
    root = write_colour_faces(tmp / "data")
    (tmp / "c.toml").write_text(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    res = run_experiment(load_config(tmp / "c.toml"), tmp / "out", progress=False, echo=lambda s: None)
    assert res.report is not None and (tmp / "out" / "results.json").is_file()
    return tmp / "out"
