"""Result tables: per-run rows -> summaries over users and seeds -> CSV and Markdown.

The Markdown follows the PuFace paper's layout (ASR without a defense and with PuFace, normal
accuracy without and with), then one row per defense (the baselines) for each victim and trainer,
then image quality and timing. Percentages are mean ± sample standard deviation over protected
users (and seeds); n is the number of runs (users x seeds) with an ASR, normal_acc_n of those with a normal accuracy
(a user without a test photo has no ASR, yet the FR model trained for that run still has one).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..defenses import holds_purifier
from .metrics import Summary, summarise

GROUP_KEYS = ("attack", "victim", "trainer", "defense", "setting")


def summarise_rows(rows: Iterable[dict]) -> list[dict]:
    """Group run rows by (attack, victim, trainer, defense, setting) and summarise over users/seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in GROUP_KEYS)].append(r)
    out = []
    for key, rs in groups.items():
        asr, acc = summarise(r["asr"] for r in rs), summarise(r["normal_acc"] for r in rs)
        out.append({
            **dict(zip(GROUP_KEYS, key)),
            "asr_mean": asr.mean, "asr_std": asr.std, "normal_acc_mean": acc.mean, "normal_acc_std": acc.std,
            "n": asr.n, "normal_acc_n": acc.n, "users": len({r["user"] for r in rs}),
            "seeds": len({r["seed"] for r in rs}),
            "wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in rs), 3),
        })
    return out


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Rows (dicts) as CSV with the union of their keys as header, written atomically."""
    from ..io.images import atomic_write_bytes
    from ..io.jobs import CSV_TEXT

    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_bytes(Path(path), buf.getvalue().encode(**CSV_TEXT))


def count_of(s: dict, key: str) -> int:
    """How many runs a summary row's `key` ("asr" or "normal_acc") is the mean of: `n` for the ASR, `normal_acc_n` for
    the normal accuracy (`n` in a summary written before it was counted apart)."""
    n = s.get(f"{key}_n") if key != "asr" else None
    return int(s["n"] if n is None or n == "" else n)


def _fmt(s: dict | None, key: str) -> str:
    if s is None:
        return "-"
    return Summary(s[f"{key}_mean"], s[f"{key}_std"], count_of(s, key)).format()


def md_cell(text: Any) -> str:
    """Text for a Markdown table cell: a `|` (in a free-text label from a config) escaped as `\\|`, so it does not
    split the cell (`report.markdown_to_html` reads it back)."""
    return str(text).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (order.index(v) if v in order else len(order), v))


def headline_defenses(defenses: Iterable[str], headline: Sequence[str] | None = None) -> list[str]:
    """The defenses the paper table shows beside "none", in the order of `defenses` (labels): those `headline` names
    (a config's [report] headline), else those labelled puface... (the shipped purifier's `puface`, its steps)."""
    shown = (lambda d: d.startswith("puface")) if headline is None else (lambda d: d in headline and d != "none")
    return [d for d in dict.fromkeys(defenses) if shown(d)]


def paper_table(summary: list[dict], *, attacks: Sequence[str] = (), victims: Sequence[str] = (),
                trainers: Sequence[str] = (), defenses: Sequence[str] = (),
                headline: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper-shaped table: per (attack, victim, trainer) ASR and normal accuracy
    with no defense and with the `headline` defenses (default: those labelled `puface...`), plus a mean row over
    the cloaked settings."""
    index = {tuple(s[k] for k in ("attack", "victim", "trainer", "defense")): s for s in summary}
    none = "none" if any(s["defense"] == "none" for s in summary) else None
    pufaces = headline_defenses(_ordered((s["defense"] for s in summary), defenses), headline)
    cols = ([none] if none else []) + pufaces
    header = ["attack", "victim", "setting", "trainer"]
    header += [f"ASR {('no defense' if d == 'none' else d)}" for d in cols]
    header += [f"normal acc. {('no defense' if d == 'none' else d)}" for d in cols]
    rows, means = [], defaultdict(list)  # (setting, kind, column) -> values
    for a in _ordered((s["attack"] for s in summary), attacks):
        for v in _ordered((s["victim"] for s in summary), victims):
            for t in _ordered((s["trainer"] for s in summary), trainers):
                cells = [index.get((a, v, t, d)) for d in cols]
                if not any(cells):
                    continue
                setting = next(c["setting"] for c in cells if c)
                rows.append(
                    [a, v, setting, t] + [_fmt(c, "asr") for c in cells] + [_fmt(c, "normal_acc") for c in cells]
                )
                if setting != "clean":
                    for j, c in enumerate(cells):
                        if c is not None:
                            for st in (setting, "all cloaked"):
                                means[st, "asr", j].append(c["asr_mean"])
                                means[st, "acc", j].append(c["normal_acc_mean"])

    def m(setting: str, kind: str, j: int) -> str:
        vals = [x for x in means.get((setting, kind, j), []) if not math.isnan(x)]
        return f"**{100 * sum(vals) / len(vals):.1f}**" if vals else "-"

    settings = [st for st in ("white-box", "oblivious") if any(k[0] == st for k in means)]
    for st in settings + (["all cloaked"] if len(settings) > 1 else []):
        rows.append(
            [f"**mean ({st})**", "", "", ""]
            + [m(st, "asr", j) for j in range(len(cols))]
            + [m(st, "acc", j) for j in range(len(cols))]
        )
    return header, rows


