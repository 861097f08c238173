"""Defenses: images -> images, applied to every training image before an FR model is trained.

    >>> from puface.defenses import create_defense, list_defenses
    >>> d = create_defense("jpeg:quality=75")          # or create_defense("jpeg", quality=75)
    >>> defended = d(images)                           # (N, 3, H, W) in [0, 1] -> same
    >>> d.gradient_estimate(images, "exact")           # what an adaptive attacker differentiates

Modules: `base` (the contract, composition, straight-through gradients), `registry` (names, specs), `pixel` (JPEG,
blur, median, bit depth, noise, resize; sharpen, gamma, contrast: natural-photo variants), `purifier` (the PuFace
purifier), `views` (keep several views of each photo, e.g. the photo and its purified version), `shared` (`unmask`:
subtract a pattern that one person's photos share, a universal mask; group-wise), `randomized` (`random`: one of
several defenses per photo, chosen by a private seed).
"""

from .base import GRADIENTS, Compose, Composite, Defense, ModuleDefense, NoDefense
from .pixel import JPEG, BitDepth, Contrast, DownUpResize, Gamma, GaussianBlur, GaussianNoise, MedianFilter, Sharpen
from .purifier import PuFaceDefense, defense_training_identities, holds_purifier
from .randomized import RandomChoice
from .registry import DEFENSES, create_defense, default_label, list_defenses, register
from .shared import SharedPatternRemoval, shared_pattern_score
from .views import Views

__all__ = [
    "Defense",
    "NoDefense",
    "ModuleDefense",
    "Composite",
    "Compose",
    "GRADIENTS",
    "PuFaceDefense",
    "JPEG",
    "GaussianBlur",
    "MedianFilter",
    "BitDepth",
    "GaussianNoise",
    "DownUpResize",
    "Sharpen",
    "Gamma",
    "Contrast",
    "DEFENSES",
    "register",
    "create_defense",
    "list_defenses",
    "default_label",
    "defense_training_identities",
    "holds_purifier",
    "Views",
    "RandomChoice",
    "SharedPatternRemoval",
    "shared_pattern_score",
]
