"""Attacks whose cloak of an image depends on other images: fitted on a labelled group, not image by image.

OPOM fits one universal mask per identity on that person's photos; unlearnable examples fit their
error-minimizing noise against a model that also learns the other identities (the *reference*). Both
are `GroupCloakAttack`s: the whole call is one group, so their `run` takes per-image identity labels and
an optional reference set::

    atk = create_attack("opom", embedders=["dlib-resnet29"])
    res = atk.run(images, labels=["alice"] * 6 + ["bob"] * 4)          # one mask per identity
    atk = create_attack("unlearnable", perturb="classwise", embedders=["dlib-resnet29"])
    res = atk.run(user_images, labels=["alice"] * 6, reference=Reference(others, their_labels))

Randomness: one generator per call, seeded with (attack seed, kind, digest of the group's pixels and
labels, the reference's digest), so the same group gives bit-identical cloaks whatever the order of
other calls. A group is its images in their order: the same photos in another order are another group (another
seed, other mini-batches: OPOM and unlearnable cloaks of 6 photos differed by up to 15/255 when reversed, measured
with a stand-in face model), cached apart (`CloakCache.cloak_group`); the protocol and `puface cloak` give a person's
photos sorted by path. Sorting them by content here would free cloaks from file names but change every cached one.
`batch_size` only bounds how many images go through a surrogate at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from ..utils.errors import PufaceError
from ..utils.fingerprint import content_hashes, image_digest
from ..utils.images import quantize, to_uint8
from ..utils.labels import label_values
from ..utils.seeding import stable_seed
from .base import AttackResult, CloakAttack

__all__ = ["Reference", "GroupCloakAttack", "group_digest"]


@dataclass
class Reference:
    """Labelled images an attacker knows besides the ones it cloaks (other identities' photos):
    images (N, 3, H, W) uint8 or float in [0, 1], `labels` (N,) identity labels, and optionally the
    images' content hashes (`utils.fingerprint.content_hashes`; computed when absent)."""

    images: torch.Tensor
    labels: np.ndarray
    hashes: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(label_values(self.labels), dtype=object)
        if len(self.labels) != len(self.images):
            raise PufaceError(f"reference: {len(self.images)} images but {len(self.labels)} labels")
        if self.hashes is None:
            self.hashes = content_hashes(self.images if self.images.dtype == torch.uint8 else to_uint8(self.images))
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def digest(self) -> str:
        """sha256 of the sorted (content hash, label) pairs: the reference's identity in cache keys."""
        if self._digest is None:
            assert self.hashes is not None  # __post_init__ computes them when absent
            pairs = sorted(f"{h}:{lab}" for h, lab in zip(self.hashes, self.labels.tolist()))
            self._digest = hashlib.sha256("\n".join(pairs).encode()).hexdigest()
        return self._digest


def group_digest(digests: Sequence[str], labels: Sequence[Hashable], reference: Reference | None) -> str:
    """sha256 of a group: its images' pixel digests with their labels, in order, and the reference's digest."""
    h = hashlib.sha256()
    for d, lab in zip(digests, labels):
        h.update(f"{d}:{lab}\n".encode())
    h.update(b"ref:" + (reference.digest.encode() if reference is not None else b"none"))
    return h.hexdigest()


class GroupCloakAttack(CloakAttack):
    """Base of the group attacks. Subclasses implement
    `_attack_group(x, labels, reference, generator) -> (cloaked, own per-image stats)` on the device."""

    group = True
    #: needs at least two classes among its labels and the reference (unlearnable examples)
    needs_classes = False

    def run(self, images: torch.Tensor, *, labels: Sequence[Hashable] | None = None, reference: Reference | None = None,
            quantize_output: bool = False, progress: bool = False, **extra) -> AttackResult:
        """Cloak `images` (N, 3, H, W) float in [0, 1] as one group.

        Args:
            labels: identity of each image, a sequence, numpy array or torch tensor (default: all one identity).
            reference: other identities' labelled images the attacker knows (used by attacks that need
                classes; ignored by the others).
            quantize_output: round to 8 bits before the statistics are measured.
        """
        if extra:
            raise PufaceError(f"{self.name}: unknown input(s) {', '.join(sorted(extra))}")
        self._check_images(images, self.min_side)
        labels = ["user"] * len(images) if labels is None else label_values(labels)
        if len(labels) != len(images):
            raise PufaceError(f"{self.name}: {len(images)} images but {len(labels)} labels")
        if not len(images):
            return self._empty_result(images)
        home = images.device
        x = images.to(self.device, torch.float32)
        g = torch.Generator(device="cpu")
        g.manual_seed(
            stable_seed(self.seed, self.kind, group_digest([image_digest(im) for im in x], labels, reference)) % (2**63)
        )
        out, own = self._attack_group(x, labels, reference, g)
        out = out.detach().clamp(0, 1)
        if quantize_output:
            out = quantize(out)
        parts = [
            self.measure(x[i : i + self.batch_size], out[i : i + self.batch_size])
            for i in range(0, len(x), self.batch_size)
        ]
        stats = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        stats.update({k: v.detach().float().cpu() for k, v in own.items()})
        return AttackResult(out.to(home), stats)

    def _attack_group(self, x: torch.Tensor, labels: list, reference: Reference | None,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        """fn applied to x in chunks of `batch_size`, concatenated."""
        return torch.cat([fn(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

