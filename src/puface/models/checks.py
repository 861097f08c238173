"""Checks of a face model's behaviour (`puface models info`): what a user's own model must do to serve as a
surrogate or a victim, and how well it tells people apart on a folder of chips."""

from __future__ import annotations

from pathlib import Path

import torch

from ..utils.errors import PufaceError
from .base import FaceEmbedder

__all__ = ["check_embedder", "identification"]


def check_embedder(emb: FaceEmbedder, n: int = 4, size: int = 150, seed: int = 0) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for `n` seeded random (n, 3, size, size) images in [0, 1]: the output shape is
    (n, embedding_dim), embeddings are unit-norm, two calls agree, an image's embedding does not depend on the rest
    of the batch, and the gradient of a feature distance reaches the input (finite, non-zero)."""
    device = next((b.device for b in emb.buffers()), torch.device("cpu"))
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    out = []
    with torch.no_grad():
        e = emb(x)
        again = emb(x)
        alone = emb(x[:1])
    out.append(
        (
            "output shape",
            tuple(e.shape) == (n, emb.embedding_dim),
            f"{tuple(e.shape)}, expected ({n}, {emb.embedding_dim})",
        )
    )
    norms = e.norm(dim=1)
    out.append(("unit norm", bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4)),
                f"norms {norms.min().item():.5f}..{norms.max().item():.5f}"))
    d = (e - again).abs().max().item()
    out.append(("deterministic", d <= 1e-5, f"largest difference between two calls {d:.2e}"))
    d = (e[:1] - alone).abs().max().item()
    out.append(("batch-independent", d <= 1e-4, f"first image alone vs in a batch of {n}: largest difference {d:.2e}"))
    xg = x.clone().requires_grad_(True)
    loss = (emb(xg) - e.detach().flip(0)).pow(2).sum()
    try:
        loss.backward()
        g = xg.grad
    except RuntimeError:  # the graph is cut inside the model: no gradient at all
        g = None
    ok = g is not None and bool(torch.isfinite(g).all()) and g.abs().sum().item() > 0
    out.append(("gradients", ok, "reach the input" if ok else "none, zero or not finite (attacks cannot use it)"))
    return out


def identification(emb: FaceEmbedder, root: str | Path, per_identity: int = 10, seed: int = 0,
                   batch_size: int = 32) -> dict:
    """Leave-one-out 1-NN identification on `root/<identity>/<image>` (at most `per_identity` photos each, a seeded
    choice; people with one photo are left out): {"images", "identities", "accuracy", "chance" (the share of a
    photo's neighbours that are the same person, on average), "same", "other" (mean cosine of same- and
    other-identity pairs)}."""
    from ..data.layout import scan_identities
    from ..data.loading import load_images

    ds = scan_identities(root, min_images=2, max_per_identity=per_identity, seed=seed)
    if len(ds.identities) < 2:
        raise PufaceError(f"{root}: needs at least 2 people with 2 or more photos each (found {len(ds.identities)})")
    x, kept, errors = load_images([im.path for im in ds.images], size=150)
    labels = [im.identity for im in ds.images]
    if errors:
        bad = {str(e.path) for e in errors}
        labels = [lab for im, lab in zip(ds.images, labels) if str(im.path) not in bad]
    e = emb.embed(x, batch_size)
    sim = e @ e.T
    same = torch.tensor([[a == b for b in labels] for a in labels])
    eye = torch.eye(len(labels), dtype=torch.bool)
    nn_idx = sim.masked_fill(eye, float("-inf")).argmax(1)
    acc = float(torch.tensor([labels[int(j)] == labels[i] for i, j in enumerate(nn_idx)]).float().mean())
    chance = float(((same & ~eye).sum(1).float() / (len(labels) - 1)).mean())
    return {"images": len(labels), "identities": len(set(labels)), "accuracy": acc, "chance": chance,
            "same": float(sim[same & ~eye].mean()), "other": float(sim[~same].mean())}
