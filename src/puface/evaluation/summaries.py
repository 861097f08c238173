"""Tables derived from finished experiments (the `puface report` command): the headline table, and
per-cell summaries the report does not print. Each reads an experiment's output folder (`summary.csv`,
and `results.csv` where it needs the per-run rows) and returns Markdown; ASR and accuracy in %.

* `headline`: per attack, victim and trainer, ASR and normal accuracy with no defense, with PuFace and
  with the best baseline - the defense without a purifier with the lowest mean ASR over the white-box cells,
  chosen once for the whole table (not per row, which would flatter the baselines with hindsight per cell) - plus
  the best baseline per row. Several folders (one config run with other `--seed`s) are pooled from their runs.
* `defenses`: per defense over the white-box cells: mean, min and max cell ASR, normal accuracy.
* `users`: ASR of one attack and defense per victim / trainer, for named users vs the others.
* `repeats`: defenses grouped by recipe (NAME and its repeats NAME-s1, NAME-s2, ...): mean [min, max].
* `compare`: two runs of one grid: how many summary rows agree, and the rows that differ.
* `draws`: one grid on several draws (seeds): the no-defense ASR per draw and PuFace's range.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from ..utils.errors import PufaceError
from ..utils.tomlconfig import read_toml
from .tables import GROUP_KEYS, count_of, md_cell, summarise_rows

__all__ = ["load_summary", "load_results", "load_pooled", "run_protocol", "QUERY_NOTE", "headline", "purifier_labels",
           "headline_markdown",
           "defenses_table", "users_table", "repeats_table", "compare_table", "draws_table", "NOT_BASELINES"]

NOT_BASELINES = {"none", "puface"}

#: what the headline's numbers mean for runs of the query-time protocol (table.md says the same at more length:
#: `tables.render_tables`)
QUERY_NOTE = ("Query-time protocol: the FR model is built from every identity's clean gallery photos; ASR = share of "
              "the protected users' cloaked probe photos (with the defense applied to them) not matched to the user; "
              "normal accuracy = accuracy on every other identity's probes.")

#: the columns the tables read from an output folder's summary.csv and results.csv
SUMMARY_COLUMNS = (*GROUP_KEYS, "asr_mean", "asr_std", "normal_acc_mean", "normal_acc_std", "n", "seeds")
RESULTS_COLUMNS = ("seed", "user", *GROUP_KEYS, "asr", "normal_acc")

#: config settings that change no ASR or accuracy (as `ExperimentConfig.fingerprint` leaves them out; and the seeds):
#: draws of one grid run with --no-detect, another [report] or batch size pool with the others
NOT_GRID = ("seeds", "source", "description", "report", "detection")
NOT_GRID_RUN = ("output", "cache", "batch_size", "cloak_batch_size")


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        if (path.parent / "runs.jsonl").is_file():
            raise PufaceError(
                f"{path}: not found: the run in {path.parent} has not finished (its tables are written at "
                "the end); run the same `puface reproduce` / `puface evaluate` command again to resume it"
            )
        raise PufaceError(f"{path}: not found (expected a `puface reproduce` output folder)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    need = SUMMARY_COLUMNS if path.name == "summary.csv" else RESULTS_COLUMNS
    missing = [c for c in need if c not in (reader.fieldnames or ())]
    if missing:  # another program's CSV of that name: one line, not a KeyError
        raise PufaceError(f"{path}: not a `puface reproduce` {path.name} (missing column(s): {', '.join(missing)})")
    return rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _number(text: str) -> float:
    """A number of summary.csv / results.csv: `tables.write_csv` writes NaN (no test photo) as an empty cell."""
    return float(text) if text != "" else float("nan")


def run_protocol(folder: Path) -> str:
    """The protocol of the run in `folder` ("training" or "query"), from its config.resolved.json, else its
    config.toml (a trimmed result folder); "training" (the default) when neither names one or can be read."""
    for name in ("config.resolved.json", "config.toml"):
        path = Path(folder) / name
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else read_toml(path)
            except (OSError, ValueError, PufaceError):
                continue
            if isinstance(cfg, dict):
                return str(cfg.get("protocol", "training"))
    return "training"


def load_summary(folder: Path) -> list[dict]:
    """summary.csv's rows with the four summary numbers as floats (fractions)."""
    rows = _csv(Path(folder) / "summary.csv")
    for r in rows:
        for k in ("asr_mean", "asr_std", "normal_acc_mean", "normal_acc_std"):
            r[k] = _number(r[k])
    return rows


