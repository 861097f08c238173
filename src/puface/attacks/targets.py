"""Target identities for targeted Fawkes (the paper's and v0.3's behaviour).

The Fawkes paper picks, for a user U with images X_U, the candidate identity T whose embedding
centroid C_T is farthest from the user: T = argmax_k min_{x in X_U} ||Phi(x) - C_k||_2, and then
moves each of U's images towards T's features. With several surrogates the distances are summed
over them. v0.3 drew T at random among the 20 farthest candidates; here it is the farthest one
(deterministic), as the paper states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..io.images import read_image
from ..models.base import FaceEmbedder
from ..utils.errors import PufaceError
from ..utils.images import image_to_tensor

__all__ = ["TargetPool", "embed_files"]


def embed_files(
    paths: Sequence[Path],
    embedders: Sequence[FaceEmbedder],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "embedding",
) -> tuple[list[torch.Tensor], list[int], list[str]]:
    """Embeddings of image files of any sizes, one (M, D) tensor per embedder (CPU).

    Returns (embeddings, kept indices into `paths`, error lines for unreadable files).
    """
    from tqdm import tqdm

    from ..utils.errors import ImageReadError

    kept: list[int] = []
    errors: list[str] = []
    out: list[list[torch.Tensor]] = [[] for _ in embedders]
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    for lo in range(0, len(paths), batch_size):
        chunk: list[tuple[int, torch.Tensor]] = []
        for i in range(lo, min(lo + batch_size, len(paths))):
            try:
                chunk.append((i, image_to_tensor(read_image(paths[i]))))
            except ImageReadError as e:
                errors.append(str(e))
        groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for i, t in chunk:
            groups.setdefault(tuple(t.shape), []).append((i, t))
        for items in groups.values():
            x = torch.stack([t for _, t in items])
            for k, emb in enumerate(embedders):
                dev = next(emb.parameters(), torch.empty(0)).device
                with torch.no_grad():
                    out[k].append(emb(x.to(dev)).cpu())
            kept.extend(i for i, _ in items)
        bar.update(min(batch_size, len(paths) - lo))
    bar.close()
    order = sorted(range(len(kept)), key=lambda j: kept[j])
    embs = [torch.cat(o)[order] if o else torch.empty(0, e.embedding_dim) for o, e in zip(out, embedders)]
    return embs, [kept[j] for j in order], errors


@dataclass
class TargetPool:
    """Candidate target identities: `identities` (K,) and, per surrogate, their centroids (K, D).

    A centroid is the mean of the identity's L2-normalised embeddings (not re-normalised; Fawkes'
    feature loss divides by the target's norm).
    """

    identities: list[str]
    centroids: list[torch.Tensor]

    @classmethod
    def from_embeddings(cls, labels: Sequence[str], embeddings: Sequence[torch.Tensor]) -> "TargetPool":
        """From per-image `labels` (M,) and per-surrogate embeddings (M, D)."""
        ids = sorted(set(labels))
        if not ids:
            raise PufaceError("the target pool holds no images")
        idx = {name: [i for i, label in enumerate(labels) if label == name] for name in ids}
        cents = [torch.stack([e[idx[name]].mean(dim=0) for name in ids]) for e in embeddings]
        return cls(ids, cents)

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        embedders: Sequence[FaceEmbedder],
        *,
        max_per_identity: int | None = 20,
        seed: int = 0,
        progress: bool = True,
    ) -> "TargetPool":
        """Centroids of every identity folder under `root` (ROOT/<identity>/<image>), at most
        `max_per_identity` images each (a seeded choice)."""
        from ..data.layout import scan_identities

        ds = scan_identities(root, max_per_identity=max_per_identity, seed=seed)
        paths = [im.path for im in ds.images]
        embs, kept, errors = embed_files(paths, embedders, progress=progress, desc="target pool")
        if not kept:
            raise PufaceError(f"{root}: no readable images in the target pool" + (f" ({errors[0]})" if errors else ""))
        labels = [ds.images[i].identity for i in kept]
        return cls.from_embeddings(labels, embs)

    def farthest(self, user_embeddings: Sequence[torch.Tensor], exclude: Sequence[str] = ()) -> str:
        """The identity whose centroid is farthest from the user's closest image, distances summed
        over surrogates. `user_embeddings`: per surrogate (M, D) for the user's M images."""
        allowed = [k for k, name in enumerate(self.identities) if name not in set(exclude)]
        if not allowed:
            raise PufaceError("the target pool holds no identity other than the user's")
        score = None
        for u, c in zip(user_embeddings, self.centroids):
            d = torch.cdist(u.float(), c[allowed].float())  # (M, K')
            score = d if score is None else score + d
        assert score is not None
        best = int(score.min(dim=0).values.argmax())
        return self.identities[allowed[best]]

    def targets_for(self, identity: str) -> list[torch.Tensor]:
        """Per-surrogate target embeddings (D,) of `identity`: its centroids."""
        k = self.identities.index(identity)
        return [c[k] for c in self.centroids]
