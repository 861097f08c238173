"""The headline table (README "Results") from a `puface reproduce` output folder's summary.csv.

Per attack, victim and trainer: ASR and normal accuracy with no defense, with PuFace, and with the best
baseline - the one with the lowest mean ASR over the white-box cells, chosen once for the whole table
(not per row, which would flatter the baselines with hindsight per cell) - plus the best baseline per
row in a last column for the reader who wants it.

    python bench/headline.py runs/lfw                # Markdown to stdout
    python bench/headline.py runs/lfw --json out.json
    python bench/headline.py runs/lfw runs/lfw-seed1 # pooled over both folders' users and seeds

Several folders (the same config run with other `--seed`s) are pooled from their per-run results.csv:
means and the cell maximum are then over every (user, seed) of all of them.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

NOT_BASELINES = {"none", "puface"}


def load(folder: Path) -> list[dict]:
    rows = list(csv.DictReader(open(folder / "summary.csv", encoding="utf-8")))
    for r in rows:
        for k in ("asr_mean", "asr_std", "normal_acc_mean", "normal_acc_std"):
            r[k] = float(r[k])
    return rows


def _grid_without_seeds(folder: Path) -> dict:
    cfg = json.loads((folder / "config.resolved.json").read_text())
    return {k: v for k, v in cfg.items() if k not in ("seeds", "source")}


def load_pooled(folders: list[Path]) -> list[dict]:
    """Summary rows over the per-run rows of several output folders of one config (other seeds)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from puface.evaluation.tables import GROUP_KEYS, summarise_rows

    grids = [_grid_without_seeds(f) for f in folders]
    if any(g != grids[0] for g in grids[1:]):
        raise SystemExit(f"{', '.join(map(str, folders))}: not the same grid (configs differ beyond their seeds)")
    runs, seen = [], set()
    for f in folders:
        for r in csv.DictReader(open(f / "results.csv", encoding="utf-8")):
            key = (r["seed"], r["user"], *(r[k] for k in GROUP_KEYS))
            if key in seen:
                raise SystemExit(f"{f}: seed {r['seed']} is also in another folder; pool folders of different seeds")
            seen.add(key)
            runs.append({**r, "asr": float(r["asr"]), "normal_acc": float(r["normal_acc"])})
    return summarise_rows(runs)


def headline(rows: list[dict], puface: str = "puface") -> dict:
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["attack"] == "clean":
            continue
        cells[(r["attack"], r["victim"], r["trainer"], r["setting"])][r["defense"]] = r
    baselines = sorted({d for c in cells.values() for d in c} - NOT_BASELINES - {puface})
    white = [c for k, c in cells.items() if k[3] == "white-box"]

    def mean_asr(d: str, cs) -> float:
        vals = [c[d]["asr_mean"] for c in cs if d in c]
        return sum(vals) / len(vals) if vals else float("nan")

    best = min(baselines, key=lambda d: mean_asr(d, white)) if baselines else None
    table = []
    for key in sorted(cells, key=lambda k: (k[3] != "white-box", k[0], k[1], k[2])):
        c = cells[key]
        row_best = min((d for d in baselines if d in c), key=lambda d: (c[d]["asr_mean"], -c[d]["normal_acc_mean"]), default=None)
        table.append({"attack": key[0], "victim": key[1], "trainer": key[2], "setting": key[3],
                      **{f"{name}_{m}": c[d][f"{m}_mean"] if d in c else None
                         for name, d in (("none", "none"), ("puface", puface), ("best", best))
                         for m in ("asr", "normal_acc")},
                      "row_best": row_best, "row_best_asr": c[row_best]["asr_mean"] if row_best else None})
    summary = {}
    for setting in ("white-box", "oblivious"):
        sub = [c for k, c in cells.items() if k[3] == setting]
        if sub:
            summary[setting] = {d: {"asr": mean_asr(d, sub), "normal_acc": sum(c[d]["normal_acc_mean"] for c in sub if d in c) / max(1, sum(d in c for c in sub))}
                                for d in ("none", puface, best) if d}
    return {"best_baseline": best, "rows": table, "means": summary,
            "max_white_box_asr_puface": max((c[puface]["asr_mean"] for c in white if puface in c), default=None)}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown(h: dict) -> str:
    b = h["best_baseline"]
    out = [f"| attack | victim | trainer | setting | ASR none | ASR PuFace | ASR {b} | normal acc. none | normal acc. PuFace | normal acc. {b} | best baseline in this row (ASR) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in h["rows"]:
        out.append(f"| {r['attack']} | {r['victim']} | {r['trainer']} | {r['setting']} | {pct(r['none_asr'])} | **{pct(r['puface_asr'])}** | "
                   f"{pct(r['best_asr'])} | {pct(r['none_normal_acc'])} | {pct(r['puface_normal_acc'])} | {pct(r['best_normal_acc'])} | "
                   f"{r['row_best']} ({pct(r['row_best_asr'])}) |")
    for setting, m in h["means"].items():
        cols = [m.get(d, {}) for d in ("none", "puface", b)]
        out.append(f"| **mean ({setting})** | | | | {pct(cols[0].get('asr'))} | **{pct(cols[1].get('asr'))}** | {pct(cols[2].get('asr'))} | "
                   f"{pct(cols[0].get('normal_acc'))} | {pct(cols[1].get('normal_acc'))} | {pct(cols[2].get('normal_acc'))} | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="reproduce output folder(s); several are pooled")
    ap.add_argument("--puface", default="puface", help="defense label of the purifier")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = load(args.folders[0]) if len(args.folders) == 1 else load_pooled(args.folders)
    h = headline(rows, args.puface)
    print(markdown(h))
    print(f"\nbest baseline over the white-box cells: {h['best_baseline']}; "
          f"highest white-box ASR with PuFace: {pct(h['max_white_box_asr_puface'])}%")
    if args.json:
        args.json.write_text(json.dumps(h, indent=2))


if __name__ == "__main__":
    main()
