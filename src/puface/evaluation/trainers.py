"""Face-recognition trainers of the FaceCure protocol: `fit(train_images, labels)`, `predict(images)`.

* ``nn``: 1-nearest neighbour, cosine similarity, on a frozen embedder.
* ``linear``: standardised embeddings + multinomial logistic regression (scikit-learn) on a frozen
  embedder ("linear probe").
* ``e2e``: end-to-end fine-tuning of the embedder with a softmax head: class-balanced batches,
  random horizontal flips, a fixed number of steps. CPU-sized by default (a few hundred steps,
  batch 16); scale `steps` / `batch_size` up in a config on a GPU.

Images are float RGB (N, 3, H, W) in [0, 1] (uint8 0..255 is accepted too and converted per batch,
which keeps a large training set at a quarter of the memory). Labels are any hashable values
(identity names), or a 1-D torch tensor of them; `predict` returns the same kind of values (a tensor's as Python
numbers) as a numpy object array.

The frozen-embedder trainers also work on precomputed embeddings (`fit_embeddings`,
`predict_embeddings`), which lets the protocol embed each image once and reuse it across trainers,
defenses and users.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import FaceEmbedder
from ..utils.device import resolve_device
from ..utils.errors import ConfigError
from ..utils.images import to_float
from ..utils.labels import label_values
from ..utils.registry import Registry
from ..utils.specs import as_table
from .metrics import Labels

TRAINERS = Registry("trainer")


def _objects(values: Labels) -> np.ndarray:
    """A 1-D object array of `values` (np.asarray would make tuple labels a 2-D array)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _encode_labels(labels: Labels | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(classes sorted, integer codes) for a label sequence; a torch tensor's labels are its values (its elements,
    0-d tensors, hash by identity: every image would be a class of its own)."""
    arr = _objects(label_values(labels))
    classes = _objects(sorted(set(arr.tolist()), key=str))
    index = {c: i for i, c in enumerate(classes.tolist())}
    return classes, np.fromiter((index[x] for x in arr.tolist()), dtype=np.int64, count=len(arr))


class Trainer:
    """Base class. `config` is every setting (JSON-serialisable); `name` is the registry name."""

    name: str = ""
    uses_embeddings: bool = False  # fits on frozen embeddings (`fit_embeddings`), so the protocol can share them
    #: bumped when the trainer's fits change (an output folder's results fingerprint holds the versions above 1, so
    #: runs of an earlier version are not resumed beside new ones)
    algorithm: int = 1

    def __init__(self, embedder: FaceEmbedder, **params: Any):
        self.embedder = embedder
        self.params = params
        self.classes_: np.ndarray | None = None
        self.fit_seconds = 0.0

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "embedder": getattr(self.embedder, "name", type(self.embedder).__name__),
            **self.params,
        }

    def fit(self, images: torch.Tensor, labels: Labels) -> "Trainer":  # pragma: no cover
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _check_fit(self, n: int, labels: Labels) -> None:
        if n != len(labels):
            raise ValueError(f"{self.name}: {n} training images but {len(labels)} labels")
        if n == 0:
            raise ValueError(f"{self.name}: no training images")

    def _require_fitted(self) -> np.ndarray:
        """The fitted classes (RuntimeError before `fit`)."""
        if self.classes_ is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        return self.classes_


class EmbeddingTrainer(Trainer):
    """A classifier on frozen embeddings; subclasses implement `fit_embeddings` / `predict_embeddings`."""

    uses_embeddings = True

    def __init__(self, embedder: FaceEmbedder, batch_size: int = 64, **params: Any):
        if int(batch_size) < 1:
            raise ConfigError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        super().__init__(embedder, **params)
        self.batch_size = int(batch_size)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        out = [
            self.embedder.embed(to_float(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.embedder.embedding_dim)

    def fit(self, images: torch.Tensor, labels: Labels) -> "EmbeddingTrainer":
        self._check_fit(len(images), labels)
        return self.fit_embeddings(self._embed(images), labels)

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.predict_embeddings(self._embed(images))

    def fit_embeddings(self, embeddings: torch.Tensor, labels: Labels) -> "EmbeddingTrainer":  # pragma: no cover
        raise NotImplementedError

    def predict_embeddings(self, embeddings: torch.Tensor) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@TRAINERS.register("nn", doc="1-nearest neighbour, cosine, frozen embedder")
class NearestNeighbour(EmbeddingTrainer):
    """1-NN with cosine similarity between L2-normalised embeddings (FaceCure's "NN" tracker)."""

    name = "nn"

    def __init__(self, embedder: FaceEmbedder, batch_size: int = 64):
        super().__init__(embedder, batch_size=batch_size)

    def fit_embeddings(self, embeddings, labels):
        self._check_fit(len(embeddings), labels)
        t0 = time.perf_counter()
        self.classes_, self._codes = _encode_labels(labels)
        self._train = F.normalize(torch.as_tensor(embeddings).float(), dim=1)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def predict_embeddings(self, embeddings):
        classes = self._require_fitted()
        q = F.normalize(torch.as_tensor(embeddings).float(), dim=1)
        idx = []
        for i in range(0, len(q), 1024):
            idx.append((q[i : i + 1024] @ self._train.T).argmax(1))
        nearest = torch.cat(idx).numpy() if idx else np.zeros(0, dtype=np.int64)
        return classes[self._codes[nearest]]


@TRAINERS.register("linear", doc="standardised embeddings + logistic regression, frozen embedder")
class LinearProbe(EmbeddingTrainer):
    """Standardise each embedding dimension, then multinomial logistic regression (L2, `C`, lbfgs), started from
    zero on every fit: FaceCure's `make_pipeline(StandardScaler(), LogisticRegression())`, with `max_iter` 500.

    Every fit starts cold. lbfgs stops at `tol` (1e-4) well before the optimum of the strictly convex
    objective, so a fit started from another (the all-natural probe, as the protocol once did to save time)
    stays near its start: on the lfw grid it recognised cloaked users more often (Fawkes mid / dlib: ASR
    90.8% instead of 95.3%) and its answers depended on a fit the run itself never made.
    """

    name = "linear"
    algorithm = 2  # 2: every fit starts cold (1 started each protected user's fit from the all-natural probe)

    def __init__(
        self, embedder: FaceEmbedder, C: float = 1.0, max_iter: int = 500, tol: float = 1e-4, batch_size: int = 64
    ):
        if not C > 0:
            raise ConfigError(f"linear: C must be > 0, got {C}")
        super().__init__(embedder, batch_size=batch_size, C=float(C), max_iter=int(max_iter), tol=float(tol))

    def fit_embeddings(self, embeddings, labels):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self._check_fit(len(embeddings), labels)
        t0 = time.perf_counter()
        x = torch.as_tensor(embeddings).double().numpy()
        self.classes_, codes = _encode_labels(labels)
        self.scaler_ = StandardScaler().fit(x)
        xs = self.scaler_.transform(x)
        if len(self.classes_) == 1:  # degenerate but legal: everything is that one class
            self.model_ = None
        else:
            self.model_ = LogisticRegression(
                C=self.params["C"], max_iter=self.params["max_iter"], tol=self.params["tol"]
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.model_.fit(xs, codes)
            self.n_iter_ = int(np.max(self.model_.n_iter_))
        self.fit_seconds = time.perf_counter() - t0
        return self

    def predict_embeddings(self, embeddings):
        classes = self._require_fitted()
        if len(embeddings) == 0:  # scikit-learn refuses 0 samples; nn and e2e give an empty prediction too
            return classes[:0]
        if self.model_ is None:
            return classes[np.zeros(len(embeddings), dtype=np.int64)]
        xs = self.scaler_.transform(torch.as_tensor(embeddings).double().numpy())
        return classes[self.model_.predict(xs)]


def balanced_batch(
    by_class: Sequence[np.ndarray], batch_size: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced sample: each of `batch_size` slots draws a class uniformly, then one of its rows
    uniformly. `by_class[c]` lists the rows of class c. Returns (row indices, class codes)."""
    cls = torch.randint(len(by_class), (batch_size,), generator=generator).numpy()
    pick = torch.rand(batch_size, generator=generator).numpy()
    idx = np.array([by_class[c][min(int(r * len(by_class[c])), len(by_class[c]) - 1)] for c, r in zip(cls, pick)])
    return idx, cls


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of (N, 3, H, W) left-right with probability `p`."""
    flip = torch.rand(len(images), generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)


class CosineHead(nn.Module):
    """Softmax head on L2-normalised embeddings: logits = scale * cos(embedding, class weight)."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.scale = scale

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).T


@TRAINERS.register(
    "e2e", doc="fine-tune the embedder end to end with a softmax head", fast={"steps": 5, "batch_size": 4}
)
class EndToEnd(Trainer):
    """Fine-tune a copy of the embedder and a cosine-softmax head (FaceCure's "end-to-end" tracker).

    The head starts from each class's mean embedding ("weight imprinting"), so a few hundred CPU
    steps are enough to adapt; then every parameter trains with Adam (`lr` for the head,
    `backbone_lr` for the embedder) on class-balanced batches (a class drawn uniformly, then one of
    its images) with random horizontal flips. Prediction is the head's argmax on clean images.

    Args:
        steps: optimiser steps (default 200: about 1 min with dlib-resnet29 on 2 CPU cores).
        batch_size: images per step.
        lr, backbone_lr: Adam learning rates of the head and the embedder.
        scale: softmax temperature of the cosine head.
        flip: random horizontal flips.
        seed: seeds batch sampling and flips (in a protocol: the run's seed, unless the entry sets one).
        device: "cpu", "cuda", ...; None picks CUDA when available.
    """

    name = "e2e"
    algorithm = 2  # 2: a protocol seeds the fits with the run's seed (1: seed 0 for every draw; seed-0 runs unchanged)

    def __init__(
        self,
        embedder: FaceEmbedder,
        steps: int = 200,
        batch_size: int = 16,
        lr: float = 1e-2,
        backbone_lr: float = 1e-5,
        scale: float = 16.0,
        flip: bool = True,
        seed: int = 0,
        device: str | None = None,
        progress: bool = False,
    ):
        if steps < 0 or batch_size < 1:
            raise ConfigError(f"e2e: steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
        super().__init__(
            embedder, steps=int(steps), batch_size=int(batch_size), lr=float(lr), backbone_lr=float(backbone_lr),
            scale=float(scale), flip=bool(flip), seed=int(seed),
        )
        self.device = resolve_device(device)
        self.progress = progress
        self.losses: list[float] = []

    def _forward_embed(self, model: FaceEmbedder, images: torch.Tensor) -> torch.Tensor:
        return model(to_float(images).to(self.device))

    def fit(self, images: torch.Tensor, labels: Labels) -> "EndToEnd":
        self._check_fit(len(images), labels)
        t0 = time.perf_counter()
        p = self.params
        self.classes_, codes = _encode_labels(labels)
        model = copy.deepcopy(self.embedder).to(self.device)
        for prm in model.parameters():
            prm.requires_grad_(True)
        # Imprint the head with class means of the starting embeddings.
        with torch.no_grad():
            model.eval()
            emb = torch.cat([self._forward_embed(model, images[i : i + 64]).cpu() for i in range(0, len(images), 64)])
            codes_t = torch.from_numpy(codes)
            means = torch.zeros(len(self.classes_), emb.shape[1]).index_add_(0, codes_t, emb)
        head = CosineHead(F.normalize(means, dim=1), p["scale"]).to(self.device)
        model.train()
        opt = torch.optim.Adam(
            [{"params": head.parameters(), "lr": p["lr"]}, {"params": model.parameters(), "lr": p["backbone_lr"]}]
        )
        g = torch.Generator().manual_seed(p["seed"])
        by_class = [np.flatnonzero(codes == c) for c in range(len(self.classes_))]
        self.losses = []
        steps: Iterable[int] = range(p["steps"])
        if self.progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="e2e fine-tuning", unit="step", leave=False)
        for _ in steps:
            idx, cls = balanced_batch(by_class, p["batch_size"], g)
            x = to_float(images[torch.from_numpy(idx)])
            if p["flip"]:
                x = random_hflip(x, g)
            y = torch.from_numpy(cls).to(self.device)
            loss = F.cross_entropy(head(model(x.to(self.device))), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.losses.append(loss.item())
        model.eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        self.model_, self.head_ = model, head.eval()
        self.fit_seconds = time.perf_counter() - t0
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        classes = self._require_fitted()
        out = []
        for i in range(0, len(images), 64):
            out.append(self.head_(self._forward_embed(self.model_, images[i : i + 64])).argmax(1).cpu())
        idx = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
        return classes[idx]


def list_trainers() -> list[str]:
    """Names of the built-in trainers."""
    return TRAINERS.names()


def create_trainer(name: "str | dict", embedder: FaceEmbedder, **params: Any) -> Trainer:
    """A trainer by name, on `embedder`, e.g. `create_trainer("linear", emb, C=0.5)`, or from a spec string or
    table (`puface.utils.specs`: `create_trainer("e2e:steps=300", emb)`, as `--trainer` takes; a table's ``label``
    is ignored); a wrong option raises `ConfigError` listing the accepted ones."""
    table = {**as_table(name if not isinstance(name, str) or ":" in name else {"name": name}, "trainer"), **params}
    table.pop("label", None)
    return TRAINERS.create(str(table.pop("name")), embedder, **table)


def check_trainer(name: str, **params: Any) -> None:
    """Refuse an unknown trainer or an option it does not take (as `create_trainer` would), before any
    work: nothing is built."""
    TRAINERS.check(name, None, **params)


__all__ = [
    "check_trainer", "Trainer", "EmbeddingTrainer", "NearestNeighbour", "LinearProbe", "EndToEnd", "TRAINERS",
    "create_trainer", "list_trainers", "balanced_batch", "random_hflip",
]
