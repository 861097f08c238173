"""What every benchmark in bench/ writes: its tables, rewritten in place under bench/results/ (timm-style).

    write_tables("models", "Face models: quality and CPU cost", tables, out_dir)

writes `<out_dir>/models.csv` (one row per measured configuration, the raw numbers) and `models.md`: a
header with the command that produced it, the date, the machine and the in-process baseline, then each
table as Markdown. Both are written atomically. Paths in the files are as the user gave them.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from puface.io.images import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Table:
    """One table: `rows` (dicts of raw values) and its `columns`: (key, header, format) with format a
    format spec ("{:.1f}") or a function of the row; `csv` names the CSV file's suffix ("" = <name>.csv)."""

    title: str
    rows: list[dict[str, Any]]
    columns: Sequence[tuple[str, str, str | Callable[[dict], str]]]
    notes: str = ""
    csv: str = ""
    extra_csv_keys: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        head = "| " + " | ".join(h for _, h, _ in self.columns) + " |"
        lines = [f"### {self.title}", "", head, "|" + "---|" * len(self.columns)]
        for r in self.rows:
            cells = []
            for key, _, fmt in self.columns:
                v = fmt(r) if callable(fmt) else (fmt.format(r[key]) if r.get(key) is not None else "-")
                cells.append(str(v))
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines)


def command_line() -> str:
    """The command as it was typed (the script relative to the repository)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    text = "python " + " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])
    home = os.environ.get("PUFACE_DATA")
    return text.replace(home.rstrip("/"), "$PUFACE_DATA") if home else text


def machine() -> str:
    """CPU model, cores, torch and its threads, load average: the facts a timing is read against."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{model}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load} (1/5/15 min) at the end")


def write_tables(name: str, title: str, tables: Sequence[Table], out_dir: Path | str = RESULTS, *,
                 about: str = "", baseline: str = "") -> list[Path]:
    """Write `<name>.md` (all tables) and one CSV per distinct `Table.csv` suffix; returns the paths."""
    rows: dict[str, list[dict]] = {}
    for t in tables:
        keys = [k for k, _, _ in t.columns if any(k in r for r in t.rows)] + t.extra_csv_keys
        rows.setdefault(t.csv, []).extend({"table": t.title, **{k: r.get(k) for k in keys}} for r in t.rows)
    return write_report(name, title, "\n\n".join(t.markdown() for t in tables), rows, out_dir, about=about, baseline=baseline)


def write_report(name: str, title: str, body: str, rows: dict[str, list[dict]], out_dir: Path | str = RESULTS, *,
                 about: str = "", baseline: str = "") -> list[Path]:
    """Write `<name>.md` (a header, then the Markdown `body`) and `<name>[-<suffix>].csv` for each entry
    of `rows` (suffix -> rows as dicts); returns the paths."""
    out_dir = Path(out_dir)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    md = [f"# {title}", "", f"Regenerate: `{command_line()}`", "", f"Measured {stamp} on {machine()}."]
    if baseline:
        md += ["", f"Baseline in the same process: {baseline}"]
    if about:
        md += ["", about]
    md += ["", body]
    paths = [out_dir / f"{name}.md"]
    atomic_write_bytes(paths[0], ("\n".join(md) + "\n").encode("utf-8"))
    for suffix, rs in rows.items():
        fields: list[str] = []
        for r in rs:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rs)
        path = out_dir / f"{name}{'-' + suffix if suffix else ''}.csv"
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
        paths.append(path)
    print(f"written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return paths


def shown(path: Path | str) -> str:
    """A data path as the tables show it: as given when relative, else its last two parts."""
    p = Path(path)
    return str(p) if not p.is_absolute() else str(Path(*p.parts[-2:])) if len(p.parts) > 2 else p.name
