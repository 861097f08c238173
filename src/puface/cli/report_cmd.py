"""`puface report ...`: tables derived from finished experiments (`puface.evaluation.summaries`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

RUN = click.Path(path_type=Path, exists=True, file_okay=False)
README_START, README_END = "<!-- headline:start -->", "<!-- headline:end -->"


@click.group("report")
def report() -> None:
    """Tables from `puface reproduce` / `puface evaluate` output folders (summary.csv, results.csv).
    ASR and accuracy in %, as Markdown; and the folder's HTML report rebuilt (html)."""


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text)
        return
    from ..io.images import atomic_write_bytes

    atomic_write_bytes(out, (text + "\n").encode("utf-8"))
    click.echo(f"written: {out}")


def replace_between_markers(text: str, table: str, where: str = "README") -> str:
    """`text` with everything between the headline markers replaced by `table`."""
    from ..utils.errors import PufaceError

    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise PufaceError(f"{where}: no {README_START} ... {README_END} markers to put the table between")
    return text[: start + len(README_START)] + "\n" + table + "\n" + text[end:]


#: `--puface LABEL`, one meaning in every view that singles the purifier out (headline; cells draws and users)
PUFACE_OPTION = click.option("--puface", "puface_label", default="puface", show_default=True,
                             help="Defense label of the purifier.")


@report.command("headline")
@click.argument("runs", nargs=-1, required=True, type=RUN)
@PUFACE_OPTION
@click.option(
    "--rows",
    type=click.Choice(["all", "white-box"]),
    default="all",
    show_default=True,
    help="Which cells get a row (the means cover both settings either way).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write the Markdown here instead of printing it."
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the numbers as JSON."
)
@click.option(
    "--readme",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help=f"Put the table into this Markdown file between {README_START} and {README_END}.",
)
def headline(
    runs: tuple[Path, ...], puface_label: str, rows: str, out: Path | None, json_path: Path | None, readme: Path | None
) -> None:
    """The headline table of RUNS: per attack, victim and trainer, ASR and normal accuracy with no
    defense, with PuFace and with the best baseline (the defense without a purifier with the lowest mean
    white-box ASR, chosen once for the whole table). Several RUNS of one config (other --seed) are pooled from
    their results.csv, or from their summary.csv where a folder was trimmed to its tables (docs/results/: the
    same means)."""
    from ..evaluation.summaries import headline as make
    from ..evaluation.summaries import headline_markdown, load_pooled, load_summary, purifier_labels
    from ..evaluation.summaries import run_protocol

    summary = load_summary(runs[0]) if len(runs) == 1 else load_pooled(list(runs))  # pooled: one grid, one protocol
    h = make(summary, puface_label, ", ".join(map(str, runs)), protocol=run_protocol(runs[0]),
             purifiers=purifier_labels(runs[0]))
    md = headline_markdown(h, ("white-box",) if rows == "white-box" else ("white-box", "oblivious"))
    from ..io.images import atomic_write_bytes

    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(h, indent=2).encode("utf-8"))
    if readme is not None:
        atomic_write_bytes(
            readme, replace_between_markers(readme.read_text(encoding="utf-8"), md, str(readme)).encode("utf-8")
        )
        click.echo(f"updated: {readme}")
    if readme is None or out is not None:
        _emit(md, out)


@report.command("cells")
@click.argument("mode", type=click.Choice(["defenses", "users", "repeats", "compare", "draws"]))
@click.argument("runs", nargs=-1, required=True, type=RUN)
@click.option(
    "--attack", default=None, help="users: the attack label; defenses: only this attack's cells, one column each."
)
@click.option("--users", "named", default="", help="users: comma-separated names of the first group.")
@click.option("--defense", default=None, help="users: the defense label  [default: the --puface label]")
@PUFACE_OPTION
@click.option(
    "--quality",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="repeats: a folder of `bench/bench_purifier.py quality` JSONs (<defense label>.json).",
)
@click.option("--other", type=RUN, default=None, help="compare: the second output folder.")
@click.option("--attack-suffix", default="", help="draws: only attack labels ending in this.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write the Markdown here instead of printing it."
)
def cells(
    mode: str,
    runs: tuple[Path, ...],
    attack: str | None,
    named: str,
    defense: str | None,
    puface_label: str,
    quality: Path | None,
    other: Path | None,
    attack_suffix: str,
    out: Path | None,
) -> None:
    """Per-cell summaries of RUNS that the report does not print.

    \b
    defenses  per defense over the white-box cells: mean ASR, min / max cell, normal accuracy
    users     ASR of --attack under --defense per victim / trainer, --users vs the others (results.csv)
    repeats   defenses grouped by recipe (NAME, NAME-s1, ...): mean [min, max] per white-box cell
    compare   two runs of one grid (RUN and --other): identical rows, and those that differ
    draws     one grid on several draws (RUN RUN ...): no-defense ASR per draw, the --puface defense's range
    """
    from ..evaluation import summaries as s
    from ..utils.errors import PufaceError

    if len(runs) > 1 and mode != "draws":
        raise PufaceError(f"report cells {mode} takes one output folder")
    folder = runs[0]
    if mode == "draws":
        text = s.draws_table(list(runs), attack_suffix, puface_label)
    elif mode == "defenses":
        text = s.defenses_table(folder, attack)
    elif mode == "repeats":
        text = s.repeats_table(folder, quality)
    elif mode == "compare":
        if other is None:
            raise PufaceError("report cells compare needs --other RUN")
        text = s.compare_table(folder, other)
    else:
        if not attack:
            raise PufaceError("report cells users needs --attack LABEL")
        text = s.users_table(folder, attack, set(filter(None, named.split(","))), defense or puface_label)
    _emit(text, out)


@report.command("html")
@click.argument("run", type=RUN)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Write the report here instead of RUN/report.html.",
)
def html(run: Path, out: Path | None) -> None:
    """Rebuild RUN's self-contained report.html from the files it holds, nothing run again: its results.json and
    table.md, or, in a folder trimmed to its tables (docs/results/), its summary.csv (or results.csv), config.toml
    and table.md (no run environment, timings or ROC curves: those are kept only in results.json); the image grids
    from examples/ when there. Only the report file is written (atomically)."""
    from ..experiments.report_folder import rebuild_report

    click.echo(f"written: {rebuild_report(run, out)}")