def load_results(folder: Path) -> list[dict]:
    """results.csv's rows (one per run: seed, user, the cell, asr, normal_acc), as the text the file holds."""
    return _csv(Path(folder) / "results.csv")


def load_pooled(folders: list[Path]) -> list[dict]:
    """Summary rows over the per-run rows of several output folders of one config (other seeds): from their
    results.csv, or, where a folder was trimmed to its tables (docs/results/), from their summary.csv (means
    weighted by n, the standard deviation pooled exactly; the users column left out: who they were is not
    there). The grid is compared on config.resolved.json, or config.toml where a folder has none."""
    folders = [Path(f) for f in folders]
    resolved = all((f / "config.resolved.json").is_file() for f in folders)

    def config(folder: Path) -> dict:
        if resolved:
            return json.loads((folder / "config.resolved.json").read_text(encoding="utf-8"))
        if not (folder / "config.toml").is_file():
            raise PufaceError(f"{folder / 'config.toml'}: not found (pooling needs each folder's config.toml or "
                              "config.resolved.json, to check the folders ran one grid)")
        return read_toml(folder / "config.toml")

    def grid(cfg: dict) -> dict:
        out = {k: v for k, v in cfg.items() if k not in NOT_GRID}
        if isinstance(out.get("run"), dict):
            out["run"] = {k: v for k, v in out["run"].items() if k not in NOT_GRID_RUN}
        return out

    grids = [config(f) for f in folders]
    if any(grid(g) != grid(grids[0]) for g in grids[1:]):
        raise PufaceError(f"{', '.join(map(str, folders))}: not the same grid (configs differ beyond their seeds)")
    if not all((f / "results.csv").is_file() for f in folders):
        return _pool_summaries(folders, grids)
    runs, seen = [], set()
    for f in folders:
        for r in _csv(f / "results.csv"):
            key = (r["seed"], r["user"], *(r[k] for k in GROUP_KEYS))
            if key in seen:
                raise PufaceError(f"{f}: seed {r['seed']} is also in another folder; pool folders of different seeds")
            seen.add(key)
            runs.append({**r, "asr": _number(r["asr"]), "normal_acc": _number(r["normal_acc"])})
    return summarise_rows(runs)


def _pool_summaries(folders: list[Path], grids: list[dict]) -> list[dict]:
    """`load_pooled` from summary.csv files: per cell, the n-weighted means and the pooled sample standard
    deviation of the runs behind them (exact: what summarise_rows gives on the runs themselves)."""
    seen: dict[int, Path] = {}
    for f, g in zip(folders, grids):
        for seed in g.get("seeds", []):
            if seed in seen:
                raise PufaceError(f"{f}: seed {seed} is also in another folder; pool folders of different seeds")
            seen[seed] = f
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for f in folders:
        for r in load_summary(f):
            cells[tuple(r[k] for k in GROUP_KEYS)].append(r)
    out = []
    for key, rs in cells.items():
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        counts: dict[str, int] = {}
        for m in ("asr", "normal_acc"):  # each weighted by its own count: a run without an ASR has a normal accuracy
            parts = [(count_of(r, m), r[f"{m}_mean"], r[f"{m}_std"]) for r in rs if count_of(r, m) > 0]
            n = counts[m] = sum(k for k, _, _ in parts)
            mean = sum(k * v for k, v, _ in parts) / n if n else float("nan")
            ss = sum((k - 1) * sd ** 2 + k * (v - mean) ** 2 for k, v, sd in parts)
            row[f"{m}_mean"], row[f"{m}_std"] = mean, (ss / (n - 1)) ** 0.5 if n > 1 else (0.0 if n else float("nan"))
        row.update(n=counts["asr"], normal_acc_n=counts["normal_acc"], seeds=sum(int(r["seeds"]) for r in rs),
                   wall_s=round(sum(float(r.get("wall_s") or 0) for r in rs), 3))
        out.append(row)
    return out


