"""An experiment's output folder: what is written as results arrive, and the tables written at the end.

    OUT/state.json            the results fingerprint (config + weights), the data and models fingerprints;
                              a different one refuses to resume
    OUT/config.toml           the config as it ran (stands alone: extends resolved, overrides applied)
    OUT/config.resolved.json  every setting after defaults
    OUT/runs.jsonl            one row per finished run, appended at once (resume reads it)
    OUT/details.jsonl         image quality and example images per (seed, user, attack, defense)
    OUT/examples/...          example images for the report's grids
    OUT/sessions.jsonl        wall time and timings of each session (a resumed run has several)
    OUT/results.csv, summary.csv, table.md, results.json, report.html   written at the end
    OUT/detection.csv         cloak detection per attack (AUC, TPR, FPR), when [detection] is enabled
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ..evaluation.detection import detection_markdown
from ..evaluation.metrics import PSNR_CAP, summarise
from ..evaluation.report import write_report
from ..evaluation.tables import render_tables, summarise_rows, write_csv
from ..io.files import check_output_root
from ..io.images import atomic_write_bytes, write_image
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from ..utils.images import tensor_to_image
from .config import ExperimentConfig, config_text

__all__ = ["ResultsFolder", "read_jsonl", "write_text_atomic", "json_safe", "example_name", "path_part",
           "config_changes"]

#: the files written at the end of a run (`ResultsFolder.write_tables`)
END_FILES = ("results.csv", "summary.csv", "table.md", "results.json", "report.html", "detection.csv")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of `path` (none when it is missing); a line cut by an interruption is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(o: Any) -> Any:
    """NaN and infinities -> None (strict JSON), recursively."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


#: characters a label may hold that a file or folder name cannot (a separator, a drive's colon, NUL)
_UNSAFE_IN_NAMES = str.maketrans({":": "-", "/": "_", "\\": "_", "\0": "_"})


def path_part(label: str, hashed: str | None = None) -> str:
    """`label` (an attack, user or defense label of a config) as one file or folder name that stays where it is put:
    ":" becomes "-", "/", "\\" and NUL "_", a leading "." (".", "..", a hidden name) gets a "_" before it, a name
    over 120 characters is cut there; a label so changed also gets the first 8 hex digits of the sha256 of `hashed`
    (default: the label), so that labels differing only there ("a:b", "a-b") get different names. Other labels keep
    their name."""
    import hashlib

    safe = label.translate(_UNSAFE_IN_NAMES)
    if safe.startswith("."):
        safe = "_" + safe
    safe = safe[:120]  # a file name holds at most 255 bytes; room for the hash, a kind's prefix and "_<i>.png"
    if safe != label:
        digest = hashlib.sha256((label if hashed is None else hashed).encode("utf-8", "surrogatepass")).hexdigest()
        safe += "-" + digest[:8]
    return safe


def example_name(kind: str) -> str:
    """The file name stem of an example image of `kind` ("natural", "cloaked", "defense:<label>"): the label as
    `path_part` makes it ("defense-jpeg-q75"; "defense:a/b" -> "defense-a_b-<hash of the kind>")."""
    prefix, label = ("defense-", kind[len("defense:"):]) if kind.startswith("defense:") else ("", kind)
    return prefix + path_part(label, kind)


def data_fingerprints(root: str | Path) -> tuple[str, str]:
    """(paths and sizes, paths and contents) hashes of the image files under `root`: the first is what run folders
    recorded before contents were (state.json "data"), the second ("data_content") also tells an image edited in place
    at the same size (an uncompressed BMP or TIFF always keeps its size). Never times: a copy of the data without them
    (cp -r, a fresh fetch on another machine) is the same data. Reading the contents costs one pass over the files
    (LFW chips, 4743 files, 41 MB: 0.5 s against 0.15 s for paths and sizes, on a busy 2-core machine), less than the
    run's own loading of them."""
    import hashlib

    from ..data.fetch import file_digest
    from ..io.files import list_image_files

    root = Path(root)
    sizes, contents = hashlib.sha256(), hashlib.sha256()
    for p in list_image_files(root):
        rel = p.relative_to(root).as_posix()
        sizes.update(f"{rel}\t{p.stat().st_size}\n".encode())
        contents.update(f"{rel}\t{file_digest(p)}\n".encode())
    return sizes.hexdigest()[:16], contents.hexdigest()[:16]


