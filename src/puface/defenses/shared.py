"""Remove a pattern that one person's photos share: universal masks (OPOM) and class-wise noise.

A universal cloak adds the *same* perturbation to every photo of a person (OPOM's per-identity mask,
class-wise unlearnable noise). On aligned face chips it sits on the same pixels in each photo, while a
photo's own fine texture differs from photo to photo. With h_k(x) = x - mean_kxk(x) (a k x k box high-pass),
over one person's n distinct photos x_1..x_n (float RGB in [0, 1], (n, 3, H, W), one size; exact duplicates
count once):

* the **shared-pattern score** T: at each pixel and channel, the t statistic of h_3 across the photos
  (mean / (standard deviation / sqrt(n))); T = the rms of t over the image, divided by its value for photos that
  share nothing (sqrt((n-1)/(n-3))), so about 1 then. A pattern on the same pixels of every photo makes t large
  wherever the photos' own texture is weaker than it (skin, background), whatever the texture elsewhere. A
  person's own fine face structure is shared a little too, and more so with more photos, so the test runs on
  `test_photos` (8) of them, chosen by content. Natural groups: the purifier's 265 training identities at most
  1.23 (re-encoded as JPEG q75 / q50: 1.29 / 1.36), the 126 LFW people with 10-40 photos 1.37, the johns 1.08-1.33,
  4 photos each next to its JPEG q75 copy 1.84; OPOM-masked groups 2.7-6.9 (on LFW chips 4.6-6.9), groups cloaked
  photo by photo (Fawkes, LowKey, sample-wise noise) at most 1.20 (docs/RESULTS.md 15.7);
* when T > `tau` (2.0) the estimate m = mean_i h_k(x_i) is subtracted from every photo (k = 9 by default: the
  estimate holds the mask's fine and middle frequencies; larger boxes take more of it but also more of the
  person's own face structure, which matters if a natural group is ever flagged: on natural groups forced through
  it, k = 9 keeps 36.8 dB and k = 17 30.9 dB).

Groups under `tau` pass unchanged, so natural photos keep every pixel, and so do photos cloaked one by one:
this removes what the purifier cannot see as a cloak of one photo, and it runs before the purifier
(`unmask+puface`). What it subtracts from a flagged group is mostly the mask but also the person's mean fine
face structure: pixels get only a little closer to the natural photos, while the face model's view of them gets
much closer (MobileFace cosine to the natural photo after the purifier: OPOM 0.63 -> 0.82).

The defense is **group-wise** (`groupwise = True`): a call is one person's photos. The evaluation protocol
calls it once per identity of the training set (and once on a protected user's cloaked photos); it is refused at
query time, where the defender does not know who a probe is. Groups of fewer than `min_photos` distinct photos
pass unchanged. `puface purify --unmask` takes each identity folder as one person (`folder_patterns`, then
`subtract_pattern` on each photo before the purifier).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.errors import ConfigError
from ..utils.images import to_float, to_uint8
from .base import Defense
from .registry import register

__all__ = [
    "SharedPatternRemoval",
    "shared_pattern_score",
    "highpass",
    "FolderPattern",
    "folder_patterns",
    "subtract_pattern",
]


def highpass(images: torch.Tensor, k: int) -> torch.Tensor:
    """x - (k x k box mean of x), edges replicated; (N, C, H, W) -> same. k odd >= 3."""
    pad = k // 2
    return images - F.avg_pool2d(F.pad(images, (pad, pad, pad, pad), mode="replicate"), k, stride=1)


def shared_pattern_score(images: torch.Tensor, k: int = 3) -> float:
    """T for one person's distinct photos (n >= 4, one size, float in [0, 1]): the rms over pixels of the t statistic
    of the k x k high-pass across the photos, over its value for unrelated photos. About 1 when nothing is shared;
    a mask on the same pixels of every photo raises it (module docstring)."""
    n = len(images)
    if n < 4:
        raise ValueError("shared_pattern_score needs at least 4 photos")
    h = highpass(images.float(), k)
    sd = h.std(0, unbiased=True).clamp_min(1e-4)  # a pixel equal in every photo (saturated, padding) counts as 0
    t2 = (h.mean(0) / (sd / n ** 0.5)).pow(2)
    return float((t2.mean() / ((n - 1) / (n - 3))).sqrt())


def _by_content(images: torch.Tensor) -> torch.Tensor:
    """The distinct photos (float in [0, 1] or uint8; exact duplicates once) in an order that depends only on their
    8-bit content, so a group's result does not depend on the order (or the form) it comes in."""
    q = images if images.dtype == torch.uint8 else to_uint8(images)
    keys = {hashlib.sha1(x.cpu().contiguous().numpy().tobytes()).hexdigest(): i for i, x in enumerate(q)}
    return images[[keys[key] for key in sorted(keys)]]