def headline(rows: list[dict], puface: str = "puface", where: str = "summary", protocol: str = "training",
             purifiers: Iterable[str] = ()) -> dict[str, Any]:
    """The headline numbers of summary rows (see the module docstring); JSON-serialisable. A `puface` label
    that no row has is an error naming `where` (the rows' folders) and the labels there. `protocol`: the runs'
    ("training" or "query": `run_protocol`), which says what the ASR counts. A baseline is a defense without a
    purifier: not `none`, not a label starting with "puface" (as the paper table tells them), not one of
    `purifiers` (labels of defenses that hold one: `purifier_labels`)."""
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["attack"] != "clean":
            cells[(r["attack"], r["victim"], r["trainer"], r["setting"])][r["defense"]] = r
    labels = sorted({d for c in cells.values() for d in c})
    if puface not in labels:
        raise PufaceError(f"{where}: no defense labelled {puface!r} (defenses: {', '.join(labels) or 'none'}); the "
                          "headline compares the purifier with the others: name its label with --puface LABEL")
    baselines = sorted(d for d in set(labels) - NOT_BASELINES - {puface} - set(purifiers) if not d.startswith("puface"))
    white = [c for k, c in cells.items() if k[3] == "white-box"]

    def mean_of(d: str, cs, m: str = "asr") -> float:  # cells without a number (NaN: no test photo) left out
        vals = [c[d][f"{m}_mean"] for c in cs if d in c and c[d][f"{m}_mean"] == c[d][f"{m}_mean"]]
        return sum(vals) / len(vals) if vals else float("nan")

    # NaN compares false with everything: min() kept a baseline without a number when it came first
    best = (
        min(baselines, key=lambda d: (mean_of(d, white) != mean_of(d, white), mean_of(d, white))) if baselines else None
    )
    table = []
    for key in sorted(cells, key=lambda k: (k[3] != "white-box", k[0], k[1], k[2])):
        c = cells[key]
        row_best = min((d for d in baselines if d in c and c[d]["asr_mean"] == c[d]["asr_mean"]),
                       key=lambda d: (c[d]["asr_mean"], -c[d]["normal_acc_mean"]), default=None)
        table.append({"attack": key[0], "victim": key[1], "trainer": key[2], "setting": key[3],
                      **{f"{name}_{m}": c[d][f"{m}_mean"] if d in c else None
                         for name, d in (("none", "none"), ("puface", puface), ("best", best))
                         for m in ("asr", "normal_acc")},
                      "row_best": row_best, "row_best_asr": c[row_best]["asr_mean"] if row_best else None})
    means = {}
    for setting in ("white-box", "oblivious"):
        sub = [c for k, c in cells.items() if k[3] == setting]
        if sub:
            means[setting] = {d: {"asr": mean_of(d, sub), "normal_acc": mean_of(d, sub, "normal_acc")}
                              for d in ("none", puface, best) if d and any(d in c for c in sub)}
    return {"puface": puface, "protocol": protocol, "best_baseline": best, "rows": table, "means": means,
            "max_white_box_asr_puface": max((c[puface]["asr_mean"] for c in white if puface in c
                                             and c[puface]["asr_mean"] == c[puface]["asr_mean"]), default=None)}


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def _pct_of(v: float) -> str:
    """A number already in %, one decimal; "-" for NaN."""
    return "-" if v != v else f"{v:.1f}"


def _pct_range(xs: list[float]) -> str:
    """The range "min-max" of numbers already in %, one decimal, NaN left out; "-" when none is left."""
    xs = [x for x in xs if x == x]
    return f"{min(xs):.1f}-{max(xs):.1f}" if xs else "-"


def purifier_column(label: str) -> str:
    """How the headline names the purifier's columns: "PuFace" for the grids' own `puface` label, else the label
    shown (`--puface puface-step1.5`), so a table of another defense never reads as the paper's PuFace."""
    return "PuFace" if label == "puface" else md_cell(label)


