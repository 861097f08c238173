"""Purifier training: seeded, resumable, single process or DDP under `torchrun` (gloo on CPU, nccl on GPU).

    train(config, out_dir)   # writes out_dir/{config.json, data_summary.json, metrics.jsonl, last.pt, best.pt,
                             #                 best.safetensors, result.json}, each atomically

Every random choice (identity split, image choice, epoch order, amplification factors, flips)
derives from `config.seed`, so an interrupted run resumed from `last.pt` continues exactly as an
uninterrupted one would (each step's randomness is seeded by (seed, epoch, step, rank)).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.datasets import resolve_data_root
from ..io.files import check_output_folder, check_output_root
from ..io.images import atomic_write_bytes
from ..io.jobs import env_int, remove_stale_temporaries, shard
from ..purifier.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from ..purifier.model import AtFaceScale, Purifier, template_scale
from ..purifier.rednet import RedNetConfig, conv_flops
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from ..utils.metrics import psnr
from ..utils.seeding import stable_seed
from .amplify import amplified_batch, input_variants, source_variants
from .config import PurifierTrainConfig
from .data import PairSet, build_pairs, check_attacks, cloak_with_cache, folder_identity_split
from .losses import PurifierLoss


# ---- distributed set-up ----------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; init the process group (nccl on CUDA, gloo on CPU)."""
    world, rank, local = env_int("WORLD_SIZE", 1), env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # long timeout: rank 0 may spend a long time generating cloaks while the others wait
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    if dev.type == "cpu" and world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(rank, world, local, dev)


# ---- validation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_purifier(model: nn.Module, pairs: PairSet, embedders: dict[str, nn.Module], device: torch.device,
                      batch_size: int = 32) -> dict[str, Any]:
    """Validation metrics of `model` on real (k = 1) cloaks, overall and per attack.

    psnr_natural: PSNR(P(x), x) (natural photos must survive); psnr_cloaked: PSNR(x_c, x);
    psnr_purified: PSNR(P(x_c), x). For each embedder e: cos_cloaked_<e> = cos(E(x_c), E(x)),
    cos_purified_<e> = cos(E(P(x_c)), E(x)), cos_natural_<e> = cos(E(P(x)), E(x)).
    score = mean over embedders of (cos_purified + cos_natural) / 2 (or PSNR-based without embedders).
    """
    was = model.training
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {}

    def add(k: str, v: torch.Tensor) -> None:
        rows.setdefault(k, []).append(v.float().cpu())

    for i in range(0, len(pairs), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(pairs)))
        x, xc = pairs.batch(idx)
        x, xc = x.to(device), xc.to(device)
        px, pxc = model(x), model(xc)
        add("psnr_natural", psnr(px, x, cap=100.0))
        add("psnr_cloaked", psnr(xc, x, cap=100.0))
        add("psnr_purified", psnr(pxc, x, cap=100.0))
        for name, e in embedders.items():
            ex = e(x)
            add(f"cos_cloaked_{name}", F.cosine_similarity(e(xc), ex))
            add(f"cos_purified_{name}", F.cosine_similarity(e(pxc), ex))
            add(f"cos_natural_{name}", F.cosine_similarity(e(px), ex))
    model.train(was)
    cols = {k: torch.cat(v) for k, v in rows.items()}

    def summarise(mask: torch.Tensor) -> dict[str, float]:
        return {k: round(float(v[mask].mean()), 5) for k, v in cols.items()}

    out: dict[str, Any] = summarise(torch.ones(len(pairs), dtype=torch.bool))
    if embedders:
        out["score"] = round(
            sum((out[f"cos_purified_{n}"] + out[f"cos_natural_{n}"]) / 2 for n in embedders) / len(embedders), 5
        )
    else:
        out["score"] = round((out["psnr_purified"] - out["psnr_cloaked"]) / 100.0, 5)
    out["per_attack"] = {
        name: summarise(pairs.attack == a)
        for a, name in enumerate(pairs.attack_names)
        if bool((pairs.attack == a).any())
    }
    return out


# ---- the training loop -----------------------------------------------------------------------------
def _lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _epoch_order(
    n: int, seed: int, epoch: int, rank: int, world: int, batch: int, max_steps: int | None
) -> list[torch.Tensor]:
    """This rank's batches of pair indices for one epoch (same number of batches on every rank)."""
    g = torch.Generator().manual_seed(stable_seed("purifier-epoch", seed, epoch) % 2**63)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    mine = perm[rank * per_rank : (rank + 1) * per_rank] if world > 1 else perm
    return [mine[s * batch : (s + 1) * batch] for s in range(epoch_steps(n, world, batch, max_steps))]


