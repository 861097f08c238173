"""The FaceCure evaluation protocol, run for many protected users, attacks, defenses, victims and trainers.

For one seed:

1. every identity is split 70/30 (seeded per identity, `puface.data.split`);
2. for each protected user, the user's *training* images are replaced by their cloaked versions
   (the attack runs once per user; cloaks come from the cloak cache when the attack supports it);
3. the defense is applied to ALL training images, cloaked and natural alike (the model trainer
   cannot tell them apart);
4. an FR model (a trainer on a victim embedder) is trained on that set and tested on the clean,
   untouched test images of every identity;
5. ASR = share of the user's test images not classified as the user; normal accuracy = accuracy
   on the other identities' test images (`metrics.protocol_scores`).

Work is shared wherever the result cannot differ: the clean test set is embedded once per victim;
the natural training images are defended and embedded once per defense (only the protected user's
rows change from one user to the next); defended images of expensive defenses (the purifier) and
all embeddings are cached by content (`cache.ContentCache`), so reruns and other experiments reuse
them. Images are held as uint8, as they would be stored on disk after each step.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.layout import FaceDataset, FaceImage, scan_identities, stable_seed
from ..data.loading import load_images
from ..data.split import Split, split_dataset
from ..defenses import Compose, Defense, NoDefense, module_fingerprint
from ..errors import PufaceError
from ..models.base import FaceEmbedder
from .cache import ContentCache, content_hashes
from .metrics import protocol_scores, psnr, ssim
from .trainers import EmbeddingTrainer, Trainer, create_trainer

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] (N, 3, H, W) -> uint8 0..255, rounded (what saving as PNG does)."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [0, 1]."""
    return images.float().div_(255.0)


@dataclass
class LabelledImages:
    """Images of a split side: uint8 (N, 3, H, W), their identity labels, files and content hashes."""

    paths: list[Path]
    labels: np.ndarray
    images: torch.Tensor
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def rows_of(self, identity: str) -> np.ndarray:
        return np.flatnonzero(self.labels == identity)


def load_labelled(items: Sequence[FaceImage], size: int, *, progress: bool = False, desc: str = "loading") -> LabelledImages:
    """Decode `items` to uint8 at size x size; unreadable files are left out with a warning naming them."""
    paths = [im.path for im in items]
    chunks, kept_all, errors = [], [], []
    for start in range(0, len(paths), 256):
        x, kept, errs = load_images(paths[start : start + 256], size=(size, size), progress=progress, desc=desc)
        chunks.append(to_uint8(x))
        kept_all.extend(start + k for k in kept)
        errors.extend(errs)
    for e in errors:
        log.warning("skipping unreadable image %s", e)
    if errors:
        import click

        click.echo(f"warning: {len(errors)} unreadable image(s) left out, e.g. {errors[0]}", err=True)
    images = torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return LabelledImages(
        paths=[paths[k] for k in kept_all],
        labels=np.array([items[k].identity for k in kept_all], dtype=object),
        images=images,
        hashes=content_hashes(images),
    )


@dataclass
class EvaluationData:
    """One seeded split of a data set, decoded: `train` and `test` as `LabelledImages`."""

    dataset: FaceDataset
    split: Split
    train: LabelledImages
    test: LabelledImages
    seed: int
    image_size: int

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.train.labels.tolist()))

    @classmethod
    def prepare(
        cls,
        root: str | Path | FaceDataset,
        *,
        seed: int = 0,
        train_fraction: float = 0.7,
        min_images: int = 2,
        max_per_identity: int | None = None,
        identities: Iterable[str] | None = None,
        image_size: int = 150,
        progress: bool = False,
    ) -> "EvaluationData":
        """Scan `root` (identity folders), cap, split (70/30, seeded) and decode every image."""
        ds = root if isinstance(root, FaceDataset) else scan_identities(
            root, min_images=min_images, max_per_identity=max_per_identity, identities=identities, seed=seed
        )
        split = split_dataset(ds, train_fraction=train_fraction, min_train=1, min_test=1, seed=seed)
        train = load_labelled(split.train, image_size, progress=progress, desc="loading training images")
        test = load_labelled(split.test, image_size, progress=progress, desc="loading test images")
        return cls(ds, split, train, test, seed, image_size)


