"""One comparison table of cloak detectors from their measurement files (this folder's <variant>/ folders).

    python docs/studies/2026-12-05-detector-scoring/summarise.py > comparison.md

Each <variant>/ folder holds the CSV files of `python bench/bench_detect.py measure` (detect-attacks.csv,
detect-jpeg.csv, detect-fpr.csv; several runs' files may be named detect-*-attacks.csv and so on) and the
detection tables of `puface reproduce lfw-unseen-detect | lfw-unseen-surrogate-detect | lfw-adaptive-detect
--detector FILE` (<config>-detection.csv). Prints markdown: one column per variant.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).parent
VARIANTS = ["default", "edits-old", "default-net", "djw-net", "edits-net", "ej-net", "ejw-net", "ejw"]
PLAIN = ["fawkes-mid", "fawkes-high", "fawkes-high-sface", "lowkey"]


def rows(folder: Path, pattern: str) -> list[dict]:
    out: list[dict] = []
    for f in sorted(folder.glob(pattern)):
        with f.open(newline="") as fh:
            out += list(csv.DictReader(fh))
    return out


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def column(folder: Path) -> dict[str, str]:
    att = {r["attack"]: r for r in rows(folder, "detect*attacks.csv")}
    jpg = rows(folder, "detect*jpeg.csv")
    fpr = {r["set"]: float(r["fpr"]) for r in rows(folder, "detect*fpr.csv")}
    fam = {r["attack"]: r for r in rows(folder, "*detection.csv")}
    c: dict[str, str] = {}
    c["Fawkes low: AUC"] = f"{float(att['fawkes-low']['auc']):.4f}"
    c["Fawkes mid / high / high-SFace / LowKey: lowest TPR"] = pct(min(float(att[a]["tpr"]) for a in PLAIN))
    c["JPEG'd (q75-95) mid / high / high-SFace / LowKey: lowest AUC"] = \
        f"{min(float(r['auc']) for r in jpg if r['attack'] in PLAIN):.4f}"
    c["JPEG'd Fawkes low: lowest AUC"] = f"{min(float(r['auc']) for r in jpg if r['attack'] == 'fawkes-low'):.3f}"
    mf = [r for r in jpg if r["attack"] == "fawkes-high-mf"]
    c["JPEG'd Fawkes-MobileFace (unseen model): lowest AUC"] = f"{min(float(r['auc']) for r in mf):.4f}" if mf else "-"
    lk = [r for r in jpg if r["attack"] == "lowkey-mf"]
    c["JPEG'd LowKey-MobileFace: lowest AUC"] = f"{min(float(r['auc']) for r in lk):.4f}" if lk else "-"

    def fp(pred) -> str:
        vals = [v for k, v in fpr.items() if pred(k)]
        return f"{100 * max(vals):.2f}%" if vals else "-"

    c["false positives: unseen LFW chips"] = fp(lambda k: k.startswith("natural test chips (lfw"))
    c["... JPEG q75 / q85 / q95 (highest)"] = fp(lambda k: "JPEG q" in k)
    c["... stored at 112 / 200 / 75 px (highest)"] = fp(lambda k: "stored at" in k)
    c["... sharpened (3 settings, highest)"] = fp(lambda k: "sharpen:" in k)
    c["... contrast x1.2 / x1.5 (highest)"] = fp(lambda k: "contrast:" in k)
    c["... gamma 1.5 / 2.2 / 0.7 (highest)"] = fp(lambda k: "gamma:" in k)
    c["... full LFW photos (--align)"] = fp(lambda k: k.startswith("full LFW"))
    c["... johns chips"] = fp(lambda k: k.startswith("johns"))
    plain_fam = [r for a, r in fam.items() if a != "fawkes-high-adaptive-both"]
    if plain_fam:
        c["unseen families + adaptive through v6 (10 attacks): lowest AUC"] = f"{min(float(r['auc']) for r in plain_fam):.4f}"
        c["... lowest TPR"] = pct(min(float(r["tpr"]) for r in plain_fam))
    both = fam.get("fawkes-high-adaptive-both")
    if both:
        c["adaptive through photo + v6: AUC / TPR"] = f"{float(both['auc']):.4f} / {pct(float(both['tpr']))}"
    return c


def main() -> None:
    cols = {v: column(HERE / v) for v in VARIANTS if (HERE / v).is_dir()}
    keys = list(dict.fromkeys(k for c in cols.values() for k in c))
    print("| | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k in keys:
        print(f"| {k} | " + " | ".join(c.get(k, "-") for c in cols.values()) + " |")


if __name__ == "__main__":
    sys.exit(main())
