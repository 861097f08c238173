"""The evaluation protocols, run for many protected users, attacks, defenses, victims and trainers:
FaceCure's training-time protocol (`Protocol`, "training", below) and the query-time one
(`QueryProtocol`, "query": clean gallery, cloaked probes); `PROTOCOLS` maps names to classes.

Training-time, for one seed (`data.EvaluationData`):

1. every identity is split 70/30 (seeded per identity, `puface.data.split`);
2. for each protected user, the user's *training* images are replaced by their cloaked versions
   (the attack runs once per user; cloaks come from the cloak cache when the attack supports it);
3. the defense is applied to ALL training images, cloaked and natural alike (the model trainer
   cannot tell them apart); a `Views` defense keeps several views of each image (e.g. the photo and
   its purified version) and the FR model trains on all of them, labels repeated;
4. an FR model (a trainer on a victim embedder) is trained on that set and tested on the clean,
   untouched test images of every identity;
5. ASR = share of the user's test images not classified as the user; normal accuracy = accuracy
   on the other identities' test images (`metrics.protocol_scores`).

Work is shared wherever the result cannot differ: the clean test set is embedded once per victim;
the natural training images are defended and embedded once per defense (only the protected user's
rows change from one user to the next; every fit starts afresh, so a run's scores depend on its own
training set alone); defended images of expensive defenses (the purifier) and all embeddings
are cached by content (`cache.ContentCache`), so reruns and other experiments reuse them. Images are
held as uint8, as they would be stored on disk after each step.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attacks.base import CloakAttack
from ..attacks.group import Reference
from ..attacks.cache import CloakCache
from ..attacks.folder import FolderCloaks
from ..data.loading import load_images
from ..defenses import Defense, NoDefense, PuFaceDefense, Views
from ..models.base import FaceEmbedder
from ..utils.errors import PufaceError
from ..utils.fingerprint import content_hashes
from ..utils.images import to_float, to_uint8
from ..utils.metrics import psnr, ssim
from .cache import ContentCache
from .data import EvaluationData, LabelledImages
from .metrics import PSNR_CAP, Labels, protocol_scores
from .trainers import TRAINERS, EmbeddingTrainer, Trainer, create_trainer

__all__ = ["AttackSpec", "GridPlan", "TrainerSpec", "Protocol", "TrainingProtocol", "QueryProtocol", "PROTOCOLS",
           "protocol_class", "setting_of", "run_id"]


@dataclass
class AttackSpec:
    """An attack in the grid. `attack` is None for the clean reference (no cloak).

    `attack` is a callable images -> images (a `CloakAttack` goes through the cloak cache) or a
    `FolderCloaks` (cloaks made elsewhere). `surrogates` names the embedders the attacker optimised
    against (to tell white-box from oblivious runs).
    """

    label: str
    attack: Any | None
    surrogates: tuple[str, ...] = ()
    batch_size: int = 16


@dataclass
class TrainerSpec:
    """A trainer in the grid: `create_trainer(name, victim, **params)`, shown as `label`."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    victims: tuple[str, ...] | None = None  # restrict to these victims (None: all)

    def applies_to(self, victim: str) -> bool:
        return self.victims is None or victim in self.victims

    def build(self, embedder: FaceEmbedder, seed: int | None = None) -> Trainer:
        """The trainer on `embedder`. One that takes a `seed` (e2e: batches and flips) gets the run's `seed` unless
        the entry sets its own, so the draws of a grid are draws of its fits too (seed 0 fits as before)."""
        params = dict(self.params)
        if seed is not None and "seed" not in params and "seed" in TRAINERS.get(self.name).accepted(positional=1):
            params["seed"] = int(seed)
        return create_trainer(self.name, embedder, **params)

    @property
    def uses_embeddings(self) -> bool:
        return bool(getattr(TRAINERS.get(self.name).factory, "uses_embeddings", False))


@dataclass(frozen=True)
class GridPlan:
    """The size of one seed's grid (`Protocol.plan`): counts of users, attacks (the clean reference included),
    defenses and (victim, trainer) cells; runs finished; images to cloak, by how many cloaking attacks."""

    users: int
    attacks: int
    defenses: int
    cells: int
    done: int
    cloaks: int
    cloaking: int
    cached: int | None = None  # of `cloaks`, those the cloak cache holds (None: not looked up)

    @property
    def runs(self) -> int:
        """users x attacks x defenses x cells: one row of results.csv each."""
        return self.users * self.attacks * self.defenses * self.cells

    def __str__(self) -> str:
        finished = f", {self.done} finished" if self.done else ""
        cache = ("those in the cloak cache are read, not made)" if self.cached is None else
                 f"{self.cached} in the cloak cache, read, not made; {self.cloaks - self.cached} to make)")
        return (f"grid: {self.users} user(s) x {self.attacks} attack(s) x {self.defenses} defense(s) x {self.cells} "
                f"(victim, trainer) cell(s) = {self.runs} run(s){finished}; {self.cloaks} image(s) to cloak "
                f"({self.cloaking} cloaking attack(s); {cache}")


