"""Training data for the purifier: (natural, cloaked) image pairs from identity folders.

Identities are split three ways, seeded (`purifier_identities`):

* held out: every identity with >= `heldout_min_images` images (the candidates an FR evaluation
  draws protected users and its classifier from) plus a seeded share `heldout_fraction` of the rest.
  The purifier never sees them; their names go into the checkpoint's data summary.
* validation: a seeded share `val_fraction` of the remaining identities (model selection).
* training: the rest.

Cloaked counterparts come from the project's own attacks through the cloak cache
(`puface.attacks.cache.CloakCache`: each cloaked image is cached as a lossless PNG keyed by the
attack's config and the image's content, so reruns reuse them), or from a folder of already cloaked
images that mirrors the natural tree (e.g. the output of `puface cloak` or of the original Fawkes tool).
Pairs are kept in memory as uint8 tensors (150x150 RGB: 67.5 kB per image).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..attacks import attack_label, create_attack
from ..attacks.cache import CloakCache
from ..attacks.folder import FolderCloaks
from ..data.layout import FaceImage, scan_identities
from ..data.loading import load_images
from ..data.split import split_identities
from ..utils.errors import ConfigError, MissingDependencyError, PufaceError
from ..utils.fingerprint import content_hash
from ..utils.images import to_float, to_uint8
from ..utils.seeding import stable_seed

CloakFn = Callable[[dict, list[Path]], tuple[torch.Tensor, list[int], list]]


@dataclass(frozen=True)
class IdentitySplit:
    """Disjoint identity groups (sorted names) for purifier training, validation and held out."""

    train: list[str]
    val: list[str]
    heldout: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train_identities": self.train, "val_identities": self.val, "heldout_identities": self.heldout}


def purifier_identities(counts: dict[str, int], *, heldout_min_images: int | None = 10, heldout_fraction: float = 0.0,
                        val_fraction: float = 0.1, seed: int = 0) -> IdentitySplit:
    """Split identities (name -> image count) into purifier train / validation / held-out groups.

    Every identity with >= `heldout_min_images` images is held out (None: none by count), then a
    seeded `heldout_fraction` of the others, then `val_fraction` of what is left goes to validation.
    The same names, seed and fractions always give the same groups (tags "purifier-heldout",
    "purifier-val" seed the shuffles).
    """
    for name, v in (("heldout_fraction", heldout_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {v}")
    names = sorted(counts)
    big = [n for n in names if heldout_min_images is not None and counts[n] >= heldout_min_images]
    small = [n for n in names if n not in set(big)]
    extra_heldout, rest = split_identities(small, heldout_fraction, seed, tag="purifier-heldout") if small else ([], [])
    val, train = split_identities(rest, val_fraction, seed, tag="purifier-val") if rest else ([], [])
    if not train:
        # identities with >= heldout_min_images are held out: fewer are held out with a HIGHER minimum
        above = max(counts.values(), default=0) + 1
        raise PufaceError(
            f"no identities left for purifier training ({len(names)} identities: {len(big)} held out with "
            f">= {heldout_min_images} images each, {len(extra_heldout)} by data.heldout_fraction, "
            f"{len(val)} for validation); hold out fewer by count with a higher data.heldout_min_images "
            f"(--set data.heldout_min_images={above}: none) or lower data.heldout_fraction / "
            "data.val_fraction"
        )
    return IdentitySplit(sorted(train), sorted(val), sorted(big + extra_heldout))


def folder_identity_split(root: str | Path, *, seed: int = 0, heldout_min_images: int | None = 10,
                          heldout_fraction: float = 0.0, val_fraction: float = 0.1,
                          max_per_identity: int | None = None) -> IdentitySplit:
    """`purifier_identities` of the identity folders under `root`, counting each identity's images after
    the seeded `max_per_identity` cap (as purifier training does)."""
    ds = scan_identities(root, max_per_identity=max_per_identity, seed=seed)
    counts = {k: len(v) for k, v in ds.by_identity().items()}
    return purifier_identities(counts, heldout_min_images=heldout_min_images, heldout_fraction=heldout_fraction,
                               val_fraction=val_fraction, seed=seed)


@dataclass
class PairSet:
    """(natural, cloaked) pairs as uint8 (N, 3, H, W) tensors, with each pair's attack label and file."""

    natural: torch.Tensor
    cloaked: torch.Tensor
    attack: torch.Tensor  # (N,) int64 index into `attack_names`
    attack_names: list[str]
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.natural.shape[0])

    def summary(self) -> dict[str, Any]:
        counts = (
            torch.bincount(self.attack, minlength=len(self.attack_names)).tolist()
            if len(self)
            else [0] * len(self.attack_names)
        )
        return {"pairs": len(self), "per_attack": dict(zip(self.attack_names, counts)),
                "image_size": list(self.natural.shape[-2:]) if len(self) else []}

    def content(self) -> dict[str, str]:
        """The pairs' pixels, in their order: `content_hash` of the natural and of the cloaked uint8 set (a resume
        compares them, so an image edited in place or other cloaks of the same images are other data)."""
        return {"natural": content_hash(self.natural), "cloaked": content_hash(self.cloaked)}

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "PairSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return PairSet(self.natural[idx], self.cloaked[idx], self.attack[idx], self.attack_names,
                       [self.files[i] for i in idx.tolist()] if self.files else [])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float [0, 1] (natural, cloaked) for the given rows."""
        return to_float(self.natural[idx]), to_float(self.cloaked[idx])


def choose_images(images: Sequence[FaceImage], count: int | str | None, seed: int, tag: str) -> list[FaceImage]:
    """A seeded choice of `count` images ("all"/None/0: every image), sorted. Prefix-stable: the choice
    for n images is contained in the choice for n + m (same seed and tag)."""
    items = sorted(images)
    if count in (None, "all", 0) or (isinstance(count, int) and count >= len(items)):
        return items
    if not isinstance(count, int) or count < 0:
        raise ConfigError(f"attack 'images' must be a positive integer or \"all\", got {count!r}")
    rng = random.Random(stable_seed("purifier-pairs", seed, tag))
    rng.shuffle(items)  # a seeded order, then a prefix: asking for more images keeps the first ones (cache reuse)
    return sorted(items[:count])


def cloak_with_cache(cache_root: str | Path | None = None, device: str | None = None, batch_size: int = 8,
                     progress: bool = True, cached_only: bool = False, used: set[Path] | None = None) -> CloakFn:
    """A cloak function backed by the project's attacks and `CloakCache` (generated once, then reused).
    cached_only: never make a cloak; a missing one raises `CloakNotCachedError`. used: a set that
    collects every cache file read or written (see `CloakCache`)."""

    def cloak(spec: dict, paths: list[Path]):
        atk = create_attack({k: v for k, v in spec.items() if k != "images"}, device=device)
        return CloakCache(root=cache_root, cached_only=cached_only, used=used).cloak(
            atk, paths, batch_size=batch_size, progress=progress
        )

    return cloak


def folder_cloak_paths(spec: dict, root: Path, paths: Sequence[Path]) -> tuple[list[Path], list[int]]:
    """(the cloaked files of `paths` in the folder a {"name": "folder", "root": DIR} spec names, mirroring `root`
    (`FolderCloaks` names); the indices of `paths` that have one). A `PufaceError` when none has one."""
    folder = FolderCloaks(spec["root"], spec.get("patterns"))
    found, kept = [], []
    for i, p in enumerate(paths):
        hit = folder.find(p, root)
        if hit is not None:
            found.append(hit)
            kept.append(i)
    if not found:
        raise PufaceError(
            f"{folder.root}: no cloaked images found that mirror {root} (expected {folder.root}/<identity>/<file>)"
        )
    return found, kept


def _cloaked_from_folder(spec: dict, root: Path, paths: list[Path]) -> tuple[torch.Tensor, list[int], list]:
    """Cloaked counterparts of `paths` from a folder mirroring `root` (`folder_cloak_paths`); files
    without one are left out."""
    found, kept = folder_cloak_paths(spec, root, paths)
    images, ok, errs = load_images(found)
    return images, [kept[j] for j in ok], errs


def _check_specs(attacks: Sequence[dict]) -> list[str]:
    """The labels of a purifier config's attack tables once each is well formed (a name, labels unique)."""
    if not attacks:
        raise ConfigError("the purifier config lists no attacks ([[attacks]] tables)")
    for a, spec in enumerate(attacks):
        if "folder" in spec:
            raise ConfigError(
                f"attack #{a + 1}: write cloaks read from a folder as name = \"folder\", root = \"DIR\": {spec}"
            )
        if "name" not in spec:
            raise ConfigError(
                f"attack #{a + 1} needs name = \"fawkes\"/\"lowkey\" or name = \"folder\", root = \"DIR\": {spec}"
            )
    names = [attack_label(s) for s in attacks]
    if len(set(names)) != len(names):
        raise ConfigError(f"attack labels must be unique, got {names} (add label = \"...\" to tell them apart)")
    return names