@register
class SharedPatternRemoval(Defense):
    """Subtract a pattern one person's photos share (universal masks); group-wise: a call = one person.

    Args: tau: T above which a group is taken as masked; k: box size (odd) of the subtracted estimate;
    min_photos: groups with fewer distinct photos pass unchanged; test_photos: T is measured on this many (by content).
    """

    kind = "unmask"
    groupwise = True

    def __init__(self, tau: float = 2.0, k: int = 9, min_photos: int = 4, test_photos: int = 8):
        if tau <= 0:
            raise ConfigError(f"unmask: tau must be > 0 (got {tau})")
        if k < 3 or k % 2 == 0:
            raise ConfigError(f"unmask: k must be an odd box size >= 3 (got {k})")
        if min_photos < 4 or test_photos < min_photos:
            raise ConfigError(f"unmask: need 4 <= min_photos <= test_photos (got {min_photos}, {test_photos})")
        super().__init__(tau=float(tau), k=int(k), min_photos=int(min_photos), test_photos=int(test_photos))
        self.last_score: float | None = None  # T of the last group (None: too few distinct photos)

    #: the defaults; the name lists the settings that differ (an adaptive attack's cloak cache key holds it)
    _DEFAULTS = {"tau": 2.0, "k": 9, "min_photos": 4, "test_photos": 8}
    _SHORT = {"tau": "t", "k": "k", "min_photos": "min", "test_photos": "test"}

    @property
    def name(self) -> str:
        return "-".join(
            ["unmask"] + [f"{self._SHORT[k]}{v:g}" for k, v in self.params.items() if v != self._DEFAULTS[k]]
        )

    def shared_pattern(self, images: torch.Tensor, chunk: int = 256) -> torch.Tensor | None:
        """The (1, 3, H, W) float pattern that would be subtracted from these photos of one person (float in [0, 1]
        or uint8, (N, 3, H, W)), or None when they share none (T <= tau) or are fewer than `min_photos`. The mean
        is taken in chunks of `chunk` photos (a large uint8 group stays small in memory)."""
        self.last_score = None
        ordered = _by_content(images)  # distinct photos, summed in one order whatever order the group comes in
        if len(ordered) < self.params["min_photos"]:
            return None
        self.last_score = shared_pattern_score(to_float(ordered[: self.params["test_photos"]]))
        if self.last_score <= self.params["tau"]:
            return None
        total = torch.zeros((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
        for i in range(0, len(ordered), chunk):
            total += highpass(to_float(ordered[i : i + chunk]), self.params["k"]).sum(0, keepdim=True).double()
        return (total / len(ordered)).float()

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        m = self.shared_pattern(images)
        return images.clone() if m is None else images - m.to(images)


@dataclass
class FolderPattern:
    """One identity folder's verdict: `folder` (relative to the input root), photos read, T (None: too few),
    and the (H, W, 3) float pattern subtracted from its photos of size `size` (None: none)."""

    folder: str
    photos: int
    score: float | None
    size: tuple[int, int] | None
    pattern: np.ndarray | None

    def row(self) -> dict:
        return {
            "folder": self.folder,
            "photos": self.photos,
            "score": "" if self.score is None else round(self.score, 4),
            "subtracted": int(self.pattern is not None),
        }


def folder_patterns(in_path: str | Path, defense: SharedPatternRemoval | None = None, *, progress: bool = True,
                    warn: Callable[[str], None] | None = None, max_photos: int = 4096) -> dict[str, FolderPattern]:
    """`unmask` over an identity-folder tree (root/<person>/<image>): each folder of images is one person. Reads
    each folder's first `max_photos` images by name (kept as uint8: 4,096 chips of 150 px take 276 MB; read as the
    purification reads them, so a file it refuses, one that cannot be read or an animated one, is left out and
    reported by the purification pass); those of the folder's most common size form
    the group, and the pattern found applies to all of the folder's photos of that size. Returns {folder relative to
    `in_path`: FolderPattern}."""
    from ..io.files import list_image_files
    from ..io.images import open_image_parts

    d = defense or SharedPatternRemoval()
    root = Path(in_path)
    by_folder: dict[Path, list[Path]] = {}
    for f in list_image_files(root) if root.is_dir() else [root]:
        by_folder.setdefault(f.parent, []).append(f)
    items: Iterable[tuple[Path, list[Path]]] = list(by_folder.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="unmask: looking for shared patterns", unit="folder", leave=False)
    out: dict[str, FolderPattern] = {}
    for folder, files in items:
        arrays = []
        for f in files[:max_photos]:
            try:  # read as the purification reads it (an animated file is refused there, so left out here)
                arrays.append(np.asarray(open_image_parts(f)[0], dtype=np.uint8))
            except Exception:  # noqa: BLE001 - reported by the purification pass
                continue
        rel = "." if folder == root else folder.relative_to(root).as_posix()
        sizes = Counter(a.shape[:2] for a in arrays)
        if not sizes:
            out[rel] = FolderPattern(rel, 0, None, None, None)
            continue
        size = sizes.most_common(1)[0][0]
        group = [a for a in arrays if a.shape[:2] == size]
        m = d.shared_pattern(torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2))
        pattern = None if m is None else m[0].permute(1, 2, 0).numpy()
        out[rel] = FolderPattern(rel, len(group), d.last_score, (int(size[0]), int(size[1])), pattern)
        if m is not None and warn is not None:
            warn(
                f"unmask: {rel}: {len(group)} photos share a pattern "
                f"(score {d.last_score:.2f} > {d.params['tau']}): subtracted"
            )
    return out


def subtract_pattern(image: np.ndarray, found: FolderPattern | None) -> np.ndarray:
    """uint8 (H, W, 3) image minus its folder's pattern (rounded, clipped); unchanged when the folder has none or
    the image is of another size."""
    if found is None or found.pattern is None or image.shape[:2] != found.size:
        return image
    return np.clip(np.rint(image.astype(np.float32) - 255.0 * found.pattern), 0, 255).astype(np.uint8)
