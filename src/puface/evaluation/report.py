"""One self-contained HTML report per experiment: the result tables, bar charts of ASR and normal
accuracy per defense and attack (matplotlib, embedded as PNG data URIs), and image grids (natural,
cloaked, amplified, purified, with PSNR/SSIM under each) for a few protected users.

Nothing is loaded from the network or from other files: the page opens offline, and can be mailed
or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import torch

from ..io.images import atomic_write_bytes, read_image
from ..utils.errors import PufaceError
from ..utils.images import image_to_tensor, tensor_to_image
from ..utils.metrics import psnr, ssim
from .tables import headline_defenses

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; } th { background: #f3f3f3; }
td { white-space: nowrap; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
.meta { color: #555; } .chart { max-width: 100%; }
.grid { display: grid; gap: 10px; margin: .5em 0 1.5em; grid-template-columns: repeat(var(--cols), 160px); }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { width: 150px; height: 150px; image-rendering: auto; border: 1px solid #ddd; }
figcaption { color: #444; }
/* the headline defense (the shipped purifier): its ASR column and its row in the per-defense tables, bold and tinted,
   the tint kept on paper too */
.headline { font-weight: 600; background: #e8f0fb; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media print {  /* paper does not scroll: tables wrap their cells, grids shrink their images to the page */
  .scroll { overflow: visible; } td { white-space: normal; }
  .grid { grid-template-columns: repeat(var(--cols), minmax(0, 1fr)); }
  figure img { width: 100%; max-width: 150px; height: auto; box-sizing: border-box; }
}
"""


def data_uri_png(image_hwc: np.ndarray) -> str:
    """uint8 (H, W, 3) -> "data:image/png;base64,..."."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_hwc), "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_NUMBER = re.compile(r"^(\*\*)?[-+\u2212]?(\d|\.\d|inf\b|nan\b|identical)")


def _numeric_column(cells: Sequence[str]) -> bool:
    """Whether a table column holds numbers ("97.6", "0.0 ± 3.7", "**1.1**", "identical (∞)"): right-aligned, text
    left. Empty cells and "n/a" do not count either way; a column of none is text."""
    cells = [c.strip() for c in cells if c.strip() and c.strip() not in ("n/a", "-", "\u2014")]
    return bool(cells) and all(_NUMBER.match(c) for c in cells)


def _cell(tag: str, content: str, numeric: bool, headline: bool = False) -> str:
    classes = " ".join(c for c, on in (("num", numeric), ("headline", headline)) if on)
    return f'<{tag} class="{classes}">{content}</{tag}>' if classes else f"<{tag}>{content}</{tag}>"


def markdown_to_html(md: str, headline: Sequence[str] = ()) -> str:
    """The small Markdown subset `tables.render_tables` writes: headings, paragraphs, **bold**, tables. The defenses
    `headline` names (labels) stand out (class "headline"): the cells of a column "ASR <label>", and the row of a
    table whose first column is "defense" whose first cell is the label."""
    def inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))

    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                # cells split at each `|` not escaped (`tables.md_cell` writes a label's `|` as `\\|`)
                row = lines[i].strip()[1:]
                row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
                block.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)])
                i += 1
            head, body = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            num = [_numeric_column([r[j] for r in body if j < len(r)]) for j in range(len(head))]
            col = [c in {f"ASR {d}" for d in headline} for c in head]
            by_row = head[:1] == ["defense"]  # a per-defense ASR table (not the image quality's, which has one too)

            def mark(r: list[str], j: int, col: list[bool] = col, by_row: bool = by_row) -> bool:
                return (j < len(col) and col[j]) or (by_row and r[:1] != [] and r[0] in headline)

            out.append(
                '<div class="scroll"><table class="results"><thead><tr>'
                + "".join(_cell("th", inline(c), j < len(num) and num[j], col[j]) for j, c in enumerate(head))
                + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(_cell("td", inline(c), j < len(num) and num[j], mark(r, j))
                                     for j, c in enumerate(r)) + "</tr>" for r in body]
            out.append("</tbody></table></div>")
            continue
        if line.startswith("### "):
            out.append(f"<h3>{inline(line[4:])}</h3>")
        elif line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line:
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _num(x: Any) -> float:
    """A summary number; None (NaN in strict JSON) -> nan."""
    return float("nan") if x is None else float(x)


def _plain(label: Any) -> str:
    """A free-text label as matplotlib draws it literally: `$` escaped (it would start math text). Legends are given
    their labels explicitly, so a label starting with `_` is shown, not dropped as matplotlib's "no legend" mark."""
    return str(label).replace("$", r"\$")


