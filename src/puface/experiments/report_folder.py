"""`puface report html`: a finished run folder's report.html rebuilt from the files the folder holds, nothing run again.

The report's inputs (`evaluation.report.render_report`) are the run's results.json and table.md. A folder trimmed to
its tables (docs/results/: config.toml, summary.csv, table.md, maybe results.csv and detection.csv) has no
results.json: its inputs are then derived from those files - the summary from summary.csv (else results.csv), the
labels and their order from config.resolved.json (else config.toml), the protected users and the number of runs from
results.csv, the example images from examples/ - and the report says what it lacks (run environment, timings, ROC
curves: these are kept only in results.json).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.report import render_report
from ..evaluation.summaries import load_pooled, load_results, load_summary
from ..io.images import atomic_write_bytes
from ..utils.errors import PufaceError
from .config import load_config
from .results import example_name, path_part

__all__ = ["report_inputs", "rebuild_report", "INPUTS"]

#: the files of a run folder the report may be built from (never written by `rebuild_report`)
INPUTS = ("results.json", "table.md", "summary.csv", "results.csv", "config.toml", "config.resolved.json",
          "detection.csv", "runs.jsonl", "details.jsonl", "state.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PufaceError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(d, dict):
        raise PufaceError(f"{path}: not a `puface reproduce` {path.name} (not a JSON object)")
    return d


def _config(folder: Path) -> dict[str, Any]:
    """The resolved config (labels after defaults) of the run in `folder`: config.resolved.json, else config.toml."""
    if (folder / "config.resolved.json").is_file():
        return _read_json(folder / "config.resolved.json")
    path = folder / "config.toml"
    if not path.is_file():
        raise PufaceError(f"{path}: not found (a report rebuilt without results.json takes its labels and their "
                          "order from the config the run wrote)")
    return load_config(path).resolved()


def _examples(folder: Path, defenses: list[str], attacks: Sequence[str] = ()) -> dict[str, dict[str, list[str]]]:
    """{"<seed>/<user>/<attack>": {kind: [paths relative to folder]}} of the images under folder/examples/
    (examples/<seed>/<user>/<attack>/<kind file name>_<i>.png, `ResultsFolder.add_example`), in index order; a file of
    a kind the config does not name is skipped; an attack's folder named as `path_part` made it from one of `attacks`
    (labels) gets that label back."""
    root = folder / "examples"
    if not root.is_dir():
        return {}
    kinds = {example_name(k): k for k in ("natural", "cloaked", *(f"defense:{d}" for d in defenses))}
    labels = {path_part(a): a for a in attacks}
    found: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for p in sorted(root.rglob("*.png")):
        parts = p.relative_to(root).parts
        m = re.fullmatch(r"(.+)_(\d+)", p.stem)
        if len(parts) < 4 or m is None or m.group(1) not in kinds:
            continue
        attack = '/'.join(parts[2:-1])
        key = f"{parts[0]}/{parts[1]}/{labels.get(attack, attack)}"
        found.setdefault(key, {}).setdefault(kinds[m.group(1)], []).append(
            (int(m.group(2)), p.relative_to(folder).as_posix()))
    return {key: {k: [rel for _, rel in sorted(v)] for k, v in by_kind.items()} for key, by_kind in found.items()}


def _from_tables(folder: Path) -> dict[str, Any]:
    """The report's results dict derived from a folder without results.json (see the module docstring)."""
    summary = load_summary(folder) if (folder / "summary.csv").is_file() or not (folder / "results.csv").is_file() \
        else load_pooled([folder])
    cfg = _config(folder)
    results: dict[str, Any] = {"name": cfg.get("name", folder.name), "description": cfg.get("description", ""),
                               "config": cfg, "summary": summary}
    if (folder / "results.csv").is_file():
        rows = load_results(folder)
        users: dict[str, list[str]] = {}
        for r in rows:
            if r["user"] not in users.setdefault(r["seed"], []):
                users[r["seed"]].append(r["user"])
        results.update(n_runs=len(rows), users=users)
    results["examples"] = _examples(folder, [d["label"] for d in cfg.get("defenses", [])],
                                    [str(a.get("label")) for a in cfg.get("attacks", []) if isinstance(a, dict)])
    have = [n for n in ("config.resolved.json" if (folder / "config.resolved.json").is_file() else "config.toml",
                        "summary.csv", "results.csv", "detection.csv", "table.md") if (folder / n).is_file()]
    results["notes"] = [f"rebuilt by `puface report html` from {', '.join(have)}"
                        + (", examples/" if results["examples"] else "")
                        + ": results.json is not in this folder, so no run environment, timings"
                        + (" or ROC curves (the detection table gives AUC, TPR and FPR)"
                           if (folder / "detection.csv").is_file() else "")]
    return results


def report_inputs(folder: str | Path) -> tuple[dict[str, Any], str]:
    """(results dict, table Markdown) for `render_report` from a run folder: its results.json when there, else
    derived from its CSVs and config; table.md either way. Errors (PufaceError) name the missing file."""
    folder = Path(folder)
    if (folder / "results.json").is_file():
        results = _read_json(folder / "results.json")
    else:
        results = _from_tables(folder)  # a folder without summary.csv or results.csv: load_summary's one-line error
    path = folder / "table.md"
    if not path.is_file():
        raise PufaceError(f"{path}: not found (the report shows the tables the run wrote there)")
    try:
        table_md = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PufaceError(f"{path}: cannot be read ({e})") from None
    return results, table_md


def rebuild_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of the finished run in `folder` again and write it atomically to `out` (default
    folder/report.html); no other file is written. Returns the path written."""
    folder = Path(folder)
    path = Path(out) if out is not None else folder / "report.html"
    if path.resolve() in {(folder / n).resolve() for n in INPUTS}:
        raise PufaceError(f"{path}: is one of the run's own files the report is built from; write it elsewhere")
    results, table_md = report_inputs(folder)
    atomic_write_bytes(path, render_report(folder, results, table_md).encode("utf-8"))
    return path