def check_attacks(attacks: Sequence[dict], device: str | None = None, where: str = "") -> dict[str, Any]:
    """Refuse a bad attack table of a purifier (or detector) config (no name, a repeated label, an unknown attack,
    option or value) before any cloak is made: each attack is built once (its surrogates loaded), none is run.
    `where`: the config file (`config_where`), named first in the error with the entry, as experiment configs are.
    Returns label -> the attack built (a dry run looks its cloaks up), none for cloaks read from a folder."""
    try:
        names = _check_specs(attacks)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    built: dict[str, Any] = {}
    for label, spec in zip(names, attacks):
        if spec["name"] == "folder":
            continue
        try:
            built[label] = create_attack({k: v for k, v in spec.items() if k != "images"}, device=device)
        except MissingDependencyError:
            raise
        except PufaceError as e:
            raise ConfigError(f"{where} [[attacks]] {label!r}: {e}" if where else f"attack {label!r}: {e}") from None
    return built


def build_pairs(root: str | Path, identities: Sequence[str], attacks: Sequence[dict], *, seed: int = 0,
                max_per_identity: int | None = None, cloak_fn: CloakFn | None = None, tag: str = "train",
                log: Callable[[str], None] = print) -> PairSet:
    """Pairs (natural, cloaked) for `identities` under `root`, one set per attack spec.

    Each spec is a dict: {"name": "fawkes", "mode": "high", "images": 200, ...attack knobs} (cloaked
    with the project's attacks via `cloak_fn`, default `cloak_with_cache()`), or {"name": "folder",
    "root": DIR, "images": ...} (already cloaked images mirroring `root`). "images" picks a seeded subset of the
    identities' images per attack (default: all). Files that cannot be read or cloaked are reported
    and skipped. All images must have one size (the cloaks keep their input's size).
    """
    root = Path(root)
    names = _check_specs(attacks)
    ds = scan_identities(root, identities=identities, max_per_identity=max_per_identity, seed=seed)
    cloak_fn = cloak_fn or cloak_with_cache()
    nat_parts: list[torch.Tensor] = []
    clk_parts: list[torch.Tensor] = []
    lab_parts: list[torch.Tensor] = []
    files: list[str] = []
    for a, spec in enumerate(attacks):
        chosen = choose_images(ds.images, spec.get("images"), seed, f"{tag}:{names[a]}")
        paths = [im.path for im in chosen]
        log(f"{tag}: {names[a]}: {len(paths)} images of {len(ds.by_identity())} identities")
        if spec["name"] == "folder":
            cloaked, kept, errors = _cloaked_from_folder(spec, root, paths)
        else:
            cloaked, kept, errors = cloak_fn(dict(spec), paths)
        for e in errors:
            log(f"warning: skipped {getattr(e, 'path', e)}: {getattr(e, 'reason', e)}")
        if not kept:
            continue
        natural, ok, nerr = load_images([paths[i] for i in kept])
        for e in nerr:
            log(f"warning: skipped {e.path}: {e.reason}")
        cloaked = cloaked[torch.as_tensor(ok, dtype=torch.long)] if len(ok) != len(kept) else cloaked
        if natural.shape != cloaked.shape:
            raise PufaceError(f"{names[a]}: cloaked images {tuple(cloaked.shape[1:])} differ in size from the natural "
                              f"ones {tuple(natural.shape[1:])}; use chips of one size")
        nat_parts.append(to_uint8(natural))
        clk_parts.append(to_uint8(cloaked))
        lab_parts.append(torch.full((len(ok),), a, dtype=torch.long))
        files.extend(str(paths[kept[j]].relative_to(root)) for j in ok)
    if not nat_parts:
        raise PufaceError(f"{root}: no (natural, cloaked) pairs could be made for {tag}")
    sizes = {tuple(t.shape[1:]) for t in nat_parts}
    if len(sizes) > 1:
        raise PufaceError(f"{root}: images differ in size between attacks ({sorted(sizes)}); use chips of one size")
    return PairSet(torch.cat(nat_parts), torch.cat(clk_parts), torch.cat(lab_parts), names, files)