def choose_users(
    data: EvaluationData,
    *,
    count: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    exclude: Iterable[str] = (),
    min_train: int = 2,
    min_test: int = 1,
) -> list[str]:
    """Protected users: `names` as given, or `count` identities drawn with `seed` among those with at
    least `min_train` training and `min_test` test images that are not in `exclude`."""
    n_train = {str(k): int(v) for k, v in zip(*np.unique(data.train.labels.astype(str), return_counts=True))}
    n_test = {str(k): int(v) for k, v in zip(*np.unique(data.test.labels.astype(str), return_counts=True))}
    if names:
        missing = [n for n in names if n not in n_train]
        if missing:
            raise PufaceError(f"protected user(s) not in the data (or with too few images): {', '.join(missing)}")
        return list(dict.fromkeys(names))
    excluded = set(exclude)
    candidates = sorted(k for k in n_train if n_train[k] >= min_train and n_test.get(k, 0) >= min_test and k not in excluded)
    if count is None:
        count = 1
    if count > len(candidates):
        raise PufaceError(
            f"asked for {count} protected users but only {len(candidates)} identities qualify "
            f"(>= {min_train} training and >= {min_test} test images"
            + (f", not among the {len(excluded)} excluded" if excluded else "") + ")"
        )
    return sorted(random.Random(stable_seed("users", seed)).sample(candidates, count))


@dataclass
class AttackSpec:
    """An attack in the grid. `attack` is None for the clean reference (no cloak).

    `attack` is a callable images -> images; with a `config` attribute it goes through the cloak
    cache. `surrogates` names the embedders the attacker optimised against (to tell white-box
    from oblivious runs).
    """

    label: str
    attack: Any | None
    surrogates: tuple[str, ...] = ()
    batch_size: int = 16


