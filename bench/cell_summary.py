"""Summaries of a `puface reproduce` output folder that the report does not print (bench/RESULTS.md, issue 8).

    python bench/cell_summary.py defenses runs/lfw-baselines-v4
        per defense, over the white-box cells of summary.csv: mean ASR, min / max cell, mean normal accuracy
        (--attack LABEL: that attack's cells only, each as a column)
    python bench/cell_summary.py users runs/lfw-lowkey-ensemble-v4 --attack lowkey-ensemble \
        --users Angelina_Jolie,George_HW_Bush,Jose_Maria_Aznar,Julie_Gerberding,Trent_Lott
        ASR with PuFace per victim / trainer from results.csv, for the named users, the others and all
    python bench/cell_summary.py repeats runs/lfw-ablations-v4seeds --quality bench/results/lfw-ablations-v4/quality
        defenses grouped by recipe (NAME and its repeats NAME-s1, NAME-s2, ...): per white-box cell the mean
        and [min, max] over the repeats, and from `bench_purifier.py quality` JSONs (<label>.json) the
        held-out natural PSNR and LowKey cosines
    python bench/cell_summary.py compare bench/results/lfw-v5 --other bench/results/lfw-cold
        two runs of the same grid: how many summary.csv rows have the same ASR and normal accuracy, and
        the rows that differ
    python bench/cell_summary.py draws bench/results/lfw-fawkes-cap bench/results/lfw-fawkes-cap-seed1 \
        bench/results/lfw-fawkes-project-seed2 bench/results/lfw-fawkes-project-seed3 \
        bench/results/lfw-fawkes-project-seed4 --attack-suffix=-project
        runs of one grid on several draws (seeds): per white-box cell found in every folder, the
        no-defense ASR per draw (bold below 95%), its mean and PuFace's range; then how far normal accuracy
        moved between no defense and PuFace

ASR and accuracy in %, as Markdown rows.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from train_ablations import split_name  # bench/ is on sys.path when this script runs


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _summary(folder: Path) -> list[tuple[dict, float, float]]:
    """summary.csv's rows with their mean ASR and normal accuracy in %."""
    return [(r, 100 * float(r["asr_mean"]), 100 * float(r["normal_acc_mean"]))
            for r in csv.DictReader(open(folder / "summary.csv", encoding="utf-8"))]


def defenses(folder: Path, attack: str | None = None) -> None:
    """Per defense over the white-box cells (of one attack, with each cell as a column, when `attack`)."""
    cells: dict[str, dict[tuple[str, str], tuple[float, float]]] = defaultdict(dict)
    for r, asr, acc in _summary(folder):
        if r["setting"] == "white-box" and (attack is None or r["attack"] == attack):
            cells[r["defense"]][(r["attack"], r["victim"], r["trainer"])] = (asr, acc)
    if not cells:
        raise SystemExit(f"{folder}/summary.csv: no white-box cells" + (f" of attack {attack!r}" if attack else ""))
    cols = sorted({k for v in cells.values() for k in v}) if attack else []
    head = "".join(f" {v} {t} |" for _, v, t in cols)
    print(f"| defense |{head} mean white-box ASR | min cell | max cell | normal acc. (white-box cells) |")
    print("|---" * (len(cols) + 5) + "|")
    for name, v in cells.items():
        asr = [a for a, _ in v.values()]
        per = "".join(f" {v[c][0]:.1f} |" if c in v else " - |" for c in cols)
        print(f"| {name} |{per} {_mean(asr):.1f} | {min(asr):.1f} | {max(asr):.1f} | {_mean([n for _, n in v.values()]):.1f} |")


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


def _recipe(label: str) -> str:
    """A grid defense label without its repeat suffix: "ref-s2" -> "ref"."""
    return split_name(label, known=None)[0]


