"""`puface models ...`: the face recognition models puface can use."""

from __future__ import annotations

import click


@click.group("models")
def models() -> None:
    """Face recognition models: built-in ones load offline from installed packages; your own
    ONNX or TorchScript model can be passed wherever an --embedder/--surrogate is asked for."""


@models.command("list")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Also load each model (converting and caching its weights once) to show whether it works here.")
def list_cmd(check: bool) -> None:
    """Show each built-in model: name, source package, licence, input size and embedding size."""
    from ..models.registry import EMBEDDERS, create_embedder, list_embedders
    from ..utils.errors import PufaceError

    list_embedders()  # registers the built-in models
    rows = []
    for entry in EMBEDDERS:
        info = entry.info
        status = ""
        if check:
            try:
                emb = create_embedder(entry.name)
                status = f"ok ({emb.normalization.describe()})"
            except PufaceError as e:
                status = f"unavailable: {e}"
        rows.append((entry.name, info.get("source", ""), info.get("licence", ""), str(info.get("input_size", "")), str(info.get("layout", "")), str(info.get("dim", "")), status))
    headers = ("name", "source", "licence", "input", "face layout", "dim") + (("status",) if check else ())
    rows = [r[: len(headers)] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    click.echo(line)
    click.echo("  ".join("-" * w for w in widths))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    click.echo("\nYour own model: --embedder PATH.onnx|PATH.pt (TorchScript), with --input-size/normalisation "
               "options or a JSON sidecar PATH.json; see `puface models --help`.")
