"""Identity folders: `root/<identity>/<image>` and FaceScrub's `download/<identity>/face/<image>`.

Extensions jpg/jpeg/png/bmp/webp in any case. Hidden files and folders, and puface's own temporary
files, are ignored. A folder given as `exclude` (e.g. an output folder inside the input) is never read.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..io.files import is_visible, is_within
from ..io.images import is_image_file
from ..utils.errors import PufaceError
from ..utils.seeding import stable_seed


@dataclass(frozen=True, order=True)
class FaceImage:
    """One labelled image file."""

    identity: str
    path: Path


@dataclass
class FaceDataset:
    """A labelled set of face image files, sorted by (identity, path)."""

    root: Path
    layout: str  # "identity" or "facescrub"
    images: list[FaceImage] = field(default_factory=list)

    @property
    def identities(self) -> list[str]:
        return sorted({im.identity for im in self.images})

    def by_identity(self) -> dict[str, list[FaceImage]]:
        groups: dict[str, list[FaceImage]] = defaultdict(list)
        for im in self.images:
            groups[im.identity].append(im)
        return dict(sorted(groups.items()))

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, identities: Iterable[str]) -> "FaceDataset":
        keep = set(identities)
        return FaceDataset(self.root, self.layout, [im for im in self.images if im.identity in keep])


def _identity_images(folder: Path) -> tuple[list[Path], str]:
    """Images of one identity folder: directly inside it, or in its FaceScrub `face/` sub-folder."""
    direct = sorted(p for p in folder.iterdir() if is_visible(p) and p.is_file() and is_image_file(p))
    face = folder / "face"
    if face.is_dir():
        nested = sorted(p for p in face.iterdir() if is_visible(p) and p.is_file() and is_image_file(p))
        if nested and not direct:
            return nested, "facescrub"
    return direct, "identity"


def _holder_of_identities(root: Path) -> Path | None:
    """The first sub-folder of `root` that is itself a tree of identity folders (ROOT/<set>/<identity>/<image>)."""
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and is_visible(p)):
        if any(_identity_images(d)[0] for d in sub.iterdir() if d.is_dir() and is_visible(d)):
            return sub
    return None


def scan_identities(
    root: str | Path,
    *,
    min_images: int = 1,
    max_per_identity: int | None = None,
    identities: Iterable[str] | None = None,
    seed: int = 0,
    exclude: Iterable[Path] = (),
) -> FaceDataset:
    """Read an identity-folder tree into a `FaceDataset`.

    Args:
        root: `root/<identity>/<image>`, or FaceScrub's `download` folder (`<identity>/face/<image>`).
        min_images: drop identities with fewer images.
        max_per_identity: keep at most this many images per identity, a seeded random choice
            (the same for the same seed, identity and files).
        identities: keep only these identity names.
        seed: seed for the cap's random choice.
        exclude: folders never read (an output folder inside `root`).
    """
    root = Path(root)
    if not root.exists():
        raise PufaceError(f"{root}: no such folder")
    if not root.is_dir():
        raise PufaceError(f"{root}: not a folder (expected ROOT/<identity>/<image>)")
    excl = [Path(e) for e in exclude]
    wanted = set(identities) if identities is not None else None
    images: list[FaceImage] = []
    layouts: set[str] = set()
    sizes: list[int] = []  # images per identity folder that has any, before the filters
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and is_visible(p)):
        if any(is_within(folder, e) for e in excl):
            continue
        name = folder.name
        if wanted is not None and name not in wanted:
            continue
        files, layout = _identity_images(folder)
        if files:
            sizes.append(len(files))
        if len(files) < max(min_images, 1):
            continue
        if max_per_identity is not None and len(files) > max_per_identity:
            rng = random.Random(stable_seed("cap", seed, name))
            files = sorted(rng.sample(files, max_per_identity))
        layouts.add(layout)
        images.extend(FaceImage(name, p) for p in files)
    if wanted is not None:
        missing = wanted - {im.identity for im in images}
        if missing:
            raise PufaceError(f"{root}: identities not found (or with too few images): {', '.join(sorted(missing))}")
    if not images and sizes:
        filters = f"min_images={min_images}" + (
            f", max_per_identity={max_per_identity}" if max_per_identity is not None else ""
        )
        raise PufaceError(f"{root}: {len(sizes)} identity folder(s) with images found (the largest has {max(sizes)}), "
                          f"but none passes the filter ({filters})")
    if not images:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
        hint = (
            " (images lie directly in it: put each person's images in a sub-folder named after them)" if loose else ""
        )
        deeper = None if loose else _holder_of_identities(root)
        if deeper is not None:
            hint = f" (identity folders lie one level down, in {deeper}: give that folder)"
        raise PufaceError(f"{root}: no identity folders with images found{hint}")
    layout = "facescrub" if layouts == {"facescrub"} else "identity"
    return FaceDataset(root, layout, sorted(images))