def _span(xs: list[float], digits: int = 1) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{_mean(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def repeats(folder: Path, quality: Path | None) -> None:
    import json

    cells: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    normal: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, asr, acc in _summary(folder):
        if r["setting"] == "white-box":
            cells[_recipe(r["defense"])][(r["attack"], r["victim"])][r["defense"]] = asr
            normal[_recipe(r["defense"])][r["defense"]].append(acc)
    keys = sorted({k for c in cells.values() for k in c})
    head = [f"{a} / {v}" for a, v in keys] + ["mean white-box", "normal acc."]
    if quality:
        head += ["PSNR natural (dB)", "LowKey cos dlib / SFace"]
    print("| recipe | runs | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 2) + "|")
    for recipe, c in cells.items():
        runs = sorted(c[keys[0]])
        row = [_span([c[k][d] for d in runs]) for k in keys]
        row.append(_span([_mean([c[k][d] for k in keys]) for d in runs]))
        row.append(_span([_mean(normal[recipe][d]) for d in runs]))
        if quality:
            q = [json.loads((quality / f"{d}.json").read_text()) for d in runs if (quality / f"{d}.json").is_file()]
            if len(q) == len(runs):
                row.append(_span([x["natural"]["psnr_purified_natural"] for x in q], 2))
                row.append(_span([x["lowkey"]["cos_purified_dlib-resnet29"] for x in q], 3) + " / "
                           + _span([x["lowkey"]["cos_purified_sface"] for x in q], 3))
            else:
                row += ["-", "-"]
        print(f"| {recipe} | {len(runs)} | " + " | ".join(row) + " |")


def compare(folder: Path, other: Path) -> None:
    def rows(f: Path) -> dict[tuple, tuple[float, float]]:
        return {(r["attack"], r["victim"], r["trainer"], r["defense"]): (asr, acc) for r, asr, acc in _summary(f)}

    a, b = rows(folder), rows(other)
    if set(a) != set(b):
        raise SystemExit(f"not the same grid: {len(set(a) ^ set(b))} rows are in only one of the two summary.csv files")
    changed = [k for k in a if a[k] != b[k]]
    print(f"{len(a) - len(changed)} of {len(a)} rows identical (ASR and normal accuracy)\n")
    if changed:
        print("| attack | victim | trainer | defense | ASR | normal acc. |\n|---|---|---|---|---|---|")
        for k in changed:
            print("| " + " | ".join(k) + f" | {a[k][0]:.1f} -> {b[k][0]:.1f} | {a[k][1]:.2f} -> {b[k][1]:.2f} |")


def draws(folders: list[Path], attack_suffix: str = "") -> None:
    """One row per white-box cell present in every folder (attack labels ending in `attack_suffix`)."""
    runs = [{(r["attack"], r["victim"], r["trainer"], r["defense"]): (asr, acc) for r, asr, acc in _summary(f)
             if r["setting"] == "white-box" and r["attack"].endswith(attack_suffix)} for f in folders]
    cells = [k[:3] for k in runs[0] if k[3] == "none" and all(k in run and (*k[:3], "puface") in run for run in runs)]
    if not cells:
        raise SystemExit("no white-box cell with no defense and PuFace in every folder")
    print("| attack | victim | trainer | " + " | ".join(f.name for f in folders) + " | mean | PuFace, range over draws |")
    print("|---" * (len(folders) + 5) + "|")
    moved, accs = [], []
    for c in cells:
        none = [run[(*c, "none")][0] for run in runs]
        puface = [run[(*c, "puface")][0] for run in runs]
        per = " | ".join(f"**{a:.1f}**" if a < 95 else f"{a:.1f}" for a in none)
        print(f"| {' | '.join(c)} | {per} | {_mean(none):.1f} | {min(puface):.1f}-{max(puface):.1f} |")
        for run in runs:
            a, b = run[(*c, "none")][1], run[(*c, "puface")][1]
            moved.append(abs(a - b))
            accs += [a, b]
    print(f"\nnormal accuracy {min(accs):.1f}-{max(accs):.1f}%, no defense vs PuFace at most {max(moved):.2f} points apart")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["defenses", "users", "repeats", "compare", "draws"])
    ap.add_argument("folder", type=Path, help="a `puface reproduce` output folder")
    ap.add_argument("more", type=Path, nargs="*", help="draws: the other draws' output folders")
    ap.add_argument("--attack", help="users: attack label; defenses: only this attack's cells, one column each")
    ap.add_argument("--users", default="", help="users: comma-separated names of the first group")
    ap.add_argument("--defense", default="puface", help="users: defense label (default: puface)")
    ap.add_argument("--quality", type=Path, default=None, help="repeats: folder of bench_purifier.py quality JSONs")
    ap.add_argument("--other", type=Path, default=None, help="compare: the second output folder")
    ap.add_argument("--attack-suffix", default="", help="draws: only attack labels ending in this")
    args = ap.parse_args()
    if args.more and args.mode != "draws":
        ap.error(f"{args.mode} takes one folder")
    if args.mode == "draws":
        return draws([args.folder, *args.more], args.attack_suffix)
    if args.mode == "defenses":
        defenses(args.folder, args.attack)
    elif args.mode == "repeats":
        repeats(args.folder, args.quality)
    elif args.mode == "compare":
        if not args.other:
            ap.error("compare needs --other")
        compare(args.folder, args.other)
    else:
        if not args.attack:
            ap.error("users needs --attack")
        users(args.folder, args.attack, set(filter(None, args.users.split(","))), args.defense)


if __name__ == "__main__":
    main()