def setting_of(victim: str, attack: AttackSpec) -> str:
    """"clean" (no cloak), "white-box" (the victim is one of the attack's surrogates) or "oblivious"."""
    if attack.attack is None:
        return "clean"
    return "white-box" if victim in attack.surrogates else "oblivious"


def run_id(seed: int, attack: str, victim: str, trainer: str, defense: str, user: str) -> str:
    return f"{seed}|{attack}|{victim}|{trainer}|{defense}|{user}"


def _is_expensive(defense: Defense) -> bool:
    """Whether defended images are worth caching (a learned defense, anywhere in a composition)."""
    return any(isinstance(d, PuFaceDefense) for d in defense.parts)


@dataclass
class _DefendedSet:
    """One defense's view of the training set: the defended natural images (for a `Views` defense, every
    view's, view-major), their labels and embeddings per victim, and the trainers fitted on it (the clean
    reference: one fit serves every user)."""

    images: torch.Tensor
    hashes: list[str]
    labels: np.ndarray
    embeddings: dict[str, torch.Tensor]
    base: dict[tuple[str, str], tuple[Trainer, np.ndarray, float]] = field(default_factory=dict)

    def rows(self, rows_u: np.ndarray, n_train: int) -> np.ndarray:
        """The rows of the training set's rows `rows_u` in every view."""
        views = len(self.labels) // n_train
        return np.concatenate([rows_u + k * n_train for k in range(views)])


def _views(defense: Defense) -> list[Defense]:
    """The views a defense gives of each training image: a `Views`' views, else the defense itself."""
    return defense.views if isinstance(defense, Views) else [defense]