def epoch_steps(n: int, world: int, batch: int, max_steps: int | None) -> int:
    """Optimiser steps per epoch of `n` training pairs over `world` processes, `batch` pairs per step and process
    (the last partial batch dropped, at least one step while a process has a pair), at most `max_steps`."""
    per_rank = n // world
    steps = max(1, per_rank // batch) if per_rank >= batch else (1 if per_rank > 0 else 0)
    return min(steps, max_steps) if max_steps else steps


def _step_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed("purifier-step", seed, epoch, step, rank) % 2**63)


def _load_embedders(names: Sequence[str], device: torch.device, given: dict[str, nn.Module] | None,
                    setting: str = "embedders") -> dict[str, nn.Module]:
    """name -> frozen face model (from `given`, else loaded by name); a name that cannot be loaded is a
    `PufaceError` naming `setting` (the config option that lists it)."""
    out: dict[str, nn.Module] = {}
    for n in names:
        if given and n in given:
            out[n] = given[n].to(device).eval()
        else:
            from ..models.registry import load_embedder

            try:
                out[n] = load_embedder(n, device=str(device)).eval()
            except PufaceError as e:
                raise PufaceError(f"{setting}: {e}") from None
    return out


def identity_split(cfg: PurifierTrainConfig) -> Any:
    """The held-out / validation / training identities of the config's data (`folder_identity_split`, seeded)."""
    return folder_identity_split(resolve_data_root(cfg.data.root), seed=cfg.seed,
                                 heldout_min_images=cfg.data.heldout_min_images,
                                 heldout_fraction=cfg.data.heldout_fraction, val_fraction=cfg.data.val_fraction,
                                 max_per_identity=cfg.data.max_per_identity)


def prepare_data(cfg: PurifierTrainConfig, d: Dist | None = None, cloak_fn: Callable | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 checked: bool = False, split: Any = None) -> tuple[PairSet, PairSet, dict[str, Any]]:
    """(train pairs, validation pairs, data summary). The attacks are checked first (`check_attacks`,
    unless `cloak_fn` replaces them or `checked` says the caller did), the identities split (`identity_split`,
    unless given as `split`); cloaks not yet cached are generated (sharded over ranks: rank r
    cloaks every world-th file first, then all ranks read the whole set from the cache), with progress
    bars on the main process when `progress`."""
    d = d or Dist()
    if cloak_fn is None and not checked:
        check_attacks(cfg.attacks, device=str(d.device), where=cfg.where)
    root = resolve_data_root(cfg.data.root)
    split = split or identity_split(cfg)
    base = cloak_fn or cloak_with_cache(
        cfg.data.cache or None,
        device=str(d.device),
        batch_size=cfg.data.cloak_batch_size,
        progress=d.main and progress,
        cached_only=cfg.data.cached_only,
    )

    def sharded(spec: dict, paths: list) -> Any:
        if d.world_size > 1 and "folder" not in spec:
            base(spec, shard(paths, d.rank, d.world_size))  # fill the cache in parallel
            d.barrier()
        return base(spec, paths)

    quiet = (lambda s: None) if not d.main else log
    train = build_pairs(root, split.train, cfg.attacks, seed=cfg.seed, max_per_identity=cfg.data.max_per_identity,
                        cloak_fn=sharded, tag="train", log=quiet)
    if split.val:
        val_specs = [{**a, "images": cfg.data.val_images} for a in cfg.attacks]
        val = build_pairs(root, split.val, val_specs, seed=cfg.seed, max_per_identity=cfg.data.max_per_identity,
                          cloak_fn=sharded, tag="val", log=quiet)
    else:
        val = train.subset(torch.arange(min(len(train), cfg.data.val_images)))
        quiet(f"warning: no validation identities ({len(split.train)} training identities, data.val_fraction = "
              f"{cfg.data.val_fraction}): validating on {len(val)} training pairs, so the best checkpoint is chosen on "
              "images it trained on; raise data.val_fraction or add identities")
    summary = {
        "root": str(cfg.data.root),  # as named (a data set name stays a name; its folder differs per machine)
        "split": {
            "seed": cfg.seed,
            "heldout_min_images": cfg.data.heldout_min_images,
            "heldout_fraction": cfg.data.heldout_fraction,
            "val_fraction": cfg.data.val_fraction,
            "max_per_identity": cfg.data.max_per_identity,
            "rule": "held out = identities with >= heldout_min_images images + seeded heldout_fraction of the rest; "
            "val = seeded val_fraction of the remainder; train = the rest (puface.training.data.purifier_identities)",
        },
        **split.as_dict(),
        "attacks": [dict(a) for a in cfg.attacks],
        "train_pairs": train.summary(),
        "val_pairs": val.summary(),
        "train_content": train.content(),
        "val_content": val.content(),
    }
    return train, val, summary