class FolderCloaks:
    """Cloaks made elsewhere (the original Fawkes or LowKey tools, `puface cloak`): a folder that mirrors
    the data tree, `root/<identity>/<file>`. For a natural image `<identity>/<stem>.<ext>` the first
    existing name among `patterns` is used; the defaults cover puface's and Fawkes' names
    (`<name>`, `<stem>.png`, `<stem>_cloaked.png`, `<stem>_<mode>_cloaked.png`) and LowKey's
    (`<stem>_attacked.png`). Placeholders: {name}, {stem}, {ext}.
    """

    DEFAULT_PATTERNS = (
        "{name}", "{stem}.png", "{stem}_cloaked.png", "{stem}_cloaked.jpg", "{stem}_cloaked{ext}",
        "{stem}_high_cloaked.png", "{stem}_mid_cloaked.png", "{stem}_low_cloaked.png", "{stem}_attacked.png",
    )

    def __init__(self, root: str | Path, patterns: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PufaceError(f"{self.root}: folder of cloaked images not found")
        self.patterns = tuple(patterns) if patterns else self.DEFAULT_PATTERNS
        self.name = f"folder:{self.root.name}"

    def path_for(self, natural: Path, data_root: Path) -> Path:
        """The cloaked file for `natural` (a file under `data_root`); raises naming what was tried."""
        rel = Path(natural).relative_to(data_root)
        folder = self.root / rel.parent
        tried = []
        for pat in self.patterns:
            cand = folder / pat.format(name=rel.name, stem=rel.stem, ext=rel.suffix)
            if cand.is_file():
                return cand
            tried.append(cand.name)
        raise PufaceError(f"no cloaked version of {rel} in {folder} (tried {', '.join(dict.fromkeys(tried))})")


@dataclass
class TrainerSpec:
    """A trainer in the grid: `create_trainer(name, victim, **params)`, shown as `label`."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    victims: tuple[str, ...] | None = None  # restrict to these victims (None: all)

    def applies_to(self, victim: str) -> bool:
        return self.victims is None or victim in self.victims

    def build(self, embedder: FaceEmbedder) -> Trainer:
        return create_trainer(self.name, embedder, **self.params)

    @property
    def uses_embeddings(self) -> bool:
        from .trainers import TRAINERS

        return bool(getattr(TRAINERS.get(self.name).factory, "uses_embeddings", False))


def setting_of(victim: str, attack: AttackSpec) -> str:
    """"clean" (no cloak), "white-box" (the victim is one of the attack's surrogates) or "oblivious"."""
    if attack.attack is None:
        return "clean"
    return "white-box" if victim in attack.surrogates else "oblivious"


def run_id(seed: int, attack: str, victim: str, trainer: str, defense: str, user: str) -> str:
    return f"{seed}|{attack}|{victim}|{trainer}|{defense}|{user}"


def _is_expensive(defense: Defense) -> bool:
    if isinstance(defense, Compose):
        return any(_is_expensive(d) for d in defense.steps)
    return defense.kind == "puface"


def default_cloak_cache() -> Any | None:
    """The attacks' `CloakCache` when the attacks package provides it, else None."""
    try:
        from ..attacks.cache import CloakCache
    except ImportError:
        return None
    return CloakCache()


class Protocol:
    """Runs the grid users x attacks x defenses x victims x trainers on one `EvaluationData`.

    Args:
        data: the split, decoded.
        users: protected users (identity names).
        attacks: `AttackSpec`s; include one with attack=None for the clean reference.
        victims: {label: FaceEmbedder} the FR models are built on.
        trainers: `TrainerSpec`s.
        defenses: {label: Defense}.
        cache: content cache for defended images and embeddings (None: no caching).
        cloak_cache: a `CloakCache` (default: the attacks package's, when present), or None to call
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
        cloak_cache: Any | None = "default",
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
        self.cloak_cache = default_cloak_cache() if cloak_cache == "default" else cloak_cache
        self.on_result = on_result
        self.on_quality = on_quality
        self.on_example = on_example
        self.done = set(done)
        self.example_users = set(self.users[:example_users])
        self.examples_per_user = examples_per_user
        self.batch_size = batch_size
        self.progress = progress
        self.timings: dict[str, float] = {"load_s": 0.0, "cloak_s": 0.0, "defend_s": 0.0, "embed_s": 0.0, "train_s": 0.0}
        self.examples: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        self.quality: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        self._fingerprints = {v: f"{emb.name}:{module_fingerprint(emb)}" for v, emb in self.victims.items()}
        self._check()

    # ------------------------------------------------------------------ helpers

    def _check(self) -> None:
        for label_set, what in ((self.victims, "victim"), (self.defenses, "defense")):
            if not label_set:
                raise PufaceError(f"the evaluation needs at least one {what}")
        for what, labels in (("attack", [a.label for a in self.attacks]), ("trainer", [t.label for t in self.trainers])):
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

    def _all_done(self, ids: Iterable[str]) -> bool:
        return all(i in self.done for i in ids)

    def _ids(self, attack: str, user: str, defenses: Iterable[str] | None = None) -> list[str]:
        ds = list(self.defenses) if defenses is None else list(defenses)
        return [run_id(self.data.seed, attack, v, t.label, d, user) for d in ds for v in self.victims for t in self.trainers
                if t.applies_to(v)]

    def _bar(self, iterable, **kw):
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, **kw)

    def embed(self, victim: str, images: torch.Tensor, hashes: Sequence[str]) -> torch.Tensor:
        """(N, D) embeddings of uint8 images by victim `victim`, via the content cache."""
        t0 = time.perf_counter()
        emb_model = self.victims[victim]
        ns = self._fingerprints[victim]
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
        out = torch.from_numpy(np.stack([found[h] for h in hashes])) if len(hashes) else torch.empty(0, emb_model.embedding_dim)
        self.timings["embed_s"] += time.perf_counter() - t0
        return out

    def defend(self, label: str, images: torch.Tensor, hashes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Defense `label` applied to uint8 images -> (uint8 images, their hashes); cached when expensive."""
        defense = self.defenses[label]
        if isinstance(defense, NoDefense):
            return images, list(hashes)
        t0 = time.perf_counter()
        use_cache = self.cache is not None and _is_expensive(defense)
        found = self.cache.get("images", defense.cache_key, hashes) if use_cache else {}
        out = torch.empty_like(images)
        missing = [i for i, h in enumerate(hashes) if h not in found]
        for i, h in enumerate(hashes):
            if h in found:
                out[i] = torch.from_numpy(found[h])
        fresh = {}
        steps = range(0, len(missing), self.batch_size)
        if len(missing) > self.batch_size and self.progress:
            steps = self._bar(steps, desc=f"defense {label}", unit="batch", leave=False)
        for s in steps:
            idx = torch.tensor(missing[s : s + self.batch_size])
            y = to_uint8(defense(to_float(images[idx])))
            out[idx] = y
            if use_cache:
                fresh.update({hashes[int(i)]: y[j].numpy() for j, i in enumerate(idx)})
        if fresh:
            self.cache.put("images", defense.cache_key, fresh)
        self.timings["defend_s"] += time.perf_counter() - t0
        return out, content_hashes(out)

    def cloak(self, spec: AttackSpec, user: str) -> torch.Tensor:
        """The user's training images cloaked by `spec` (uint8, same rows order as the split)."""
        t0 = time.perf_counter()
        rows = self.data.train.rows_of(user)
        natural = self.data.train.images[rows]
        size = tuple(natural.shape[-2:])
        if isinstance(spec.attack, FolderCloaks):
            files = [spec.attack.path_for(self.data.train.paths[i], self.data.dataset.root) for i in rows]
            x, kept, errors = load_images(files, size=size)
            if errors:
                raise PufaceError(f"cloaked image unreadable: {errors[0]}")
        elif self.cloak_cache is not None and hasattr(spec.attack, "config"):
            paths = [self.data.train.paths[i] for i in rows]
            x, kept, errors = self.cloak_cache.cloak(spec.attack, paths, batch_size=spec.batch_size, progress=self.progress, size=size)
            if errors or len(kept) != len(paths):
                first = errors[0] if errors else "some images were not cloaked"
                raise PufaceError(f"cloaking {user}'s images with {spec.label} failed: {first}")
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:
            outs = []
            for s in range(0, len(natural), spec.batch_size):
                batch = to_float(natural[s : s + spec.batch_size])
                outs.append(spec.attack.run(batch).images if hasattr(spec.attack, "run") else spec.attack(batch))
            x = torch.cat(outs)
            if tuple(x.shape) != tuple(natural.shape):
                raise PufaceError(f"attack {spec.label} changed the image shape {tuple(natural.shape)} -> {tuple(x.shape)}")
        self.timings["cloak_s"] += time.perf_counter() - t0
        return to_uint8(x)

    def _record_quality(self, attack: str, defense: str, user: str, images: torch.Tensor, natural: torch.Tensor) -> None:
        """PSNR (dB, capped at 99) and SSIM of a user's (cloaked, defended) training images against the
        natural ones, in `quality[attack, defense, user]` (and passed to `on_quality`)."""
        x, y = to_float(images), to_float(natural)
        q = {"psnr": psnr(x, y).clamp(max=99.0).tolist(), "ssim": ssim(x, y).tolist()}
        self.quality[attack, defense, user] = q
        if self.on_quality is not None:
            self.on_quality(attack, defense, user, q)

    def _keep_example(self, user: str, attack: str, kind: str, images: torch.Tensor) -> None:
        if user in self.example_users:
            ex = images[: self.examples_per_user].clone()
            self.examples.setdefault(user, {}).setdefault(attack, {})[kind] = ex
            if self.on_example is not None:
                self.on_example(user, attack, kind, ex)

    # ------------------------------------------------------------------ the grid

    def run(self) -> list[dict]:
        """Run every (user, attack, defense, victim, trainer) not in `done`; returns the new rows."""
        rows: list[dict] = []
        data, train, test = self.data, self.data.train, self.data.test
        real_attacks = [a for a in self.attacks if a.attack is not None]

        # 1. Cloak each user's training images once per attack.
        cloaked: dict[tuple[str, str], torch.Tensor] = {}
        jobs = [(a, u) for a in real_attacks for u in self.users if not self._all_done(self._ids(a.label, u))]
        for a, u in self._bar(jobs, desc="cloaking users", unit="user"):
            cloaked[a.label, u] = self.cloak(a, u)

        pending_defenses = [
            d for d in self.defenses if not all(self._all_done(self._ids(a.label, u, [d])) for a in self.attacks for u in self.users)
        ]
        if not pending_defenses:
            return rows

        # 2. The clean test set, embedded once per victim.
        need_emb = any(t.uses_embeddings for t in self.trainers)
        test_emb = {v: self.embed(v, test.images, test.hashes) for v in self.victims} if need_emb else {}

        units = [(d, a, u) for d in pending_defenses for a in self.attacks for u in self.users]
        bar = self._bar(units, desc="evaluating", unit="run") if self.progress else None
        for d in pending_defenses:
            if bar is not None:
                bar.set_postfix_str(f"{d}: defending and embedding the training set")
            natural, nat_hashes = self.defend(d, train.images, train.hashes)
            nat_emb = {v: self.embed(v, natural, nat_hashes) for v in self.victims} if need_emb else {}
            base: dict[tuple[str, str], tuple[Trainer, np.ndarray, float]] = {}

            def base_model(v: str, t: TrainerSpec) -> tuple[Trainer, np.ndarray, float]:
                """The trainer fitted on the all-natural (defended) training set, and its predictions."""
                if (v, t.label) not in base:
                    t0 = time.perf_counter()
                    model = t.build(self.victims[v])
                    if isinstance(model, EmbeddingTrainer):
                        model.fit_embeddings(nat_emb[v], train.labels)
                        pred = model.predict_embeddings(test_emb[v])
                    else:
                        model.fit(natural, train.labels)
                        pred = model.predict(test.images)
                    base[v, t.label] = (model, pred, time.perf_counter() - t0)
                return base[v, t.label]

            for a in self.attacks:
                for u in self.users:
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{d} / {a.label} / {u}", refresh=False)
                    ids = self._ids(a.label, u, [d])
                    if self._all_done(ids):
                        continue
                    rows_u = train.rows_of(u)
                    if a.attack is not None:
                        cl = cloaked[a.label, u]
                        cl_def, cl_hashes = self.defend(d, cl, content_hashes(cl))
                        self._record_quality(a.label, d, u, cl_def, train.images[rows_u])
                        self._keep_example(u, a.label, "natural", train.images[rows_u])
                        self._keep_example(u, a.label, "cloaked", cl)
                        self._keep_example(u, a.label, f"defense:{d}", cl_def)
                    else:
                        self._record_quality(a.label, d, u, natural[rows_u], train.images[rows_u])
                        self._keep_example(u, a.label, "natural", train.images[rows_u])
                        self._keep_example(u, a.label, f"defense:{d}", natural[rows_u])
                    cl_emb: dict[str, torch.Tensor] = {}  # the user's defended cloaked rows, per victim
                    for v in self.victims:
                        for t in self.trainers:
                            if not t.applies_to(v):
                                continue
                            rid = run_id(data.seed, a.label, v, t.label, d, u)
                            if rid in self.done:
                                continue
                            t0 = time.perf_counter()
                            if a.attack is None:
                                fresh = (v, t.label) not in base
                                _, pred, fit_s = base_model(v, t)
                                wall = fit_s if fresh else 0.0
                            elif t.uses_embeddings:
                                if v not in cl_emb:
                                    cl_emb[v] = self.embed(v, cl_def, cl_hashes)
                                emb = nat_emb[v].clone()
                                emb[torch.from_numpy(rows_u)] = cl_emb[v]
                                model = t.build(self.victims[v])
                                init = base_model(v, t)[0] if t.name == "linear" else None
                                model.fit_embeddings(emb, train.labels, init=init)
                                pred = model.predict_embeddings(test_emb[v])
                                wall = time.perf_counter() - t0
                            else:
                                images = natural.clone()
                                images[torch.from_numpy(rows_u)] = cl_def
                                model = t.build(self.victims[v])
                                model.fit(images, train.labels)
                                pred = model.predict(test.images)
                                wall = time.perf_counter() - t0
                            self.timings["train_s"] += time.perf_counter() - t0
                            row = {
                                "run_id": rid,
                                "seed": data.seed,
                                "attack": a.label,
                                "victim": v,
                                "trainer": t.label,
                                "defense": d,
                                "user": u,
                                "setting": setting_of(v, a),
                                **protocol_scores(pred, test.labels, u),
                                "n_train": len(train),
                                "n_user_train": len(rows_u),
                                "n_identities": len(data.identities),
                                "wall_s": round(wall, 4),
                            }
                            rows.append(row)
                            self.done.add(rid)
                            if self.on_result is not None:
                                self.on_result(row)
        if bar is not None:
            bar.close()
        return rows


__all__ = [
    "EvaluationData", "LabelledImages", "load_labelled", "choose_users", "AttackSpec", "TrainerSpec", "FolderCloaks",
    "Protocol", "setting_of", "run_id", "to_uint8", "to_float", "default_cloak_cache",
]