class Protocol:
    """FaceCure's training-time protocol (`name` "training"; see the module docstring): runs the grid
    users x attacks x defenses x victims x trainers on one `EvaluationData`. `QueryProtocol` is the
    query-time one; `PROTOCOLS` maps each name to its class.

    Args:
        data: the split, decoded.
        users: protected users (identity names).
        attacks: `AttackSpec`s; include one with attack=None for the clean reference.
        victims: {label: FaceEmbedder} the FR models are built on.
        trainers: `TrainerSpec`s.
        defenses: {label: Defense}.
        cache: content cache for defended images and embeddings (None: no caching).
        cloak_cache: a `CloakCache` (default: the shared one under $PUFACE_HOME), or None to call
            attacks directly.
        on_result: called with each result row as soon as it exists (to write it out at once).
        on_quality: called with (attack, defense, user, {"psnr": [...], "ssim": [...]}) per unit.
        on_example: called with (user, attack, kind, uint8 images) for each kept example.
        done: run ids already finished (skipped: resume).
        example_users: for this many users, keep sample images (natural, cloaked, defended) in
            `examples` for the report.
        batch_size: images per batch for defenses and embedding.
        progress: show tqdm progress bars.
    """

    name = "training"

    def __init__(
        self,
        data: EvaluationData,
        users: Sequence[str],
        attacks: Sequence[AttackSpec],
        victims: dict[str, FaceEmbedder],
        trainers: Sequence[TrainerSpec],
        defenses: dict[str, Defense],
        *,
        cache: ContentCache | None = None,
        cloak_cache: CloakCache | None | Literal["default"] = "default",
        on_result: Callable[[dict], None] | None = None,
        on_quality: Callable[[str, str, str, dict], None] | None = None,
        on_example: Callable[[str, str, str, torch.Tensor], None] | None = None,
        done: Iterable[str] = (),
        example_users: int = 0,
        examples_per_user: int = 2,
        batch_size: int = 64,
        progress: bool = True,
    ):
        self.data = data
        self.users = list(users)
        self.attacks = list(attacks)
        self.victims = dict(victims)
        self.trainers = list(trainers)
        self.defenses = dict(defenses)
        self.cache = cache
        self.cloak_cache: CloakCache | None = CloakCache() if cloak_cache == "default" else cloak_cache
        self.on_result = on_result
        self.on_quality = on_quality
        self.on_example = on_example
        self.done = set(done)
        self.example_users = set(self.users[:example_users])
        self.examples_per_user = examples_per_user
        self.batch_size = batch_size
        self.progress = progress
        self.timings: dict[str, float] = {
            "load_s": 0.0,
            "cloak_s": 0.0,
            "defend_s": 0.0,
            "embed_s": 0.0,
            "train_s": 0.0,
        }
        self.examples: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        self.quality: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        self._fingerprints = {v: emb.embedding_key() for v, emb in self.victims.items()}
        self._check()

    # ------------------------------------------------------------------ checks and bookkeeping

    def _check(self) -> None:
        for label_set, what in ((self.victims, "victim"), (self.defenses, "defense")):
            if not label_set:
                raise PufaceError(f"the evaluation needs at least one {what}")
        for what, labels in (
            ("attack", [a.label for a in self.attacks]),
            ("trainer", [t.label for t in self.trainers]),
        ):
            if not labels:
                raise PufaceError(f"the evaluation needs at least one {what}")
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                raise PufaceError(f"{what} labels must be unique; repeated: {', '.join(sorted(dup))}")
        for t in self.trainers:
            unknown = set(t.victims or ()) - set(self.victims)
            if unknown:
                raise PufaceError(f"trainer {t.label!r} names victims not in the grid: {', '.join(sorted(unknown))}")
        for u in self.users:
            if len(self.data.train.rows_of(u)) == 0:
                raise PufaceError(f"protected user {u!r} has no training images in this split")

    def _cells(self) -> list[tuple[str, TrainerSpec]]:
        """Every (victim, trainer) pair the grid runs, in order."""
        return [(v, t) for v in self.victims for t in self.trainers if t.applies_to(v)]

    def _ids(self, attack: str, user: str, defenses: Iterable[str] | None = None) -> list[str]:
        ds = list(self.defenses) if defenses is None else list(defenses)
        return [run_id(self.data.seed, attack, v, t.label, d, user) for d in ds for v, t in self._cells()]

    def _all_done(self, ids: Iterable[str]) -> bool:
        return all(i in self.done for i in ids)

    def _bar(self, iterable, **kw):
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, **kw)

    # ------------------------------------------------------------------ the three costly steps, cached

    def embed(self, victim: str, images: torch.Tensor, hashes: Sequence[str]) -> torch.Tensor:
        """(N, D) embeddings of uint8 images by victim `victim`, via the content cache."""
        return self.embed_with(self.victims[victim], images, hashes, namespace=self._fingerprints[victim])

    def embed_with(self, emb_model: FaceEmbedder, images: torch.Tensor, hashes: Sequence[str], *,
                   namespace: str | None = None) -> torch.Tensor:
        """(N, D) embeddings of uint8 images by any face model, via the content cache (shared with the
        victims' embeddings when the model is one of them: the key is `FaceEmbedder.embedding_key`)."""
        t0 = time.perf_counter()
        ns = namespace or emb_model.embedding_key()
        found = self.cache.get("embeddings", ns, hashes) if self.cache is not None else {}
        missing = [i for i, h in enumerate(hashes) if h not in found]
        if missing:
            new = []
            for s in range(0, len(missing), self.batch_size):
                idx = torch.tensor(missing[s : s + self.batch_size])
                new.append(emb_model.embed(to_float(images[idx]), batch_size=self.batch_size))
            new_t = torch.cat(new)
            fresh = {hashes[i]: new_t[j].numpy().astype(np.float32) for j, i in enumerate(missing)}
            if self.cache is not None:
                self.cache.put("embeddings", ns, fresh)
            found.update(fresh)
        out = (
            torch.from_numpy(np.stack([found[h] for h in hashes]))
            if len(hashes)
            else torch.empty(0, emb_model.embedding_dim)
        )
        self.timings["embed_s"] += time.perf_counter() - t0
        return out

    def defend(self, label: str, images: torch.Tensor, hashes: Sequence[str],
               groups: Labels | None = None) -> tuple[torch.Tensor, list[str]]:
        """Defense `label` applied to uint8 images -> (uint8 images, their hashes); cached when expensive.
        A `Views` defense gives every view, view-major (V x N images). groups: each image's person (needed by
        a group-wise defense, which sees each person's images together)."""
        parts = [self.apply_defense(d, images, hashes, label, groups) for d in _views(self.defenses[label])]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), [h for p in parts for h in p[1]]

    def apply_defense(self, defense: Defense, images: torch.Tensor, hashes: Sequence[str],
                      label: str = "", groups: Labels | None = None) -> tuple[torch.Tensor, list[str]]:
        """Any single defense applied to uint8 images -> (uint8 images, their hashes); cached (by the
        defense's `cache_key`, shared with the grid's own defenses) when expensive. A group-wise defense
        (`Defense.groupwise`) is called once per group of `groups` and cached under each image's hash and
        its group's content."""
        if isinstance(defense, NoDefense):
            return images, list(hashes)
        key = defense.cache_key if self.cache is not None and _is_expensive(defense) else None
        return self._defend_batches(defense, images, hashes, lambda idx: to_uint8(defense(to_float(images[idx]))),
                                    key=key, label=label, groups=groups,
                                    earlier=defense.earlier_cache_keys if key is not None else ())

    #: `apply_defense` on the chips as they are, also where a subclass overrides `apply_defense` (the cloak
    #: detector scores chips: `detection._scores`)
    defend_chips = apply_defense

    def _defend_batches(self, defense: Defense, images: torch.Tensor, hashes: Sequence[str],
                        batch: Callable[[torch.Tensor], torch.Tensor], *, key: str | None, label: str = "",
                        groups: Labels | None = None, desc: str = "defense",
                        earlier: Sequence[str] = ()) -> tuple[torch.Tensor, list[str]]:
        """The one skeleton of every way a defense meets the images: rows whose `hashes` (each image's cache key:
        its content hash, or more where the result depends on more) are found in the content cache under
        namespace `key` (None: not cached) are taken from it, the others go through `batch` (row indices, int64
        -> uint8 images of those rows) in batches of `batch_size` (a group-wise defense: one call per group of
        `groups`, recomputed whole when one of its images is missing), with a progress bar; returns (uint8
        images, their hashes) and adds the time to `timings["defend_s"]`. Rows missing under `key` are looked up
        under the `earlier` namespaces of the same function (`Defense.earlier_cache_keys`) and, found there, stored
        under `key` too."""
        label = label or defense.name
        t0 = time.perf_counter()
        keys = list(hashes)
        if defense.groupwise:
            if groups is None or len(groups) != len(images):
                raise PufaceError(f"defense {label}: group-wise, but the images come without their persons")
            members = np.asarray(groups, dtype=object)
            batches: list[list[int]] = [np.flatnonzero(members == g).tolist() for g in dict.fromkeys(groups)]
            for rows in batches:
                sig = hashlib.sha256("".join(sorted(hashes[i] for i in rows)).encode()).hexdigest()[:16]
                for i in rows:
                    keys[i] = f"{hashes[i]}@{sig}"  # an output depends on the whole group
        cache = self.cache if key is not None else None  # (callers give a key only with a cache)
        found = cache.get("images", key, keys) if cache is not None and key is not None else {}
        moved: dict[str, np.ndarray] = {}  # found under an earlier key only: stored under `key` too
        for old in earlier:
            missing_keys = [h for h in keys if h not in found]
            if cache is None or not missing_keys:
                break
            moved.update(cache.get("images", old, missing_keys))
            found.update(moved)
        out = torch.empty_like(images)
        for i, h in enumerate(keys):
            if h in found:
                out[i] = torch.from_numpy(found[h])
        if defense.groupwise:  # a group is recomputed whole when one of its images is missing
            todo = [rows for rows in batches if any(keys[i] not in found for i in rows)]
        else:  # only the missing images, in full batches
            missing = [i for i, h in enumerate(keys) if h not in found]
            todo = [missing[s : s + self.batch_size] for s in range(0, len(missing), self.batch_size)]
        fresh = dict(moved)
        if len(todo) > 1 and self.progress:
            todo = self._bar(
                todo, desc=f"{desc} {label}", unit="batch" if not defense.groupwise else "person", leave=False
            )
        for idx_np in todo:
            idx = torch.from_numpy(np.asarray(idx_np, dtype=np.int64))
            y = batch(idx)
            out[idx] = y
            if cache is not None:
                fresh.update({keys[int(i)]: y[j].numpy() for j, i in enumerate(idx)})
        if fresh and cache is not None and key is not None:
            cache.put("images", key, fresh)
        self.timings["defend_s"] += time.perf_counter() - t0
        return out, content_hashes(out)

    def as_published(self, images: torch.Tensor, hashes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Training images (uint8) as the trainer receives them, before any defense: unchanged here (chips);
        `photos.PhotoProtocol`: published as photos and cut again."""
        return images, list(hashes)

    @property
    def cloaked_split(self) -> LabelledImages:
        """The split whose photos of the protected users are cloaked (training photos here; probes at query time)."""
        return self.data.train

    def cloak(self, spec: AttackSpec, user: str) -> torch.Tensor:
        """The user's images of `cloaked_split` cloaked by `spec` (uint8, same rows order as the split). A
        group attack (`CloakAttack.group`, e.g. OPOM, unlearnable examples) sees the user's images together,
        labelled, and the training split's other identities as its reference."""
        attack = spec.attack
        if attack is None:
            raise ValueError(f"{spec.label}: the clean reference (no attack) cloaks nothing")
        t0 = time.perf_counter()
        side = self.cloaked_split
        rows = side.rows_of(user)
        natural = side.images[rows]
        size = (natural.shape[-2], natural.shape[-1])
        paths = [side.paths[i] for i in rows]
        if getattr(attack, "group", False):
            x = self._cloak_group(attack, user, natural)
        elif isinstance(attack, FolderCloaks):
            x, _, errors = load_images([attack.path_for(p, self.data.dataset.root) for p in paths], size=size)
            if errors:
                raise PufaceError(f"cloaked image unreadable: {errors[0]}")
        elif self.cloak_cache is not None and hasattr(attack, "config"):
            x, kept, errors = self.cloak_cache.cloak(
                attack, paths, batch_size=spec.batch_size, progress=self.progress, size=size, label=spec.label
            )
            if errors or len(kept) != len(paths):
                first = errors[0] if errors else "some images were not cloaked"
                raise PufaceError(f"cloaking {user}'s images with {spec.label} failed: {first}")
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:
            outs = []
            for s in range(0, len(natural), spec.batch_size):
                batch = to_float(natural[s : s + spec.batch_size])
                outs.append(attack.run(batch).images if hasattr(attack, "run") else attack(batch))
            x = torch.cat(outs)
            if tuple(x.shape) != tuple(natural.shape):
                raise PufaceError(
                    f"attack {spec.label} changed the image shape {tuple(natural.shape)} -> {tuple(x.shape)}"
                )
        self.timings["cloak_s"] += time.perf_counter() - t0
        return to_uint8(x)

    def _group_reference(self, user: str) -> Reference:
        """A group attack's reference for `user`: the training split's other identities."""
        train = self.data.train
        others = np.flatnonzero(train.labels != user)
        return Reference(train.images[others], train.labels[others], [train.hashes[i] for i in others])

    def _cloak_group(self, attack: CloakAttack, user: str, natural: torch.Tensor) -> torch.Tensor:
        """A group attack on one user's images (uint8): the training split's other identities are its reference."""
        reference = self._group_reference(user)
        labels = [user] * len(natural)
        if self.cloak_cache is not None:
            return self.cloak_cache.cloak_group(attack, natural, labels, reference=reference, progress=self.progress)
        return attack.run(to_float(natural), labels=labels, reference=reference, quantize_output=True).images

    # ------------------------------------------------------------------ what the report keeps

    def _record_quality(
        self, attack: str, defense: str, user: str, images: torch.Tensor, natural: torch.Tensor
    ) -> None:
        """PSNR (dB, capped at PSNR_CAP = 99: identical images) and SSIM of a user's (cloaked, defended) training
        images against the natural ones, in `quality[attack, defense, user]` (and passed to `on_quality`)."""
        x, y = to_float(images), to_float(natural)
        q = {"psnr": psnr(x, y, cap=PSNR_CAP).tolist(), "ssim": ssim(x, y).tolist()}
        self.quality[attack, defense, user] = q
        if self.on_quality is not None:
            self.on_quality(attack, defense, user, q)

    def _keep_example(self, user: str, attack: str, kind: str, images: torch.Tensor) -> None:
        if user in self.example_users:
            ex = images[: self.examples_per_user].clone()
            self.examples.setdefault(user, {}).setdefault(attack, {})[kind] = ex
            if self.on_example is not None:
                self.on_example(user, attack, kind, ex)

    # ------------------------------------------------------------------ fitting one FR model

    def _base_model(self, ds: _DefendedSet, v: str, t: TrainerSpec) -> tuple[Trainer, np.ndarray, float]:
        """The trainer fitted on the all-natural (defended) training set (the clean reference's runs), its test
        predictions, fit seconds."""
        if (v, t.label) not in ds.base:
            t0 = time.perf_counter()
            model = t.build(self.victims[v], self.data.seed)
            if isinstance(model, EmbeddingTrainer):
                model.fit_embeddings(ds.embeddings[v], ds.labels)
                pred = model.predict_embeddings(self._test_emb[v])
            else:
                model.fit(ds.images, ds.labels)
                pred = model.predict(self.data.test.images)
            ds.base[v, t.label] = (model, pred, time.perf_counter() - t0)
        return ds.base[v, t.label]

    def _fit_predict(self, ds: _DefendedSet, v: str, t: TrainerSpec, rows_u: np.ndarray, cloaked: torch.Tensor,
                     cloaked_emb: Callable[[str], torch.Tensor]) -> np.ndarray:
        """Test predictions of trainer `t` on victim `v` fitted on the defended set with the user's rows
        replaced by their (defended) cloaked images (in every view: `cloaked` is view-major)."""
        rows = torch.from_numpy(ds.rows(rows_u, len(self.data.train)))
        labels = ds.labels
        if t.uses_embeddings:
            emb = ds.embeddings[v].clone()
            emb[rows] = cloaked_emb(v)
            model = t.build(self.victims[v], self.data.seed)
            assert isinstance(model, EmbeddingTrainer)  # what uses_embeddings says of its factory
            model.fit_embeddings(emb, labels)
            return model.predict_embeddings(self._test_emb[v])
        images = ds.images.clone()
        images[rows] = cloaked
        model = t.build(self.victims[v], self.data.seed)
        model.fit(images, labels)
        return model.predict(self.data.test.images)

    # ------------------------------------------------------------------ the grid

    def plan(self) -> GridPlan:
        """The size of this grid before it runs (`GridPlan`): runs pending are those not in `done`; the images to
        cloak are those of `cloaked_split` of each pending (attack, user) (cloaks in the cloak cache count too;
        folder cloaks are read, not made), and of them those the cloak cache holds (`cached_cloaks`; None without a
        cloak cache)."""
        done = sum(i in self.done for a in self.attacks for u in self.users for i in self._ids(a.label, u))
        side = self.cloaked_split
        made = [a for a in self.attacks if a.attack is not None and not isinstance(a.attack, FolderCloaks)]
        pending = [(a, u) for a in made for u in self.users if not self._all_done(self._ids(a.label, u))]
        cloaks = sum(len(side.rows_of(u)) for _, u in pending)
        cached = None if self.cloak_cache is None else sum(self.cached_cloaks(a, u) for a, u in pending)
        return GridPlan(len(self.users), len(self.attacks), len(self.defenses), len(self._cells()), done, cloaks,
                        len(made), cached)

    def cached_cloaks(self, spec: AttackSpec, user: str) -> int:
        """How many of the user's cloaks by `spec` (`cloak`) the cloak cache holds, looked up under the keys `cloak`
        would use (`CloakCache.missing`, `missing_group`: a group with one missing is made whole); reads no cloak."""
        attack, cache = spec.attack, self.cloak_cache
        side = self.cloaked_split
        rows = side.rows_of(user)
        if cache is None or attack is None or isinstance(attack, FolderCloaks):
            return 0
        if getattr(attack, "group", False):
            missing = cache.missing_group(attack, side.images[rows], [user] * len(rows), self._group_reference(user))
            return 0 if missing else len(rows)
        if not hasattr(attack, "config"):
            return 0
        size = (side.images.shape[-2], side.images.shape[-1])
        return len(rows) - len(cache.missing(attack, [side.paths[i] for i in rows], size=size,
                                             decoded=side.images[rows]))

    def run(self) -> list[dict]:
        """Run every (user, attack, defense, victim, trainer) not in `done`; returns the new rows."""
        cloaked = self._cloak_all()
        pending = [d for d in self.defenses
                   if not all(self._all_done(self._ids(a.label, u, [d])) for a in self.attacks for u in self.users)]
        if not pending:
            return []
        need_emb = any(t.uses_embeddings for t in self.trainers)
        test = self.data.test
        self._test_emb = {v: self.embed(v, test.images, test.hashes) for v in self.victims} if need_emb else {}
        units = [(d, a, u) for d in pending for a in self.attacks for u in self.users]
        bar = self._bar(units, desc="evaluating", unit="run") if self.progress else None
        rows: list[dict] = []
        for d in pending:
            if bar is not None:
                bar.set_postfix_str(f"{d}: defending and embedding the training set")
            ds = self._defended_set(d, need_emb)
            for a in self.attacks:
                for u in self.users:
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{d} / {a.label} / {u}", refresh=False)
                    if not self._all_done(self._ids(a.label, u, [d])):
                        rows += self._run_unit(ds, d, a, u, cloaked.get((a.label, u)))
        if bar is not None:
            bar.close()
        return rows

    def _cloak_all(self) -> dict[tuple[str, str], torch.Tensor]:
        """Each pending user's training images cloaked once per attack."""
        jobs = [(a, u) for a in self.attacks if a.attack is not None for u in self.users
                if not self._all_done(self._ids(a.label, u))]
        return {(a.label, u): self.cloak(a, u) for a, u in self._bar(jobs, desc="cloaking users", unit="user")}

    def _defended_set(self, d: str, need_emb: bool) -> _DefendedSet:
        train = self.data.train
        images, hashes = self.defend(d, train.images, train.hashes, groups=train.labels)
        embeddings = {v: self.embed(v, images, hashes) for v in self.victims} if need_emb else {}
        labels = np.tile(train.labels, len(images) // len(train))
        return _DefendedSet(images, hashes, labels, embeddings)

    def _run_unit(self, ds: _DefendedSet, d: str, a: AttackSpec, u: str, cloaked: torch.Tensor | None) -> list[dict]:
        """Every pending (victim, trainer) run of one (defense, attack, user)."""
        train = self.data.train
        rows_u = train.rows_of(u)
        natural = train.images[rows_u]
        self._keep_example(u, a.label, "natural", natural)
        if cloaked is not None:
            cl_def, cl_hashes = self.defend(d, cloaked, content_hashes(cloaked), groups=[u] * len(cloaked))
            self._keep_example(u, a.label, "cloaked", cloaked)
        else:  # the clean reference: the user's rows are the defended natural ones
            defended_rows = ds.rows(rows_u, len(train))
            cl_def, cl_hashes = ds.images[defended_rows], [ds.hashes[i] for i in defended_rows]
        last_view = cl_def[-len(rows_u):]  # what the report shows of a `Views` defense: its last view
        self._record_quality(a.label, d, u, last_view, natural)
        self._keep_example(u, a.label, f"defense:{d}", last_view)
        cl_emb: dict[str, torch.Tensor] = {}

        def cloaked_emb(v: str) -> torch.Tensor:
            if v not in cl_emb:
                cl_emb[v] = self.embed(v, cl_def, cl_hashes)
            return cl_emb[v]

        out = []
        for v, t in self._cells():
            rid = run_id(self.data.seed, a.label, v, t.label, d, u)
            if rid in self.done:
                continue
            t0 = time.perf_counter()
            if cloaked is None:
                fresh = (v, t.label) not in ds.base
                _, pred, fit_s = self._base_model(ds, v, t)
                wall = fit_s if fresh else 0.0
            else:
                pred = self._fit_predict(ds, v, t, rows_u, cl_def, cloaked_emb)
                wall = time.perf_counter() - t0
            self.timings["train_s"] += time.perf_counter() - t0
            out.append(self._result(rid, a, v, t, d, u, pred, wall))
        return out

    def _result(
        self, rid: str, a: AttackSpec, v: str, t: TrainerSpec, d: str, u: str, pred: np.ndarray, wall: float
    ) -> dict:
        """One result row (scores of the test predictions `pred`), recorded as done and passed to `on_result`."""
        train = self.data.train
        row = {
            "run_id": rid, "seed": self.data.seed, "protocol": self.name, "attack": a.label, "victim": v,
            "trainer": t.label, "defense": d, "user": u, "setting": setting_of(v, a),
            **protocol_scores(pred, self.data.test.labels, u),
            "n_train": len(train), "n_user_train": len(train.rows_of(u)), "n_identities": len(self.data.identities),
            "wall_s": round(wall, 4),
        }
        self.done.add(rid)
        if self.on_result is not None:
            self.on_result(row)
        return row


TrainingProtocol = Protocol


class QueryProtocol(Protocol):
    """Query-time protection (OPOM, TIP-IM's threat): the FR model is built from the clean *gallery* (every
    identity's training images, untouched), and the protected user's *probe* photos (their test images)
    are cloaked when they are matched. The defense is applied to every probe (the user's cloaked ones and
    everyone else's natural ones), never to the gallery.

    ASR = share of the user's cloaked (defended) probes not matched to the user; normal accuracy = accuracy
    on the other identities' (defended) probes (`metrics.protocol_scores`, the same definitions and table
    columns as the training-time protocol). Each (victim, trainer) is fitted once on the gallery, and the
    natural probes are defended, embedded and predicted once per defense: a run only re-predicts the user's
    cloaked probes. Same arguments as `Protocol`.
    """

    name = "query"

    @property
    def cloaked_split(self) -> LabelledImages:
        return self.data.test

    def _check(self) -> None:
        super()._check()
        for u in self.users:
            if len(self.data.test.rows_of(u)) == 0:
                raise PufaceError(f"protected user {u!r} has no probe (test) images in this split")
        views = [label for label, d in self.defenses.items() if isinstance(d, Views)]
        if views:
            raise PufaceError(f"defense(s) {', '.join(views)}: a `views` defense keeps several training views and "
                              "has no meaning for query-time probes; use it with the training-time protocol")
        grouped = [label for label, d in self.defenses.items() if any(v.groupwise for v in _views(d))]
        if grouped:
            raise PufaceError(
                f"defense(s) {', '.join(grouped)}: group-wise (each person's photos together); at query "
                "time the defender does not know whose probe it is: use it with the training-time protocol"
            )

    def _gallery_model(self, v: str, t: TrainerSpec) -> Trainer:
        """Trainer `t` on victim `v` fitted on the clean gallery (once)."""
        if (v, t.label) not in self._models:
            t0 = time.perf_counter()
            train = self.data.train
            model = t.build(self.victims[v], self.data.seed)
            if isinstance(model, EmbeddingTrainer):
                model.fit_embeddings(self.embed(v, train.images, train.hashes), train.labels)
            else:
                model.fit(train.images, train.labels)
            self._models[v, t.label] = model
            self.timings["train_s"] += time.perf_counter() - t0
        return self._models[v, t.label]

    def _predict(self, model: Trainer, v: str, images: torch.Tensor, hashes: Sequence[str]) -> np.ndarray:
        if isinstance(model, EmbeddingTrainer):
            return model.predict_embeddings(self.embed(v, images, hashes))
        return model.predict(images)

    def run(self) -> list[dict]:
        """Run every (user, attack, defense, victim, trainer) not in `done`; returns the new rows."""
        test = self.data.test
        jobs = [(a, u) for a in self.attacks if a.attack is not None for u in self.users
                if not self._all_done(self._ids(a.label, u))]
        cloaked = {(a.label, u): self.cloak(a, u) for a, u in self._bar(jobs, desc="cloaking probes", unit="user")}
        pending = [d for d in self.defenses
                   if not all(self._all_done(self._ids(a.label, u, [d])) for a in self.attacks for u in self.users)]
        self._models: dict[tuple[str, str], Trainer] = {}
        rows: list[dict] = []
        units = [(d, a, u) for d in pending for a in self.attacks for u in self.users]
        bar = self._bar(units, desc="evaluating (query-time)", unit="run") if self.progress else None
        for d in pending:
            probes, probe_hashes = self.defend(d, test.images, test.hashes)
            base: dict[tuple[str, str], np.ndarray] = {}  # predictions of the natural (defended) probes
            for a in self.attacks:
                for u in self.users:
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{d} / {a.label} / {u}", refresh=False)
                    if self._all_done(self._ids(a.label, u, [d])):
                        continue
                    rows_u = test.rows_of(u)
                    natural = test.images[rows_u]
                    self._keep_example(u, a.label, "natural", natural)
                    cl = cloaked.get((a.label, u))
                    if cl is not None:
                        cl_def, cl_hashes = self.defend(d, cl, content_hashes(cl))
                        self._keep_example(u, a.label, "cloaked", cl)
                    else:
                        cl_def, cl_hashes = probes[rows_u], [probe_hashes[i] for i in rows_u]
                    self._record_quality(a.label, d, u, cl_def, natural)
                    self._keep_example(u, a.label, f"defense:{d}", cl_def)
                    for v, t in self._cells():
                        rid = run_id(self.data.seed, a.label, v, t.label, d, u)
                        if rid in self.done:
                            continue
                        t0 = time.perf_counter()
                        model = self._gallery_model(v, t)
                        if (v, t.label) not in base:
                            base[v, t.label] = self._predict(model, v, probes, probe_hashes)
                        pred = base[v, t.label].copy()
                        pred[rows_u] = self._predict(model, v, cl_def, cl_hashes)
                        rows.append(self._result(rid, a, v, t, d, u, pred, time.perf_counter() - t0))
        if bar is not None:
            bar.close()
        return rows


#: the evaluation protocols by name (`protocol = "..."` in an experiment config, `puface evaluate --protocol`)
PROTOCOLS: dict[str, type[Protocol]] = {"training": Protocol, "query": QueryProtocol}


def protocol_class(name: str) -> type[Protocol]:
    """The protocol class of `name` ("training" or "query"); a `PufaceError` naming the choices otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise PufaceError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})") from None
