"""An on-disk cache of cloaked images, shared by the purifier's data builder, the evaluation and reruns.

Each cloaked image is a lossless PNG at

    ROOT/<attack name>-<sha256(config)[:12]>/<key[:2]>/<key>.png
    key = sha256(attack config JSON (sorted keys) + sha256 of the input pixels [+ target embeddings])

so a different attack setting, seed, surrogate (weights included) or input never reuses a file, and
the same ones always do, across experiments and processes. ROOT defaults to `$PUFACE_HOME/cloaks`.
Files are written atomically (temporary file + rename) as soon as their batch is done, so concurrent
runs and interrupted runs are safe; a cached file that cannot be read is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io.images import atomic_write_bytes, encode_image, read_image
from ..utils.errors import CloakNotCachedError, ImageReadError, PufaceError
from ..utils.fingerprint import image_digest
from ..utils.images import image_to_tensor, tensor_to_image, to_float
from ..utils.paths import cache_dir, puface_home
from .base import CloakAttack

__all__ = ["CloakCache"]


def _config_json(attack: CloakAttack) -> str:
    return json.dumps(attack.config, sort_keys=True, separators=(",", ":"))


class CloakCache:
    """Cloak image files once per (attack config, image content); see the module docstring.

    Args:
        root: cache folder (default `$PUFACE_HOME/cloaks`).
        cached_only: never run the attack: a cloak that is not cached raises `CloakNotCachedError`
            (checks that a run reuses exactly the cloaks made elsewhere, e.g. before training on a GPU).
        used: when given, every cache file read or written is added to it (e.g. to pack a run's cloaks).
    """

    def __init__(self, root: str | Path | None = None, *, cached_only: bool = False, used: set[Path] | None = None):
        self.root = Path(root) if root is not None else cache_dir("cloaks")
        self.cached_only = cached_only
        self.used = used

    @classmethod
    def lookup(cls, root: str | Path | None = None, *, cached_only: bool = False) -> "CloakCache":
        """A cache that cloaks are only looked up in (dry runs): `root` ("" or None: $PUFACE_HOME/cloaks) is not made,
        as `CloakCache()` makes its default folder."""
        return cls(root or puface_home() / "cloaks", cached_only=cached_only)

    def attack_dir(self, attack: CloakAttack) -> Path:
        """The folder holding `attack`'s cloaks (and its config.json)."""
        digest = hashlib.sha256(_config_json(attack).encode()).hexdigest()[:12]
        return self.root / f"{attack.name}-{digest}"

    @staticmethod
    def key(attack: CloakAttack, content_digest: str, extra: str = "") -> str:
        """sha256 hex of (attack config JSON, the input's pixel digest, optional extra input digest)."""
        h = hashlib.sha256(_config_json(attack).encode())
        h.update(b"\n" + content_digest.encode())
        if extra:
            h.update(b"\n" + extra.encode())
        return h.hexdigest()

    def path_for(self, attack: CloakAttack, key: str) -> Path:
        return self.attack_dir(attack) / key[:2] / f"{key}.png"

    def _write_config(self, attack: CloakAttack) -> None:
        path = self.attack_dir(attack) / "config.json"
        if not path.is_file():
            atomic_write_bytes(path, (json.dumps(attack.config, indent=2, sort_keys=True) + "\n").encode())

    @staticmethod
    def _read(path: Path, shape: torch.Size) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            t = image_to_tensor(read_image(path))
        except ImageReadError:
            return None
        return t if t.shape == shape else None

    def cloak(
        self,
        attack: CloakAttack,
        paths: Sequence[str | Path],
        *,
        batch_size: int | None = None,
        progress: bool = True,
        size: int | tuple[int, int] | None = None,
        targets: Sequence[torch.Tensor] | None = None,
        label: str | None = None,
    ) -> tuple[torch.Tensor, list[int], list[ImageReadError]]:
        """Cloaked versions of the image files `paths`, from the cache or computed (and cached).

        Args:
            attack: any `CloakAttack` (its `config` is the cache key).
            batch_size: images per attack batch (default: the attack's).
            size: resize inputs to (H, W) (or a square side) before cloaking; needed when the files
                differ in size (as `puface.data.loading.load_images`).
            targets: targeted Fawkes only: per surrogate, (len(paths), D) target embeddings.
            label: the name shown on the progress bar (default: the attack's name); an experiment
                passes its attack label, so that two settings of one attack are told apart.
        Returns:
            (cloaked images (N, 3, H, W) in [0, 1] on the 8-bit grid, indices into `paths` of the N
            readable files, errors for the unreadable ones).
        Raises:
            CloakNotCachedError: with `cached_only`, when any readable file has no cached cloak.
        """
        from tqdm import tqdm

        from ..data.loading import load_images

        images, kept, errors = load_images(paths, size=size)
        if not kept:
            return images, kept, errors
        if min(images.shape[-2:]) < attack.min_side:  # all of one size: the first names them
            h, w = images.shape[-2:]
            raise PufaceError(f"{paths[kept[0]]}: {w}x{h} px ({len(kept)} images of this size); {attack.name} needs at "
                              f"least {attack.min_side}x{attack.min_side} px")
        kept_targets = None
        if targets is not None:
            kept_targets = [t[kept] if t.ndim == 2 else t.expand(len(paths), -1)[kept] for t in targets]
        keys = self._keys(attack, images, kept_targets)
        out, missing = self._lookup(attack, keys, images)
        if missing and self.cached_only:
            first = missing[0]
            raise CloakNotCachedError(attack.name, paths[kept[first]], self.path_for(attack, keys[first]), len(missing))
        if missing:
            self._write_config(attack)
            bs = batch_size or attack.batch_size
            bar = tqdm(
                total=len(missing),
                desc=f"cloaking ({label or attack.name})",
                unit="img",
                disable=not progress,
                dynamic_ncols=True,
            )
            try:
                for lo in range(0, len(missing), bs):
                    idx = missing[lo : lo + bs]
                    kw: dict[str, Any] = {}
                    if kept_targets is not None:
                        kw["targets"] = [t[idx] for t in kept_targets]
                    res = attack.run(images[idx], quantize_output=True, **kw)
                    self._store(attack, keys, idx, res.images, out)
                    bar.update(len(idx))
            finally:
                bar.close()
        return out, kept, errors

    def _keys(self, attack: CloakAttack, images: torch.Tensor,
              targets: Sequence[torch.Tensor] | None = None) -> list[str]:
        """The cache key of each image of `images` (N, 3, H, W) (and its row of each of `targets`)."""
        keys = []
        for i in range(len(images)):
            extra = ""
            if targets is not None:
                extra = hashlib.sha256(
                    b"".join(t[i].detach().cpu().float().numpy().tobytes() for t in targets)
                ).hexdigest()
            keys.append(self.key(attack, image_digest(images[i]), extra))
        return keys

    def uncached(self, attack: CloakAttack, paths: Sequence[str | Path], *,
                 size: int | tuple[int, int] | None = None) -> tuple[list[int], list[int]]:
        """Which image files of `paths` `cloak` would read from the cache and which it would make: (indices into
        `paths` of the readable files, those of them without a cached cloak). Decodes the inputs and looks up the
        cache files' names; reads no cloak, makes none, writes nothing (a dry run). With `cached_only`, a missing
        cloak raises `CloakNotCachedError` as `cloak` would."""
        from ..data.loading import load_images

        images, kept, _ = load_images(paths, size=size)
        if not kept:
            return kept, []
        missing = self.missing(attack, [paths[i] for i in kept], size=size, decoded=images)
        if missing and self.cached_only:
            first = missing[0]
            key = self._keys(attack, images[first:first + 1])[0]
            raise CloakNotCachedError(attack.name, paths[kept[first]], self.path_for(attack, key), len(missing))
        return kept, [kept[j] for j in missing]

    def cloak_group(
        self,
        attack: CloakAttack,
        images: torch.Tensor,
        labels: Sequence,
        *,
        reference=None,
        progress: bool = False,
    ) -> torch.Tensor:
        """A group attack's (`group.GroupCloakAttack`) cloaks of `images` (uint8 or float (N, 3, H, W)) as one
        group with `labels` and `reference`, from the cache or computed (and cached). Each file's key holds
        the attack config, the image's pixels and the group's digest (every image, label and the reference),
        so a cloak is reused only for the same group. Returns float [0, 1] images on the 8-bit grid."""
        x = to_float(images)
        keys = self._group_keys(attack, x, labels, reference)
        out, missing = self._lookup(attack, keys, x)
        if missing and self.cached_only:
            raise CloakNotCachedError(
                attack.name, f"group of {len(x)} images", self.path_for(attack, keys[missing[0]]), len(missing)
            )
        if missing:  # the whole group is cloaked together
            self._write_config(attack)
            res = attack.run(x, labels=list(labels), reference=reference, quantize_output=True, progress=progress)
            self._store(attack, keys, list(range(len(x))), res.images, out)
        return out

    def _group_keys(self, attack: CloakAttack, x: torch.Tensor, labels: Sequence, reference=None) -> list[str]:
        """The keys of a group's cloaks (`cloak_group`): each image's pixels with the group's digest."""
        from .group import group_digest

        digests = [image_digest(im) for im in x]
        gd = group_digest(digests, labels, reference)
        return [self.key(attack, d, gd) for d in digests]

    def _stored(self, attack: CloakAttack, key: str) -> bool:
        return self.path_for(attack, key).is_file()

    def missing(self, attack: CloakAttack, paths: Sequence[str | Path], *, size: int | tuple[int, int] | None = None,
                decoded: torch.Tensor | None = None) -> list[int]:
        """The indices of `paths` whose cloak by `attack` is not stored: those `cloak(attack, paths, size=size)` would
        make (keyed by the file's pixels as `cloak` decodes them; a stored file found unreadable then is made too, not
        counted here; an unreadable input is counted). decoded: the files' pixels already decoded at `size` ((N, 3,
        H, W), uint8 or float in [0, 1]): a file found under their key is not read again (their key is `cloak`'s when
        the file needed no resizing); only the others are. Reads no cloak, writes nothing (`puface reproduce
        --dry-run`)."""
        from ..data.loading import load_images

        todo = list(range(len(paths)))
        if decoded is not None:
            x = to_float(decoded)
            todo = [i for i in todo if not self._stored(attack, self.key(attack, image_digest(x[i])))]
        if not todo:
            return []
        images, kept, _ = load_images([paths[i] for i in todo], size=size)
        found = {kept[j] for j in range(len(kept)) if self._stored(attack, self.key(attack, image_digest(images[j])))}
        return [i for k, i in enumerate(todo) if k not in found]

    def missing_group(self, attack: CloakAttack, images: torch.Tensor, labels: Sequence, reference=None) -> list[int]:
        """The indices of `images` (a group, as `cloak_group` takes it) whose cloak is not stored; where any is
        missing `cloak_group` makes the whole group. Reads no cloak, writes nothing."""
        keys = self._group_keys(attack, to_float(images), labels, reference)
        return [i for i, k in enumerate(keys) if not self._stored(attack, k)]

    def _lookup(self, attack: CloakAttack, keys: Sequence[str], images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(float images with every cached cloak filled in, the indices of `keys` not in the cache)."""
        out = torch.empty_like(images)
        missing = []
        for i, k in enumerate(keys):
            path = self.path_for(attack, k)
            t = self._read(path, images[i].shape)
            if t is None:
                missing.append(i)
            else:
                out[i] = t
                if self.used is not None:
                    self.used.add(path)
        return out, missing

    def _store(self, attack: CloakAttack, keys: Sequence[str], idx: Sequence[int], cloaks: torch.Tensor,
               out: torch.Tensor) -> None:
        """Write `cloaks` (one per index of `idx`) under their keys and into `out[idx]`, exactly as a later
        read of the file returns them."""
        for j, i in enumerate(idx):
            pixels = tensor_to_image(cloaks[j])
            path = self.path_for(attack, keys[i])
            atomic_write_bytes(path, encode_image(pixels, "PNG"))
            if self.used is not None:
                self.used.add(path)
            out[i] = image_to_tensor(pixels)

    def cached_count(self, attack: CloakAttack) -> int:
        """How many cloaks of `attack` are stored."""
        d = self.attack_dir(attack)
        return sum(1 for _ in d.glob("*/*.png")) if d.is_dir() else 0
