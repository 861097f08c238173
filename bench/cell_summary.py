"""Summaries of a `puface reproduce` output folder that the report does not print (bench/RESULTS.md, issue 8).

    python bench/cell_summary.py defenses runs/lfw-baselines-v4
        per defense, over the white-box cells of summary.csv: mean ASR, min / max cell, mean normal accuracy
    python bench/cell_summary.py users runs/lfw-lowkey-ensemble-v4 --attack lowkey-ensemble \
        --users Angelina_Jolie,George_HW_Bush,Jose_Maria_Aznar,Julie_Gerberding,Trent_Lott
        ASR with PuFace per victim / trainer from results.csv, for the named users, the others and all

ASR and accuracy in %, as Markdown rows.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def defenses(folder: Path) -> None:
    cells: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in csv.DictReader(open(folder / "summary.csv", encoding="utf-8")):
        if r["setting"] == "white-box":
            cells[r["defense"]].append((100 * float(r["asr_mean"]), 100 * float(r["normal_acc_mean"])))
    print("| defense | mean white-box ASR | min cell | max cell | normal acc. (white-box cells) |")
    print("|---|---|---|---|---|")
    for name, v in cells.items():
        asr = [a for a, _ in v]
        print(f"| {name} | {_mean(asr):.1f} | {min(asr):.1f} | {max(asr):.1f} | {_mean([n for _, n in v]):.1f} |")


def users(folder: Path, attack: str, named: set[str], defense: str) -> None:
    asr: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in csv.DictReader(open(folder / "results.csv", encoding="utf-8")):
        if r["attack"] == attack and r["defense"] == defense:
            group = "named" if r["user"] in named else "others"
            for g in (group, "all"):
                asr[(r["victim"], r["trainer"])][g].append(100 * float(r["asr"]))
    cols = sorted(asr)
    print("| users | " + " | ".join(f"{v} {t}" for v, t in cols) + " | mean |")
    print("|---" * (len(cols) + 2) + "|")
    for g in ("named", "others", "all"):
        vals = [_mean(asr[c][g]) for c in cols if asr[c][g]]
        if len(vals) == len(cols):
            n = len(asr[cols[0]][g])
            print(f"| {g} ({n}) | " + " | ".join(f"{x:.1f}" for x in vals) + f" | {_mean(vals):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["defenses", "users"])
    ap.add_argument("folder", type=Path, help="a `puface reproduce` output folder")
    ap.add_argument("--attack", help="users: attack label")
    ap.add_argument("--users", default="", help="users: comma-separated names of the first group")
    ap.add_argument("--defense", default="puface", help="users: defense label (default: puface)")
    args = ap.parse_args()
    if args.mode == "defenses":
        defenses(args.folder)
    else:
        if not args.attack:
            ap.error("users needs --attack")
        users(args.folder, args.attack, set(filter(None, args.users.split(","))), args.defense)


if __name__ == "__main__":
    main()