def _precision_knobs() -> list[tuple[object, str, object, object]]:
    """(object, attribute, value for TF32 on, value for off) for cuDNN convolutions and CUDA matmuls:
    PyTorch >= 2.9's `fp32_precision` API, else the legacy `allow_tf32` flags (mixing the two raises)."""
    conv, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    conv_conv = getattr(conv, "conv", None)  # torch >= 2.9 (not in its type stubs)
    if hasattr(conv_conv, "fp32_precision"):
        return [(conv_conv, "fp32_precision", "tf32", "ieee"), (mm, "fp32_precision", "tf32", "ieee")]
    return [(conv, "allow_tf32", True, False), (mm, "allow_tf32", True, False)]


def tf32_convolutions() -> bool:
    """Whether cuDNN convolutions may use TF32 now (PyTorch's default: yes)."""
    obj, attr, on, _ = _precision_knobs()[0]
    return getattr(obj, attr) == on


@contextmanager
def cuda_precision(tf32: bool):
    """Allow (True) or forbid (False) TF32 in CUDA convolutions and matrix products inside the block,
    restoring the previous settings after. Forbidden, a GPU computes in full fp32 as a CPU does."""
    knobs = _precision_knobs()
    prev = [getattr(obj, attr) for obj, attr, _, _ in knobs]
    for obj, attr, on, off in knobs:
        setattr(obj, attr, on if tf32 else off)
    try:
        yield
    finally:
        for (obj, attr, _, _), value in zip(knobs, prev):
            setattr(obj, attr, value)


