"""puface: remove facial cloaks from face-recognition training photos, and measure whether it worked.

Images everywhere in the library are float RGB tensors in [0, 1], shape (N, 3, H, W). The Python API
for the three users (FR trainers, privacy researchers, anyone reproducing the tables)::

    import puface
    purifier = puface.load_purifier()                  # the shipped purifier (or a checkpoint path)
    clean = purifier.purify(images)                    # (N, 3, H, W) in [0, 1] -> same
    detector = puface.load_detector()                  # which photos are cloaked: detector.score(images)
    purifier.purify_folder("scraped/", "purified/")    # a folder tree, streamed, resumable

    attack = puface.create_attack("fawkes", mode="high", embedders=["dlib-resnet29"])
    defense = puface.create_defense("jpeg:quality=75")
    embedder = puface.create_embedder("sface")
    puface.list_attacks(), puface.list_defenses(), puface.list_embedders(), puface.list_trainers()

    result = puface.run_experiment("demo", out="runs/demo")   # a config name, file or ExperimentConfig

See `puface.api` for the details; the layers below it are documented in docs/ARCHITECTURE.md.
"""

from .utils.errors import install_missing_base_dependency_hints
from .utils.version import __version__

install_missing_base_dependency_hints()  # `import puface.<any module>` without torch says what to pip install

_API = (
    "load_purifier",
    "load_detector",
    "create_attack",
    "list_attacks",
    "create_defense",
    "list_defenses",
    "create_embedder",
    "list_embedders",
    "create_trainer",
    "list_trainers",
    "load_config",
    "run_experiment",
    "plan_experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "PurifyBatch",
)


def __getattr__(name: str):
    """The API functions, imported on first use (so `import puface` stays fast). Without torch (or another of
    puface's dependencies) installed: an ImportError saying what to pip install, as the CLI says it."""
    if name in _API:
        from . import api  # which says what to pip install when a dependency is missing

        return getattr(api, name)
    raise AttributeError(f"module 'puface' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))


__all__ = ["__version__", *_API]