def defense_tables(
    summary: list[dict],
    *,
    attacks: Sequence[str] = (),
    victims: Sequence[str] = (),
    trainers: Sequence[str] = (),
    defenses: Sequence[str] = (),
) -> list[tuple[str, list[str], list[list[str]]]]:
    """For each (victim, trainer): one row per defense with the ASR of each attack and the normal
    accuracy averaged over the attacks."""
    index = {tuple(s[k] for k in ("attack", "victim", "trainer", "defense")): s for s in summary}
    atk = _ordered((s["attack"] for s in summary), attacks)
    out = []
    for v in _ordered((s["victim"] for s in summary), victims):
        for t in _ordered((s["trainer"] for s in summary), trainers):
            present = [a for a in atk if any(k[0] == a and k[1] == v and k[2] == t for k in index)]
            if not present:
                continue
            settings = {
                a: next(s["setting"] for k, s in index.items() if k[0] == a and k[1] == v and k[2] == t)
                for a in present
            }
            header = ["defense"] + [f"ASR {a}" + ("" if settings[a] == a else f" ({settings[a]})") for a in present]
            header += ["normal acc. (mean over attacks)"]
            rows = []
            for d in _ordered((s["defense"] for s in summary), defenses):
                cells = [index.get((a, v, t, d)) for a in present]
                if not any(cells):
                    continue
                accs = [c["normal_acc_mean"] for c in cells if c is not None and not math.isnan(c["normal_acc_mean"])]
                acc = f"{100 * sum(accs) / len(accs):.1f}" if accs else "-"
                rows.append([d] + [_fmt(c, "asr") for c in cells] + [acc])
            out.append((f"victim {v}, trainer {t}", header, rows))
    return out