def headline_markdown(h: dict[str, Any], settings: tuple[str, ...] = ("white-box", "oblivious")) -> str:
    """The headline table as Markdown (the rows of `settings`; the means of both), with the closing line
    naming the best baseline, and for a query-time run (`h["protocol"]`) what its ASR counts (`QUERY_NOTE`)."""
    b = h["best_baseline"]
    name = md_cell(b or "baseline")
    pu = purifier_column(h.get("puface", "puface"))
    out = [
        f"| attack | victim | trainer | setting | ASR none | ASR {pu} | ASR {name} "
        f"| normal acc. none | normal acc. {pu} | normal acc. {name} | best baseline in this row (ASR) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in h["rows"] if r["setting"] in settings):
        out.append(
            f"| {md_cell(r['attack'])} | {md_cell(r['victim'])} | {md_cell(r['trainer'])} | {r['setting']} "
            f"| {_pct(r['none_asr'])} | **{_pct(r['puface_asr'])}** | {_pct(r['best_asr'])} "
            f"| {_pct(r['none_normal_acc'])} | {_pct(r['puface_normal_acc'])} | {_pct(r['best_normal_acc'])} | "
            + (f"{md_cell(r['row_best'])} ({_pct(r['row_best_asr'])}) |" if r["row_best"] else "- |")
        )
    for setting, m in h["means"].items():
        cols = [m.get(d, {}) for d in ("none", h.get("puface", "puface"), b)]
        out.append(
            f"| **mean ({setting})** | | | | {_pct(cols[0].get('asr'))} | **{_pct(cols[1].get('asr'))}** "
            f"| {_pct(cols[2].get('asr'))} | "
            f"{_pct(cols[0].get('normal_acc'))} | {_pct(cols[1].get('normal_acc'))} "
            f"| {_pct(cols[2].get('normal_acc'))} | |"
        )
    best = f"best baseline over the white-box cells: {b}" if b else "no baseline defense in these results"
    out += ["", f"{best}; highest white-box ASR with {pu}: {_pct(h['max_white_box_asr_puface'])}%"]
    if h.get("protocol") == "query":  # the same numbers mean another thing than in the training-time tables
        out += ["", QUERY_NOTE]
    return "\n".join(out)


def _cells_pct(folder: Path) -> list[tuple[dict, float, float]]:
    """summary.csv's rows with their mean ASR and normal accuracy in %."""
    return [(r, 100 * r["asr_mean"], 100 * r["normal_acc_mean"]) for r in load_summary(folder)]


def defenses_table(folder: Path, attack: str | None = None) -> str:
    """Per defense over the white-box cells (of one attack, with each cell as a column, when `attack`)."""
    cells: dict[str, dict[tuple[str, str, str], tuple[float, float]]] = defaultdict(dict)
    for r, asr, acc in _cells_pct(folder):
        if r["setting"] == "white-box" and (attack is None or r["attack"] == attack):
            cells[r["defense"]][(r["attack"], r["victim"], r["trainer"])] = (asr, acc)
    if not cells:
        raise PufaceError(f"{folder}/summary.csv: no white-box cells" + (f" of attack {attack!r}" if attack else ""))
    cols = sorted({k for v in cells.values() for k in v}) if attack else []
    head = "".join(f" {md_cell(v)} {md_cell(t)} |" for _, v, t in cols)
    out = [f"| defense |{head} mean white-box ASR | min cell | max cell | normal acc. (white-box cells) |",
           "|---" * (len(cols) + 5) + "|"]
    for name, v in cells.items():
        asrs = [a for a, _ in v.values() if a == a]  # a cell without a number (NaN: no test photo) left out
        accs = [n for _, n in v.values() if n == n]
        per = "".join(f" {_pct_of(v[c][0])} |" if c in v else " - |" for c in cols)
        span = f"{_mean(asrs):.1f} | {min(asrs):.1f} | {max(asrs):.1f}" if asrs else "- | - | -"
        normal = f"{_mean(accs):.1f}" if accs else "-"
        out.append(f"| {md_cell(name)} |{per} {span} | {normal} |")
    return "\n".join(out)


def users_table(folder: Path, attack: str, named: set[str], defense: str = "puface") -> str:
    """ASR of `attack` under `defense` per victim / trainer (the mean over runs), for the `named` users, the others
    and all; each group's label counts its users, and its runs where a folder of several seeds has more."""
    asr: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    who: dict[str, set[str]] = defaultdict(set)
    for r in _csv(Path(folder) / "results.csv"):
        if r["attack"] == attack and r["defense"] == defense and r["asr"] != "":  # a user without a test photo: no ASR
            for g in ("named" if r["user"] in named else "others", "all"):
                asr[(r["victim"], r["trainer"])][g].append(100 * float(r["asr"]))
                who[g].add(r["user"])
    if not asr:
        raise PufaceError(f"{folder}/results.csv: no runs of attack {attack!r} with defense {defense!r}")
    cols = sorted(asr)
    out = [
        "| users | " + " | ".join(md_cell(f"{v} {t}") for v, t in cols) + " | mean |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for g in ("named", "others", "all"):
        vals = [_mean(asr[c][g]) for c in cols if asr[c][g]]
        if len(vals) == len(cols):
            users, runs = len(who[g]), max(len(asr[c][g]) for c in cols)
            count = f"{users}" if runs == users else f"{users} user{'s' * (users != 1)}, {runs} runs"
            out.append(f"| {g} ({count}) | " + " | ".join(f"{x:.1f}" for x in vals) + f" | {_mean(vals):.1f} |")
    return "\n".join(out)


def recipe_of(label: str) -> str:
    """A defense label without its repeat suffix: "ref-s2" -> "ref" (a recipe repeated with train.seed 2)."""
    base, _, tail = label.rpartition("-s")
    return base if base and tail.isdigit() else label


def purifier_labels(folder: Path) -> set[str]:
    """The defense labels of `folder`'s run whose defense holds a purifier anywhere (a `puface` step of a composition,
    a view, a branch of `random`; a retrained file under any label), from its config.resolved.json, else its
    config.toml (the entries written in it; none when it extends another); building a defense loads no weights."""
    from ..defenses import default_label, holds_purifier

    folder = Path(folder)
    entries: list[tuple[str, Any]] = []
    path = folder / "config.resolved.json"
    if path.is_file():
        try:
            entries = [(str(d.get("label")), d.get("spec")) for d in
                       json.loads(path.read_text(encoding="utf-8")).get("defenses") or [] if isinstance(d, dict)]
        except (OSError, ValueError, AttributeError):
            entries = []
    elif (folder / "config.toml").is_file():
        try:
            raw = read_toml(folder / "config.toml")
        except PufaceError:
            raw = {}
        for d in raw.get("defenses") or [] if "extends" not in raw else []:
            spec = {k: v for k, v in d.items() if k != "label"} if isinstance(d, dict) else d
            try:
                label = str(d.get("label") or default_label(spec)) if isinstance(d, dict) else default_label(spec)
            except PufaceError:
                continue
            entries.append((label, spec))
    return {label for label, spec in entries if holds_purifier(spec)}


def _names_weights(spec: Any) -> bool:
    return (isinstance(spec, dict) and "weights" in spec) or (isinstance(spec, str) and "weights=" in spec)


def _trained_labels(folder: Path) -> set[str] | None:
    """The defense labels of `folder`'s run that name a purifier file (a `weights` option: the ones a recipe repeats
    with other train.seed), from its config.resolved.json, else from the config.toml it wrote (a folder trimmed to its
    tables, docs/results/: the entries as written, a label left out given its default); None when neither is there
    or the config.toml extends another (its entries are not all in it)."""
    path = folder / "config.resolved.json"
    if path.is_file():
        return {d.get("label") for d in json.loads(path.read_text(encoding="utf-8")).get("defenses") or []
                if _names_weights(d.get("spec"))}
    path = folder / "config.toml"
    if not path.is_file():
        return None
    from ..defenses import default_label

    raw = read_toml(path)
    if "extends" in raw:
        return None
    out = set()
    for d in raw.get("defenses") or []:
        if _names_weights(d):
            out.add(str(d.get("label") or default_label({k: v for k, v in d.items() if k != "label"}))
                    if isinstance(d, dict) else default_label(d))
    return out


def _span(xs: list[float], digits: int = 1) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{_mean(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def repeats_table(folder: Path, quality: Path | None = None) -> str:
    """Defenses grouped by recipe (labels "<recipe>-s<N>" of purifier files; every label of another defense is its
    own row, when the folder's config.resolved.json or config.toml says which are which): per white-box cell the
    mean and [min, max] over the repeats; with `quality` (a folder of `bench/bench_purifier.py quality` JSONs,
    <label>.json), the held-out natural PSNR and LowKey cosines."""
    cells: dict[str, dict[tuple[str, str, str], dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    normal: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    trained = _trained_labels(folder)  # blur-s1 and blur-s2 (sigma 1 and 2) are two baselines, not two repeats

    def recipe(label: str) -> str:
        return recipe_of(label) if trained is None or label in trained else label

    for r, asr, acc in _cells_pct(folder):
        if r["setting"] == "white-box":  # a cell: attack, victim and trainer
            cells[recipe(r["defense"])][(r["attack"], r["victim"], r["trainer"])][r["defense"]] = asr
            normal[recipe(r["defense"])][r["defense"]].append(acc)
    keys = sorted({k for c in cells.values() for k in c})
    head = [md_cell(f"{a} / {v} / {t}") for a, v, t in keys] + ["mean white-box", "normal acc."]
    if quality:
        head += ["PSNR natural (dB)", "LowKey cos dlib / SFace"]
    out = ["| recipe | runs | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for name, c in cells.items():
        runs = sorted(c[keys[0]])
        row = [_span([c[k][d] for d in runs]) for k in keys]
        row.append(_span([_mean([c[k][d] for k in keys]) for d in runs]))
        row.append(_span([_mean(normal[name][d]) for d in runs]))
        if quality:
            q = [json.loads((quality / f"{d}.json").read_text()) for d in runs if (quality / f"{d}.json").is_file()]
            if len(q) == len(runs):
                row.append(_span([x["natural"]["psnr_purified_natural"] for x in q], 2))
                row.append(_span([x["lowkey"]["cos_purified_dlib-resnet29"] for x in q], 3) + " / "
                           + _span([x["lowkey"]["cos_purified_sface"] for x in q], 3))
            else:
                row += ["-", "-"]
        out.append(f"| {md_cell(name)} | {len(runs)} | " + " | ".join(row) + " |")
    return "\n".join(out)


def compare_table(folder: Path, other: Path) -> str:
    """Two runs of the same grid: how many summary.csv rows have the same ASR and normal accuracy, and
    the rows that differ."""
    def rows(f: Path) -> dict[tuple, tuple[float, float]]:
        return {(r["attack"], r["victim"], r["trainer"], r["defense"]): (asr, acc) for r, asr, acc in _cells_pct(f)}

    def same(x: tuple[float, float], y: tuple[float, float]) -> bool:  # no number in both (NaN) is the same
        return all(u == v or (u != u and v != v) for u, v in zip(x, y))

    a, b = rows(folder), rows(other)
    if set(a) != set(b):
        raise PufaceError(
            f"not the same grid: {len(set(a) ^ set(b))} rows are in only one of the two summary.csv files"
        )
    changed = [k for k in a if not same(a[k], b[k])]
    out = [f"{len(a) - len(changed)} of {len(a)} rows identical (ASR and normal accuracy)"]
    if changed:
        out += ["", "| attack | victim | trainer | defense | ASR | normal acc. |", "|---|---|---|---|---|---|"]
        out += [
            "| " + " | ".join(map(md_cell, k)) + f" | {a[k][0]:.1f} -> {b[k][0]:.1f} | {a[k][1]:.2f} -> {b[k][1]:.2f} |"
            for k in changed
        ]
    return "\n".join(out)


def draws_table(folders: list[Path], attack_suffix: str = "", puface: str = "puface") -> str:
    """One row per white-box cell present in every folder (attack labels ending in `attack_suffix`): the
    no-defense ASR per draw (bold below 95%), its mean and the range of the purifier (defense label `puface`, named as
    `headline` names it: `purifier_column`); then how far normal accuracy moved between no defense and the purifier.
    A number a cell lacks (NaN: no test photo) is "-" and left out of the mean and ranges."""
    runs = [{(r["attack"], r["victim"], r["trainer"], r["defense"]): (asr, acc) for r, asr, acc in _cells_pct(f)
             if r["setting"] == "white-box" and r["attack"].endswith(attack_suffix)} for f in folders]
    cells = [k[:3] for k in runs[0] if k[3] == "none" and all(k in run and (*k[:3], puface) in run for run in runs)]
    pu = purifier_column(puface)
    if not cells:
        labels = sorted({k[3] for run in runs for k in run})
        raise PufaceError(f"no white-box cell with no defense and {puface!r} in every folder (defenses there: "
                          f"{', '.join(labels) or 'none'}); name the purifier's label with --puface LABEL")
    out = [
        "| attack | victim | trainer | "
        + " | ".join(md_cell(Path(f).name) for f in folders)
        + f" | mean | {pu}, range over draws |",
        "|---" * (len(folders) + 5) + "|",
    ]

    moved, accs = [], []
    for c in cells:
        none = [run[(*c, "none")][0] for run in runs]
        per = " | ".join(f"**{a:.1f}**" if a < 95 else _pct_of(a) for a in none)
        known = [a for a in none if a == a]
        out.append(f"| {' | '.join(map(md_cell, c))} | {per} | {_pct_of(_mean(known) if known else float('nan'))} "
                   f"| {_pct_range([run[(*c, puface)][0] for run in runs])} |")
        for run in runs:
            a, b = run[(*c, "none")][1], run[(*c, puface)][1]
            if a == a and b == b:
                moved.append(abs(a - b))
            accs += [a, b]
    far = f"{max(moved):.2f} points apart" if moved else "- points apart"
    out += ["", f"normal accuracy {_pct_range(accs)}%, no defense vs {pu} at most {far}"]
    return "\n".join(out)