def train(cfg: PurifierTrainConfig, out_dir: str | Path, *, resume: bool = True, device: str | None = None,
          embedders: dict[str, nn.Module] | None = None, cloak_fn: Callable | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train a purifier; returns the final summary (best metrics, paths). See the module doc.

    stop_after_steps: stop after this many optimiser steps in this call, saving `last.pt` (a
    time-boxed run; calling again with resume=True continues exactly where it stopped).

    embedders: name -> module overrides for loss/validation embedders (tests); others are loaded by name.
    cloak_fn: override of the cloaking function (tests); default = the project's attacks + cloak cache.
    """
    with cuda_precision(cfg.train.tf32):
        return _train(cfg, out_dir, resume=resume, device=device, embedders=embedders, cloak_fn=cloak_fn,
                      progress=progress, log=log, stop_after_steps=stop_after_steps)


def _keep_logged_epochs(path: Path, epochs: int) -> None:
    """Rewrite metrics.jsonl (atomically) to the lines of epochs 1..`epochs`, the ones `last.pt` holds, once each:
    a fresh run (0) starts it empty, a resumed one drops an epoch logged but not saved before the stop (and a
    line cut by a kill)."""
    if not path.is_file():
        return
    kept: dict[int, str] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and 1 <= row["epoch"] <= epochs:
            kept[row["epoch"]] = line
    atomic_write_bytes(path, "".join(kept[e] + "\n" for e in sorted(kept)).encode("utf-8"))


def _log_metrics(path: Path, row: dict[str, Any]) -> None:
    """Add one epoch's line to metrics.jsonl, rewriting the (small) file atomically: a kill leaves the log with or
    without the line, never with part of it."""
    before = path.read_bytes() if path.is_file() else b""
    atomic_write_bytes(path, before + (json.dumps(row) + "\n").encode("utf-8"))


#: the files a run writes into its folder (`train`); a --no-resume redo sets aside an earlier run's
#: (`_set_aside_previous`)
RUN_FILES = (
    "config.json",
    "data_summary.json",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "best.safetensors",
    "result.json",
)


def _set_aside_previous(out: Path) -> None:
    """A fresh run (--no-resume) in the folder of an earlier one that trained (a checkpoint, a result or a logged
    epoch): every file of that run is renamed <stem>.<unix time>.discarded<suffix> (kept, not deleted), so no file of
    it stands beside the new config until the new run replaces it (`puface purify --weights OUT/best.pt` took the old
    run's weights after an interrupted redo), and its config and metrics log stay with its checkpoints (before, the
    new run emptied metrics.jsonl and overwrote config.json)."""
    trained = any((out / n).is_file() for n in ("last.pt", "best.pt", "best.safetensors", "result.json")) \
        or ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0)
    if not trained:
        return
    stamp = int(time.time())
    for name in RUN_FILES:
        p = out / name
        if p.is_file():
            p.replace(out / f"{p.stem}.{stamp}.discarded{p.suffix}")


def _check_run_folder(out: Path, root: Path) -> None:
    """Refuse a run folder that is or lies inside the training data (`io.files.check_output_folder`), or whose
    config.json is not a purifier training config (another tool's folder: a fresh run would overwrite it)."""
    check_output_folder(root, out)
    cfg = out / "config.json"
    if cfg.is_file():
        try:
            was = json.loads(cfg.read_text(encoding="utf-8"))
            ok = isinstance(was, dict) and {"data", "model", "train"} <= set(was)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise PufaceError(f"{cfg}: not the config of a purifier training run (another tool's file?); choose "
                              "another --out (the run would overwrite it)")


#: settings a resumed run may change: where its inputs are and how they are batched, not what it computes
RESUME_MAY_CHANGE = ("data.root", "data.cache", "data.cloak_batch_size", "data.cached_only", "train.save_every_steps",
                     "val.batch_size")


def _check_resumed_config(path: Path, was: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume `path` (trained with config `was`) under another config `now`, naming the settings that
    differ; those in `RESUME_MAY_CHANGE` and settings the recorded config does not have (newer options) are not
    compared. (The data the run trains on is compared once it is read.)"""
    def flat(c: dict[str, Any]) -> dict[str, Any]:
        return {f"{k}.{kk}" if isinstance(v, dict) else k: vv
                for k, v in c.items() for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}

    old, new = flat(was), flat(json.loads(json.dumps(now)))
    changed = [k for k in old if k in new and k not in RESUME_MAY_CHANGE and old[k] != new[k]]
    if changed:
        raise PufaceError(f"{path}: was trained with other settings ("
                          + ", ".join(f"{k} = {old[k]!r}, now {new[k]!r}" for k in changed[:4])
                          + (", ..." if len(changed) > 4 else "") + "); resume with the same config and --set, "
                          "or use another --out or --no-resume")


def _what_moved(moved: list[str]) -> str:
    """What the keys of a refused resume's data summary that differ mean, in words."""
    said = []
    if any(k.endswith("_identities") for k in moved):
        said.append("other identities")
    if any(k.endswith("_pairs") for k in moved):
        said.append("other pair counts")
    if any(k.endswith(".natural") for k in moved):
        said.append("other pixels of the images")
    if any(k.endswith(".cloaked") for k in moved):
        said.append("other cloaks (a cloak cache or cloaked folder made otherwise)")
    return ", ".join(said)


def _init_source(weights: str, model: RedNetConfig) -> Purifier:
    """The purifier ("default" or a checkpoint path) whose weights `[train] init` starts from, once its model config
    is `model`'s."""
    try:
        src = Purifier.load(weights)
    except PufaceError as e:
        raise PufaceError(f"[train] init = {weights!r}: {e}") from None
    if src.config.as_dict() != model.as_dict():
        raise PufaceError(f"[train] init = {weights!r}: its model config {src.config.as_dict()} differs from this "
                          f"recipe's {model.as_dict()}")
    return src


def run_models(cfg: PurifierTrainConfig, device: torch.device, embedders: dict[str, nn.Module] | None = None, *,
               init: bool = True) -> tuple[dict[str, nn.Module], dict[str, nn.Module], Purifier | None]:
    """(the loss's face models, the validation's, the purifier `[train] init` starts from) of a run, loaded: a name
    that does not load is a `PufaceError` naming its setting. init: False for a resumed run (it has its own)."""
    loss_embs = _load_embedders(cfg.loss.embedders if cfg.loss.feature_weight > 0 else (), device, embedders,
                                "loss.embedders")
    val_embs = _load_embedders(cfg.val_embedders, device, {**(embedders or {}), **loss_embs},
                               "val.embedders" if cfg.val.embedders else "loss.embedders")
    return loss_embs, val_embs, _init_source(cfg.train.init, cfg.model) if cfg.train.init and init else None


def _train(cfg: PurifierTrainConfig, out_dir: str | Path, *, resume: bool, device: str | None,
           embedders: dict[str, nn.Module] | None, cloak_fn: Callable | None, progress: bool,
           log: Callable[[str], None] | None, stop_after_steps: int | None) -> dict[str, Any]:
    from tqdm import tqdm

    d = init_distributed(device)
    out = Path(out_dir)
    check_output_root(out)  # a file there: one line, not a traceback
    say = log or (lambda s: tqdm.write(s, file=sys.stderr))
    if not d.main:
        say = lambda s: None  # noqa: E731
    run_seed = cfg.seed if cfg.train.seed is None else cfg.train.seed  # init, batch order, augmentation
    torch.manual_seed(run_seed)
    last_path, best_path = out / "last.pt", out / "best.pt"
    _check_run_folder(out, resolve_data_root(cfg.data.root))
    if d.main:  # the temporaries of a run killed while writing (no process of theirs runs)
        remove_stale_temporaries([out / n for n in RUN_FILES])
    resumed = load_checkpoint(last_path, map_location=d.device) if resume and last_path.is_file() else None
    if resumed is not None:  # before config.json is rewritten: it must keep saying how the run was made
        _check_resumed_config(last_path, resumed.get("config") or {}, cfg.as_dict())
    tc = cfg.train
    # the face models and the init weights, before the data: making the cloaks can take hours, and a name that does not
    # load (a typo in loss.embedders, val.embedders or train.init) is said now, not after them. Loaded aside from the
    # global random state, so the network's initial weights are those of a run that loads them later.
    with torch.random.fork_rng(devices=[]):
        loss_embs, val_embs, init = run_models(cfg, d.device, embedders, init=resumed is None)
    # a typo in an attack or a folder without identities must not set aside (--no-resume) the run already in OUT
    if cloak_fn is None:
        check_attacks(cfg.attacks, device=str(d.device), where=cfg.where)
    split = identity_split(cfg)

    def write_config() -> None:
        if d.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PufaceError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
            atomic_write_bytes(out / "config.json", (json.dumps(cfg.as_dict(), indent=2) + "\n").encode("utf-8"))

    if resumed is None:
        if d.main:
            _set_aside_previous(out)
        write_config()
    d.barrier()
    train_pairs, val_pairs, summary = prepare_data(cfg, d, cloak_fn, log=say, progress=progress, checked=True,
                                                   split=split)
    if resumed is not None:
        was = resumed.get("data_summary") or {}
        # the pairs' pixels too (train_content, val_content: natural and cloaked), where the checkpoint has them
        # (checkpoints before them are compared on names and counts, and record them from now on)
        moved = [k for k in ("train_identities", "val_identities", "heldout_identities", "train_pairs", "val_pairs")
                 if k in was and was[k] != summary[k]]
        moved += [f"{k}.{part}" for k in ("train_content", "val_content") if isinstance(was.get(k), dict)
                  for part in sorted(summary[k]) if was[k].get(part) != summary[k][part]]
        if moved:
            raise PufaceError(f"{last_path}: was trained on other data ({', '.join(moved)} differ: "
                              f"{_what_moved(moved)}); resume on the same data, or use another --out or --no-resume")
        write_config()  # the same settings; data.root may name the data's new place
    say(f"training pairs: {train_pairs.summary()}; validation pairs: {val_pairs.summary()}; "
        f"{len(summary['heldout_identities'])} identities held out, processes: {d.world_size}, device: {d.device}")
    if d.main:
        atomic_write_bytes(out / "data_summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))

    fmt = torch.channels_last if tc.channels_last else torch.contiguous_format
    purifier = Purifier(cfg.model).to(d.device)
    purifier.to(memory_format=fmt)  # type: ignore[call-overload]  # stubs lack memory_format
    criterion = PurifierLoss(cfg.loss.image, cfg.loss.feature_weight, list(loss_embs.values()), cfg.loss.distance).to(
        d.device
    )
    # the network at its face scale (`[train] face_scale`; the plain net when it is the data's own)
    net: nn.Module = AtFaceScale(
        purifier.net, template_scale(cfg.data.template, cfg.train.face_scale or cfg.data.template)
    )
    model: nn.Module = net
    if d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(purifier.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = len(
        _epoch_order(len(train_pairs), run_seed, 0, d.rank, d.world_size, tc.batch_size, tc.max_steps_per_epoch)
    )
    if steps_per_epoch == 0:
        raise PufaceError(f"too few training pairs ({len(train_pairs)}) for {d.world_size} process(es)")
    total_steps = steps_per_epoch * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total_steps, tc.warmup_steps, tc.final_lr_fraction)
    )

    # natural-image embeddings are fixed (E frozen): compute once, plain and mirrored
    nat_emb: list[tuple[torch.Tensor, torch.Tensor]] = []
    if criterion.feature is not None:
        for e in criterion.feature.embedders:
            plain: list[torch.Tensor] = []
            mirrored: list[torch.Tensor] = []
            with torch.no_grad():
                for i in range(0, len(train_pairs), 64):
                    x, _ = train_pairs.batch(torch.arange(i, min(i + 64, len(train_pairs))))
                    x = x.to(d.device)
                    plain.append(e(x))
                    mirrored.append(e(x.flip(-1)))
            nat_emb.append((torch.cat(plain), torch.cat(mirrored)))

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "history": []}
    if init is not None:  # a resumed run continues from its own weights
        purifier.net.load_state_dict(init.net.state_dict())
        say(f"initialised from {tc.init}")
    if resumed is not None:
        ck = resumed
        ts = ck.get("train_state")
        if ts is None:
            raise PufaceError(f"{last_path}: has no training state to resume from (delete it or pass --no-resume)")
        if ck.get("config", {}).get("model") != cfg.model.as_dict():
            raise PufaceError(f"{last_path}: was trained with another model config; use another --out or --no-resume")
        purifier.net.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ts["optimizer"])
        sched.load_state_dict(ts["scheduler"])
        state.update({k: ts[k] for k in ("epoch", "step_in_epoch", "global_step", "best_score", "history") if k in ts})
        if state["epoch"] >= tc.epochs:
            say(f"{last_path}: the run is finished ({tc.epochs} epochs); nothing to train (--no-resume trains afresh)")
        else:
            say(f"resuming from {last_path}: epoch {state['epoch'] + 1} of {tc.epochs}, step {state['step_in_epoch']}")

    if d.main:
        _keep_logged_epochs(out / "metrics.jsonl", state["epoch"])
    flops = conv_flops(purifier.net, *train_pairs.natural.shape[-2:])
    meta_config = cfg.as_dict()

    def save_last(epoch: int, step_in_epoch: int, metrics: dict | None = None) -> None:
        if not d.main:
            return
        ts = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
              "step_in_epoch": step_in_epoch, "global_step": state["global_step"], "best_score": state["best_score"],
              "history": state["history"]}
        save_checkpoint(
            last_path,
            make_checkpoint(
                purifier.net.state_dict(),
                cfg.model.as_dict(),
                config=meta_config,
                data_summary=summary,
                metrics=metrics or {},
                epoch=epoch,
                train_state=ts,
            ),
        )

    result: dict[str, Any] = {}
    steps_this_call = 0
    for epoch in range(state["epoch"], tc.epochs):
        batches = _epoch_order(
            len(train_pairs), run_seed, epoch, d.rank, d.world_size, tc.batch_size, tc.max_steps_per_epoch
        )
        start = state["step_in_epoch"] if epoch == state["epoch"] else 0
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step",
                   disable=not (progress and d.main), dynamic_ncols=True, file=sys.stderr)
        model.train()
        t0, seen = time.perf_counter(), 0
        parts: dict[str, float] = {"total": float("nan"), "image": float("nan")}
        for step in range(start, len(batches)):
            idx = batches[step]
            g = _step_generator(run_seed, epoch, step, d.rank)
            x, xc = train_pairs.batch(idx)
            flip = torch.rand(len(idx), generator=g) < 0.5 if tc.hflip else torch.zeros(len(idx), dtype=torch.bool)
            if flip.any():
                x[flip], xc[flip] = x[flip].flip(-1), xc[flip].flip(-1)
            x, xc = source_variants(x, xc, cfg.amplify, g)
            inp, _ = amplified_batch(x, xc, cfg.amplify, g)
            x, inp = input_variants(x, inp, cfg.amplify, g)
            x = x.to(d.device, non_blocking=True).contiguous(memory_format=fmt)
            inp = inp.to(d.device, non_blocking=True).contiguous(memory_format=fmt)
            targets = None
            if nat_emb:
                fl = flip.to(d.device).unsqueeze(1)
                targets = [torch.where(fl, f[idx.to(d.device)], p[idx.to(d.device)]) for p, f in nat_emb]
            purified = model(inp)
            loss, parts = criterion(purified, x, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(purifier.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            state["global_step"] += 1
            seen += len(idx) * d.world_size
            rate = seen / max(1e-9, time.perf_counter() - t0)
            feat: dict[str, Any] = {"feat": f"{parts['feature']:.4f}"} if "feature" in parts else {}
            bar.set_postfix(loss=f"{parts['total']:.5f}", img=f"{parts['image']:.5f}", **feat, ips=f"{rate:.1f}",
                            refresh=False)
            bar.update(1)
            steps_this_call += 1
            if stop_after_steps is not None and steps_this_call >= stop_after_steps and step + 1 < len(batches):
                save_last(epoch, step + 1)
                bar.close()
                d.barrier()
                say(f"stopped after {steps_this_call} steps (epoch {epoch + 1}, step {step + 1}); resume to continue")
                return {"stopped": True, "epoch": epoch, "step_in_epoch": step + 1, "last_path": str(last_path)}
            if tc.save_every_steps and (step + 1) % tc.save_every_steps == 0 and step + 1 < len(batches):
                save_last(epoch, step + 1)
        bar.close()
        epoch_time = time.perf_counter() - t0
        d.barrier()
        metrics: dict[str, Any] = {}
        validate = (epoch + 1) % max(1, cfg.val.every) == 0 or epoch + 1 == tc.epochs
        if d.main and not validate:
            save_last(epoch + 1, 0)
        if d.main and validate:
            metrics = evaluate_purifier(net, val_pairs, val_embs, d.device, cfg.val.batch_size)
            metrics.update(
                epoch=epoch + 1,
                train_loss=parts["total"],
                images_per_s=round(seen / max(epoch_time, 1e-9), 2),
                train_gflop_per_s=round(3 * flops * seen / max(epoch_time, 1e-9) / 1e9, 1),
                lr=opt.param_groups[0]["lr"],
            )
            state["history"].append({k: v for k, v in metrics.items() if k != "per_attack"})
            emb_txt = "  ".join(
                f"{n}: cos cloaked {metrics[f'cos_cloaked_{n}']:.3f} -> purified {metrics[f'cos_purified_{n}']:.3f}, "
                f"natural {metrics[f'cos_natural_{n}']:.4f}"
                for n in val_embs
            )
            say(
                f"epoch {epoch + 1}: val PSNR natural {metrics['psnr_natural']:.2f} dB, "
                f"cloaked {metrics['psnr_cloaked']:.2f} -> purified {metrics['psnr_purified']:.2f} dB  "
                f"{emb_txt}  score {metrics['score']:.4f}  ({metrics['images_per_s']} img/s)"
            )
            if metrics["score"] > state["best_score"]:
                state["best_score"] = metrics["score"]
                ck = make_checkpoint(purifier.net.state_dict(), cfg.model.as_dict(), config=meta_config,
                                     data_summary=summary, metrics=metrics, epoch=epoch + 1)
                save_checkpoint(best_path, ck)
                save_checkpoint(out / "best.safetensors", ck)
            # logged before the epoch is saved: a run stopped in between redoes the epoch, and the resume drops
            # the line (`_keep_logged_epochs`), so each saved epoch is logged once
            _log_metrics(out / "metrics.jsonl", metrics)
            save_last(epoch + 1, 0, metrics)
            result = metrics
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        d.barrier()
    if d.main and best_path.is_file():
        best = load_checkpoint(best_path)
        result = {"best": best["metrics"], "best_path": str(best_path), "last_path": str(last_path),
                  "safetensors_path": str(out / "best.safetensors"), "epochs": tc.epochs}
        atomic_write_bytes(out / "result.json", (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    return result


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