def _ordered(values, order: Sequence[str]) -> list[str]:
    vals = list(dict.fromkeys(values))
    return sorted(vals, key=lambda v: (order.index(v) if v in order else len(order), v))


def bar_charts(summary: list[dict], config: dict) -> list[tuple[str, str]]:
    """One figure per (victim, trainer): ASR (top) and normal accuracy (bottom) per defense, one bar per
    attack, with the sample standard deviation over users and seeds as error bars, cut at 0 and 100% (both are shares
    of photos: a mean of 90 ± 30% has no run above 100%). Returns [(title, data URI)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks_order = [a["label"] for a in config.get("attacks", [])]
    defenses_order = [d["label"] for d in config.get("defenses", [])]
    charts = []
    victims = _ordered((s["victim"] for s in summary), config.get("victims", []))
    trainers = _ordered((s["trainer"] for s in summary), [t["label"] for t in config.get("trainers", [])])
    for v in victims:
        for t in trainers:
            sub = [s for s in summary if s["victim"] == v and s["trainer"] == t]
            if not sub:
                continue
            defenses = _ordered((s["defense"] for s in sub), defenses_order)
            attacks = _ordered((s["attack"] for s in sub), attacks_order)
            idx = {(s["attack"], s["defense"]): s for s in sub}
            fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * len(defenses) + 2), 5.6), sharex=True)
            width = 0.8 / max(1, len(attacks))
            x = np.arange(len(defenses))
            handles = []
            for j, a in enumerate(attacks):
                for ax, key in zip(axes, ("asr", "normal_acc")):
                    vals = [_num(idx[a, d][f"{key}_mean"]) * 100 if (a, d) in idx else np.nan for d in defenses]
                    errs = [_num(idx[a, d][f"{key}_std"]) * 100 if (a, d) in idx else 0.0 for d in defenses]
                    # one standard deviation each way, within the shares' range [0, 100] (the axis ends at 105)
                    yerr = [[0.0 if math.isnan(e + v) else min(e, v) for e, v in zip(errs, vals)],
                            [0.0 if math.isnan(e + v) else min(e, 100.0 - v) for e, v in zip(errs, vals)]]
                    at = x + (j - (len(attacks) - 1) / 2) * width
                    bars = ax.bar(at, vals, width, yerr=yerr, capsize=2)
                    colour = bars.patches[0].get_facecolor()
                    for xi, val in zip(at, vals):  # no number (no test photo, or not run): not an empty bar, as 0% is
                        if math.isnan(val):
                            ax.text(xi, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="#555")
                        elif round(val, 1) == 0:  # a measured 0 (0.0 in the tables): a bar of no height, marked
                            ax.plot([xi - 0.4 * width, xi + 0.4 * width], [0.6, 0.6], color=colour, lw=2.5,
                                    solid_capstyle="butt")
                            ax.text(xi, 1.6, "0", ha="center", va="bottom", fontsize=7, color=colour)
                    if ax is axes[0]:  # the legend's
                        handles.append(bars)
            axes[0].set_ylabel("ASR (%)")
            axes[1].set_ylabel("normal accuracy (%)")
            for ax in axes:
                ax.set_ylim(0, 105)
                ax.grid(axis="y", alpha=0.3)
            axes[1].set_xticks(x, [_plain(d) for d in defenses], rotation=30, ha="right")
            axes[1].set_xlabel("defense")
            axes[0].legend(handles, [_plain(a) for a in attacks], fontsize=8, title="attack", title_fontsize=8,
                           loc="upper left", bbox_to_anchor=(1.01, 1.0))
            title = f"ASR and normal accuracy (%) per defense: victim {v}, trainer {t}"
            axes[0].set_title(_plain(title))
            fig.tight_layout()
            charts.append((title, figure_data_uri(fig)))
            plt.close(fig)
    return charts


def roc_chart(detection: dict) -> str | None:
    """ROC curves of the cloak detector, one per attack (false-positive rate on a log axis), with the
    calibrated operating point; a data URI, or None without curves."""
    if not detection or not detection.get("roc"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["attack"]: r for r in detection.get("rows", [])}
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    handles, labels = [], []
    n = len(detection["roc"])
    for i, (attack, curve) in enumerate(detection["roc"].items()):
        f = np.maximum(np.asarray(curve["fpr"], dtype=float), 1e-4)
        r = rows.get(attack, {})
        # each curve drawn thinner than the one before it: curves that coincide (AUC 1 for every attack) show as
        # nested bands of their colours instead of the last one hiding the others
        wider = n - 1 - i
        line, = ax.plot(f, curve["tpr"], lw=1.2 + 1.0 * wider, solid_capstyle="butt")
        handles.append(line)
        labels.append(f"{_plain(attack)} (AUC {_num(r.get('auc')):.3f})")
        if r and not (math.isnan(_num(r.get("fpr"))) or math.isnan(_num(r.get("tpr")))):  # results.json: NaN is null
            # on the axes' edge at FPR 0 or TPR 1: drawn whole, not cut in half by the frame
            ax.plot([max(_num(r["fpr"]), 1e-4)], [_num(r["tpr"])], "o", color=line.get_color(),
                    ms=5 + 2.5 * wider, clip_on=False, zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0, 1.02)
    target = detection.get("fpr_target", 0.01)
    handles.append(ax.axvline(target, color="#999", ls="--", lw=1))
    labels.append(f"calibration target: {target:.1%} FPR")
    ax.set_xlabel("false-positive rate (natural photos; 0 drawn at $10^{-4}$)")
    ax.set_ylabel("true-positive rate (cloaked photos)")
    ax.set_title("cloak detection: ROC per attack (dots: the calibrated threshold)")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    fig.tight_layout()
    uri = figure_data_uri(fig)
    plt.close(fig)
    return uri


def _load(out_dir: Path, rel: str, missing: list[str]) -> torch.Tensor | None:
    """An example image as (1, 3, H, W) float, or None (its path added to `missing`) when it cannot be read: a folder
    copied or trimmed without its examples/ still gets its report. `rel` (from the folder's results.json) must be a
    relative path without "..": a results.json from elsewhere never puts a picture from outside the folder into it."""
    posix = PurePosixPath(rel.replace("\\", "/"))
    if Path(rel).is_absolute() or posix.is_absolute() or ".." in posix.parts:
        missing.append(f"{rel} (not a path inside the run folder)")
        return None
    try:
        return image_to_tensor(read_image(out_dir / rel))[None]
    except PufaceError as e:
        missing.append(f"{rel} ({getattr(e, 'reason', e)})")
        return None


def image_grids(
    out_dir: Path, examples: dict[str, dict[str, list[str]]], amplification: float, max_users: int = 3,
    defenses: Sequence[str] = (),
) -> str:
    """HTML figures for each (seed/user/attack) with a cloak: natural, cloaked, amplified
    (clip(x + k (x_c - x))), and each learned or baseline defense applied to the cloaked image; the defense columns
    in the order of `defenses` (the config's labels; others after them, PuFace first). An example image that cannot
    be read is left out, and the files left out are listed under the grids."""
    order = list(defenses)

    def rank(kind: str) -> tuple[int, bool, str]:  # "defense:<label>": the config's order, PuFace first of the rest
        label = kind[len("defense:"):]
        return (order.index(label) if label in order else len(order), not label.startswith("puface"), label)

    blocks = []
    missing: list[str] = []
    users_seen: list[str] = []
    for key, kinds in examples.items():
        seed, user, attack = key.split("/", 2)
        if "cloaked" not in kinds or "natural" not in kinds:
            continue
        if user not in users_seen:
            if len(users_seen) >= max_users:
                continue
            users_seen.append(user)
        defended = sorted((k for k in kinds if k.startswith("defense:") and k != "defense:none"), key=rank)
        cols = ["natural", "cloaked", "amplified"] + defended
        rows_html = []
        for i, nat_rel in enumerate(kinds["natural"]):
            nat = _load(out_dir, nat_rel, missing)
            cl = _load(out_dir, kinds["cloaked"][i], missing) if i < len(kinds["cloaked"]) else None
            if nat is None or cl is None:  # no reference to measure against, or no cloak to show: no row
                continue
            imgs = {"natural": nat, "cloaked": cl, "amplified": (nat + amplification * (cl - nat)).clamp(0, 1)}
            for k in defended:
                if i < len(kinds[k]):
                    im = _load(out_dir, kinds[k][i], missing)
                    if im is not None:
                        imgs[k] = im
            cells = []
            for c in cols:
                if c not in imgs:
                    continue
                im = imgs[c]
                if c == "natural":
                    cap = "natural (reference)"
                else:
                    p, s = float(psnr(im, nat)[0]), float(ssim(im, nat)[0])
                    name = (
                        f"amplified x{amplification:g}"
                        if c == "amplified"
                        else (c[len("defense:") :] + " (cloaked input)" if c.startswith("defense:") else c)
                    )
                    cap = f"{html.escape(name)}<br>PSNR {p:.2f} dB<br>SSIM {s:.4f}"
                uri = data_uri_png(tensor_to_image(im[0]))
                cells.append(f'<figure><img src="{uri}" alt="{html.escape(c)}"><figcaption>{cap}</figcaption></figure>')
            rows_html.append(
                f'<div class="grid" style="--cols: {len(cells)}">'
                + "".join(cells)
                + "</div>"
            )
        if rows_html:
            blocks.append(
                f"<h3>{html.escape(user)}: {html.escape(attack)} (seed {html.escape(seed)})</h3>"
                + '<div class="scroll">' + "".join(rows_html) + "</div>"  # the rows' columns aligned, scrolled as one
            )
    if missing:
        blocks.append(
            f'<p class="meta">{len(missing)} example image(s) could not be read and are left out: '
            + "; ".join(html.escape(m) for m in missing) + "</p>"
        )
    return "\n".join(blocks)


def _purifier_lines(results: dict[str, Any]) -> list[str]:
    """One HTML-escaped line per purifier of the grid: its defense label, weights, step and weights fingerprint as the
    run recorded them (results.json's `purifiers`), else the weights the config names (a report rebuilt from a
    folder without results.json, or one written before they were recorded)."""
    if "purifiers" in results:
        return [html.escape(f"{p['defense']} = weights {p['weights']}, step {float(p['step']):g}, "
                            f"weights fingerprint {p['fingerprint']}") for p in results["purifiers"]]
    lines = []
    for d in results.get("config", {}).get("defenses", []):
        spec = d.get("spec") if isinstance(d, dict) else None
        if isinstance(spec, dict) and spec.get("name") == "puface":
            opts = ", ".join(f"{k} {v}" for k, v in spec.items() if k not in ("name", "label"))
            lines.append(html.escape(f"{d['label']} = {opts or 'weights default'} (fingerprint not recorded)"))
    return lines


def render_report(out_dir: str | Path, results: dict[str, Any], table_md: str) -> str:
    """The report as an HTML string (see module docstring)."""
    out_dir = Path(out_dir)
    cfg = results.get("config", {})
    title = f"puface evaluation: {results.get('name', '')}"
    env = results.get("environment", {})
    timings = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in results.get("timings_s", {}).items())
    # each line only when the results hold it: a report rebuilt from a trimmed folder (`puface report html`) has no
    # run environment or timings, and says so in its notes instead of printing zeros
    meta = []
    if cfg or "config_fingerprint" in results:
        fp = f" (fingerprint {results['config_fingerprint']})" if "config_fingerprint" in results else ""
        seeds = ", ".join(str(s) for s in cfg.get("seeds", []))
        meta.append(html.escape(f"config: {results.get('name', '')}{fp}; protocol: {cfg.get('protocol', 'training')}"
                                + (f"; seeds: {seeds}" if seeds else "")))
    purifiers = _purifier_lines(results)
    if purifiers:
        meta.append("purifier: " + "; ".join(purifiers))
    if "data_root" in results:
        meta.append(f"data: {html.escape(str(results['data_root']))}")
    if "wall_s" in results:
        meta.append(f"runs: {results.get('n_runs', 0)}; wall time running the grid {results['wall_s']:.0f} s "
                    f"({timings})")
    elif "n_runs" in results:
        meta.append(f"runs: {results['n_runs']}")
    if "users" in results:
        meta.append("protected users: "
                    + "; ".join(f"seed {s}: {html.escape(', '.join(u))}" for s, u in results["users"].items()))
    if env:
        meta.append(f"environment: Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                    f"{env.get('device', '?')}, {env.get('threads', '?')} threads")
    if results.get("finished"):
        meta.append(f"finished: {html.escape(str(results['finished']))}")
    meta += [html.escape(str(n)) for n in results.get("notes", [])]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{"<br>".join(meta)}</p>',
    ]
    if results.get("description") and results["description"].strip() not in table_md:  # table.md's own says it once
        parts.append(f"<p>{html.escape(results['description'])}</p>")
    summary = results.get("summary", [])
    labels = [d["label"] for d in cfg.get("defenses", [])] + [s["defense"] for s in summary]
    parts.append(markdown_to_html(table_md, headline_defenses(labels, cfg.get("report", {}).get("headline"))))
    charts = bar_charts(results.get("summary", []), cfg)
    if charts:
        parts.append("<h2>ASR and normal accuracy per defense and attack</h2>")
        parts.append(
            "<p>Bars: the mean over protected users and seeds (in %, as in the tables); error bars: one sample "
            "standard deviation over them each way, cut at 0 and 100% (none for a single user); "
            "0: a measured 0% (a thin mark on the axis); n/a: no number (no test photo of the users, or not run).</p>"
        )
        parts += [f'<img class="chart" src="{uri}" alt="bar chart: {html.escape(t)}">' for t, uri in charts]
    roc = roc_chart(results.get("detection") or {})
    if roc:
        parts.append("<h2>Cloak detection: ROC curves</h2>")
        parts.append(f'<img class="chart" src="{roc}" alt="ROC curves of the cloak detector per attack">')
    grids = image_grids(out_dir, results.get("examples", {}), float(results.get("amplification", 3.0)),
                        int(cfg.get("report", {}).get("users", 3)), [d["label"] for d in cfg.get("defenses", [])])
    if grids:
        if cfg.get("protocol") == "query":  # the cloaked photos are the user's probes, not training photos
            parts.append("<h2>Example probe images of protected users</h2>")
            parts.append(
                "<p>PSNR and SSIM are measured against the natural image. The defense columns show the probe "
                "the FR model (built on the clean gallery) is queried with after the defense is applied to the "
                "cloaked probe.</p>"
            )
        else:
            parts.append("<h2>Example training images of protected users</h2>")
            parts.append("<p>PSNR and SSIM are measured against the natural image. The defense columns show what the "
                         "FR model is trained on after the defense is applied to the cloaked photo.</p>")
        k = float(results.get("amplification", 3.0))
        parts.append(f"<p>amplified x{k:g}: the cloak's change made {k:g} times larger, clip(x + {k:g} (x_c - x), 0, "
                     "1) as the purifier's training amplifies it, to show where the cloak is; the evaluation does not "
                     "use it.</p>")
        parts.append(grids)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, results: dict[str, Any], table_md: str, name: str = "report.html") -> Path:
    """Render and atomically write `out_dir/report.html`; returns its path."""
    out_dir = Path(out_dir)
    path = out_dir / name
    atomic_write_bytes(path, render_report(out_dir, results, table_md).encode("utf-8"))
    return path


__all__ = [
    "render_report",
    "write_report",
    "markdown_to_html",
    "bar_charts",
    "image_grids",
    "data_uri_png",
    "roc_chart",
]