#: resolved config keys that change no result (`ExperimentConfig.fingerprint` leaves them out)
_NOT_RESULTS = ("name", "description", "report", "detection", "source")
_NOT_RESULTS_RUN = ("output", "cache", "batch_size", "cloak_batch_size")


def _read_resolved(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def config_changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two resolved configs (`ExperimentConfig.resolved`) in what changes results, for a refused
    resume: the attacks, trainers and defenses added, removed or changed (by label), and the other settings by name.
    Empty when `old` is None (an older folder without the file) or nothing in them differs."""
    if old is None:
        return []
    out = []
    for key in sorted(set(old) | set(new)):
        if key in _NOT_RESULTS:
            continue
        a, b = old.get(key), new.get(key)
        if key == "run":
            a, b = ({k: v for k, v in (d or {}).items() if k not in _NOT_RESULTS_RUN} for d in (a, b))
        if json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str):
            continue
        if key in ("attacks", "trainers", "defenses") and isinstance(a, list) and isinstance(b, list):
            was = {str(e.get("label")): e for e in a if isinstance(e, dict)}
            now = {str(e.get("label")): e for e in b if isinstance(e, dict)}
            parts = [f"{verb} {', '.join(labels)}" for verb, labels in (
                ("added", [k for k in now if k not in was]), ("removed", [k for k in was if k not in now]),
                ("changed", [k for k in now if k in was and json.dumps(now[k], sort_keys=True, default=str)
                             != json.dumps(was[k], sort_keys=True, default=str)])) if labels]
            out.append(f"{key} ({'; '.join(parts) or 'order'})")
        elif isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"[{key}] {', '.join(keys)}")
        else:
            out.append(key)
    return out


class ResultsFolder:
    """The output folder of one experiment run (see the module docstring). Use as a context manager
    around the runs, so the append-only files are closed whatever happens."""

    def __init__(self, out: Path, cfg: ExperimentConfig, fingerprint: str, *, restart: bool = False,
                 data: str | None = None, models: str | None = None, data_content: str | None = None):
        """data, data_content: fingerprints of the data the runs read (`data_fingerprints`: paths and sizes, paths and
        contents): a resume over results of other data is refused (folders written before one was recorded are not
        compared on it, and record it now). models: likewise for what the models
        compute beyond their weights in `fingerprint` (`build.models_fingerprint`: attack surrogates, victims' input
        size and normalisation)."""
        self.out, self.cfg, self.fingerprint = out, cfg, fingerprint
        check_output_root(out)  # a file there: one line, not a traceback
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PufaceError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
        self.state_path, self.runs_path, self.details_path = (
            out / "state.json",
            out / "runs.jsonl",
            out / "details.jsonl",
        )
        if self.state_path.is_file() and read_jsonl(self.runs_path) and not restart:
            old = json.loads(self.state_path.read_text())
            if old.get("fingerprint") != fingerprint:
                changes = config_changes(_read_resolved(out / "config.resolved.json"), cfg.resolved())
                what = ("a config that differs in " + "; ".join(changes)) if changes else \
                    ("the same config with other model weights behind its names (a purifier or face model file "
                     "changed) or runs of an earlier version of a trainer")
                raise PufaceError(
                    f"{out} holds results of {what} (fingerprint {old.get('fingerprint')} != {fingerprint}); use "
                    "another "
                    "output folder (--out; out= in Python)" + (", where the cloaks, defended images and embeddings "
                    "cached from these runs are reused," if cfg.run.get("cache", True) else "") +
                    " or --restart (restart=True) to discard them")
            if data and old.get("data") and old["data"] != data:
                raise PufaceError(
                    f"{out} holds results of other data (images added, removed or changed under the data folder since "
                    "they were run); use another --out folder or --restart to discard them")
            if data_content and old.get("data_content") and old["data_content"] != data_content:
                raise PufaceError(
                    f"{out} holds results of other data (images changed in place under the data folder since they were "
                    "run); use another --out folder or --restart to discard them")
            if models and old.get("models") and old["models"] != models:
                raise PufaceError(
                    f"{out} holds results of other face models (an attack's surrogate weights, or a model's input "
                    "size or normalisation, changed since they were run); use another --out folder or --restart to "
                    "discard them")
        if restart:
            # everything the discarded runs wrote is set aside, not only their rows: their image quality and examples
            # (details.jsonl) and sessions would be summed into the new tables, and their tables left standing
            stamp = int(time.time())
            for name in ("runs.jsonl", "details.jsonl", "sessions.jsonl", *END_FILES):
                p = out / name
                if p.exists():
                    p.replace(out / f"{p.stem}.{stamp}.discarded{p.suffix}")
        write_text_atomic(
            self.state_path,
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "config": cfg.source and str(cfg.source),
                    **({"data": data} if data else {}),
                    **({"data_content": data_content} if data_content else {}),
                    **({"models": models} if models else {}),
                },
                indent=2,
            ),
        )
        write_text_atomic(out / "config.toml", config_text(cfg))
        write_text_atomic(out / "config.resolved.json", json.dumps(cfg.resolved(), indent=2, default=str))
        # the runs of this config only, as `rows` reads them: a run of another config (rows left by one whose
        # state.json is gone) is run again, not skipped and then left out of the tables
        self.done = {r["run_id"] for r in self.rows()}
        self.new_runs = 0

    def __enter__(self) -> "ResultsFolder":
        self._runs = open(self.runs_path, "a", encoding="utf-8")
        self._details = open(self.details_path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._runs.close()
        self._details.close()

    # ------------------------------------------------------------------ as results arrive
    def _append(self, f, record: dict) -> None:
        f.write(json.dumps({**record, "config_fingerprint": self.fingerprint}) + "\n")
        f.flush()

    def add_run(self, row: dict) -> None:
        self._append(self._runs, row)
        self.new_runs += 1

    def add_quality(self, seed: int, attack: str, defense: str, user: str, q: dict) -> None:
        self._append(
            self._details, {"type": "quality", "seed": seed, "attack": attack, "defense": defense, "user": user, **q}
        )

    def add_example(self, seed: int, user: str, attack: str, kind: str, images: torch.Tensor) -> None:
        """Save example images (uint8 (k, 3, H, W)) as examples/<seed>/<user>/<attack>/<kind>_<i>.png (see
        `example_name`; the attack label as `path_part` makes it: a config's label never writes outside examples/;
        users are identity folder names)."""
        safe = example_name(kind)
        paths = []
        for i, im in enumerate(images):
            rel = Path("examples") / str(seed) / user / path_part(attack) / f"{safe}_{i}.png"
            write_image(self.out / rel, tensor_to_image(im))
            paths.append(rel.as_posix())
        self._append(
            self._details,
            {"type": "example", "seed": seed, "user": user, "attack": attack, "kind": kind, "paths": paths},
        )

    # ------------------------------------------------------------------ at the end
    def rows(self) -> list[dict]:
        """One row per run id (the last one written), of this config only."""
        latest: dict[str, dict] = {}
        for r in read_jsonl(self.runs_path):
            if r.get("config_fingerprint", self.fingerprint) == self.fingerprint:
                latest[r["run_id"]] = r
        return list(latest.values())

    def _details_of_config(self) -> list[dict]:
        return [r for r in read_jsonl(self.details_path) if r.get("config_fingerprint") == self.fingerprint]

    def quality_summary(self) -> list[dict]:
        """PSNR and SSIM of the protected users' training images, per (attack, defense). Images identical to the
        natural ones (PSNR infinite, recorded at the PSNR_CAP) are counted in `psnr_identical` and left out of the
        PSNR mean and standard deviation (NaN when every image is identical); `n` counts every image."""
        quality: dict[tuple[str, str], dict[str, list[float]]] = {}
        details = self._details_of_config()
        for r in {
            (r["seed"], r["attack"], r["defense"], r["user"]): r for r in details if r["type"] == "quality"
        }.values():
            agg = quality.setdefault((r["attack"], r["defense"]), {"psnr": [], "ssim": []})
            agg["psnr"].extend(r["psnr"])
            agg["ssim"].extend(r["ssim"])
        out = []
        for (a, d), q in sorted(quality.items()):
            p, s = summarise(v for v in q["psnr"] if v < PSNR_CAP), summarise(q["ssim"])
            out.append(
                {
                    "attack": a,
                    "defense": d,
                    "psnr_mean": p.mean,
                    "psnr_std": p.std,
                    "ssim_mean": s.mean,
                    "ssim_std": s.std,
                    "n": s.n,
                    "psnr_identical": sum(v >= PSNR_CAP for v in q["psnr"]),
                }
            )
        return out

    def examples(self) -> dict[str, dict[str, list[str]]]:
        """{"<seed>/<user>/<attack>": {kind: [image paths]}} of the example images written."""
        out: dict[str, Any] = {}
        for r in self._details_of_config():
            if r["type"] == "example":
                out.setdefault(f"{r['seed']}/{r['user']}/{r['attack']}", {})[r["kind"]] = r["paths"]
        return out

    def end_session(self, wall_s: float, timings: dict[str, float]) -> list[dict]:
        """Record this session; returns every session so far."""
        record = {"wall_s": round(wall_s, 2), "new_runs": self.new_runs, "timings_s": timings}
        sessions = read_jsonl(self.out / "sessions.jsonl") + [record]
        with open(self.out / "sessions.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return sessions

    def write_tables(
        self,
        *,
        info: dict[str, Any],
        sessions: list[dict],
        wall_s: float,
        amplification: float,
        device: str | None,
        detection: dict | None = None,
    ) -> tuple[list[dict], list[dict], str, Path | None]:
        """results.csv, summary.csv, table.md, results.json, detection.csv (with `detection`, from
        `evaluation.detection.summarise_detection`) and (when enabled) report.html.
        Returns (rows, summary, table Markdown, report path)."""
        cfg = self.cfg
        rows = self.rows()
        summary = summarise_rows(rows)
        write_csv(self.out / "results.csv", rows)
        write_csv(self.out / "summary.csv", summary)
        quality = self.quality_summary()
        wall_total = sum(float(x.get("wall_s", 0.0)) for x in sessions)
        table_md = render_tables(cfg, summary, quality, wall_s=wall_total, sessions=len(sessions))
        if detection is not None:
            write_csv(self.out / "detection.csv", detection["rows"])
            table_md = table_md.rstrip("\n") + "\n\n" + detection_markdown(detection) + "\n"
        write_text_atomic(self.out / "table.md", table_md)
        timing_keys: list[str] = list(dict.fromkeys(k for x in sessions for k in x.get("timings_s", {})))
        results = {
            "name": cfg.name,
            "description": cfg.description,
            "config_fingerprint": self.fingerprint,
            "config": cfg.resolved(),
            **info,
            "wall_s": round(wall_total, 2),
            "wall_s_this_session": round(wall_s, 2),
            "sessions": len(sessions),
            "timings_s": {
                k: round(sum(float(x.get("timings_s", {}).get(k, 0.0)) for x in sessions), 2) for k in timing_keys
            },
            "n_runs": len(rows),
            "summary": summary,
            "image_quality": quality,
            "detection": detection,
            "examples": self.examples(),
            "amplification": amplification,
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
                "threads": torch.get_num_threads(),
                "device": str(device) if device else str(resolve_device(None)),
            },
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_text_atomic(self.out / "results.json", json.dumps(json_safe(results), indent=2, default=str))
        report = write_report(self.out, results, table_md) if cfg.report.get("enabled", True) else None
        return rows, summary, table_md, report