def quality_table(
    quality: list[dict], *, attacks: Sequence[str] = (), defenses: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """PSNR and SSIM per (attack, defense); the PSNR of the images that differ from their natural image (images
    identical to it, `psnr_identical` of `n`, have an infinite PSNR: counted in the cell, not averaged)."""
    header = ["attack", "defense", "PSNR vs natural (dB)", "SSIM vs natural", "images"]
    rows = []
    order = {(a, d): i for i, (a, d) in enumerate((a, d) for a in attacks for d in defenses)}
    for q in sorted(quality, key=lambda q: order.get((q["attack"], q["defense"]), 1 << 30)):
        same = int(q.get("psnr_identical", 0))  # identical to the natural image: PSNR infinite, not averaged
        p = Summary(q["psnr_mean"], q["psnr_std"], q["n"] - same).format(percent=False, digits=2)
        if same:
            p = "identical (∞)" if same == q["n"] else f"{p} ({same} identical left out)"
        s = Summary(q["ssim_mean"], q["ssim_std"], q["n"]).format(percent=False, digits=4)
        rows.append([q["attack"], q["defense"], p, s, str(q["n"])])
    return header, rows


def _is_purifier(entry: Any) -> bool:
    """Whether a config's defense entry holds the purifier whatever its label (`defenses.holds_purifier`)."""
    spec = getattr(entry, "spec", None)
    return spec is not None and holds_purifier(spec)


def render_tables(
    cfg: Any, summary: list[dict], quality: list[dict], *, wall_s: float | None = None, sessions: int = 1
) -> str:
    """The Markdown results document (paper table, defense tables, image quality, timing)."""
    order = dict(
        attacks=[a.label for a in cfg.attacks], victims=list(cfg.victims),
        trainers=[t.label for t in cfg.trainers], defenses=[d.label for d in cfg.defenses],
    )
    # protected users per seed (a cell's n is users x seeds; the users column counts the distinct names over
    # all seeds, which two draws may share)
    n_users = max((s["n"] // max(1, s["seeds"]) for s in summary), default=0)
    parts = [f"## {cfg.name}: ASR and normal accuracy (%)", ""]
    if cfg.description:
        parts += [cfg.description.strip(), ""]
    if getattr(cfg, "protocol", "training") == "query":
        protocol = ("Query-time protocol: the FR model is built from every identity's clean gallery (training) photos; "
                    "the protected user's probe (test) photos are cloaked. ASR: share of the user's cloaked probes not "
                    "matched to the user (higher = the cloak protects). Normal accuracy: accuracy on every other "
                    "identity's probes. The defense is applied to every probe; the gallery is untouched.")
    else:
        protocol = ("ASR: share of the protected user's clean test photos not recognised as the user (higher = the "
                    "cloak protects). Normal accuracy: accuracy on every other identity's test photos. The defense is "
                    "applied to all training images; test photos are clean.")
    parts += [
        f"Mean ± standard deviation over {n_users} protected user(s) x {len(cfg.seeds)} seed(s) "
        f"(seeds {', '.join(map(str, cfg.seeds))}). {protocol} "
        "Setting: white-box = the FR model is built on the attacker's surrogate, oblivious = on another model, "
        "clean = no cloak.",
        "",
    ]
    chosen = (getattr(cfg, "report", None) or {}).get("headline")  # [report] headline: its defense columns
    header, rows = paper_table(summary, **order, headline=chosen)
    if len(header) > 4:  # columns for "none" and the purifier: a grid with neither has its numbers below alone
        parts += [_md_table(header, rows), ""]
    elif summary:
        parts += ['No "none" or PuFace defense in this grid: the numbers of each defense follow.', ""]
    defenses = {s["defense"] for s in summary}
    if chosen is None and not any(d.startswith("puface") for d in defenses):
        # no purifier column by default: a purifier labelled otherwise (a researcher's "mine") is left out; say so
        left = [d.label for d in cfg.defenses if d.label in defenses and _is_purifier(d)]
        if left:
            parts += [f"Not in this table: the purifier defense(s) {', '.join(left)}, labelled otherwise than "
                      "puface... (their numbers are under Every defense); headline = [labels] in the config's "
                      "[report] names the defenses of this table.", ""]
    blocks = defense_tables(summary, **order)
    shown = set(header[4:])  # "ASR <label>" and "normal acc. <label>": a defense with no column here
    # a grid of one defense that has no column in the paper table (jpeg alone) has its numbers in the per-defense
    # tables alone
    if blocks and (len(defenses) > 1 or any(f"ASR {d}" not in shown for d in defenses if d != "none")):
        parts += ["### Every defense", ""]
        for title, h, r in blocks:
            parts += [f"**{title}**", "", _md_table(h, r), ""]
    if quality:
        h, r = quality_table(quality, attacks=order["attacks"], defenses=order["defenses"])
        which = "probe" if getattr(cfg, "protocol", "training") == "query" else "training"
        parts += [f"### Image quality of the {which} images of protected users (vs. their natural images)", ""]
        if any(q.get("psnr_identical") for q in quality):
            parts += ["PSNR: mean ± standard deviation over the images that differ from their natural image; an image "
                      "identical to it has an infinite PSNR and is counted apart (identical), not averaged.", ""]
        parts += [_md_table(h, r), ""]
    if wall_s is not None:
        resumed = f", summed over {sessions} sessions (resumed)" if sessions > 1 else ""
        parts += [f"Wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min) running the grid (loading, cloaking, defending, "
                  f"training, detection; writing these tables and the report not counted){resumed}.", ""]
    return "\n".join(parts)


__all__ = ["summarise_rows", "count_of", "write_csv", "render_tables", "paper_table", "defense_tables", "quality_table",
           "md_cell", "headline_defenses"]
