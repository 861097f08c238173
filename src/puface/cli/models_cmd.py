"""`puface models ...`: the face recognition models puface can use."""

from __future__ import annotations

from pathlib import Path

import click

from .options import device_option


@click.group("models", invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """Face recognition models: built-in ones load offline from installed packages (`puface models`
    alone: `puface models list`).

    \b
    Your own model: an ONNX, TorchScript (.pt, .pth, .ts, .torchscript) or torch.export (.pt2) file,
    given by its path (or its file name in $PUFACE_MODELS) wherever a model name is taken:
      puface cloak --surrogate model.onnx ...      puface evaluate --victim model.onnx ...
      --attack 'lowkey:embedders=model.onnx'       a config's [victims] embedders = ["model.onnx"]
    A TorchScript or .pt2 file is a program that puface runs, and torch.export.load unpickles a .pt2 file
    (any Python code can run): load only such files you trust. An ONNX file is read as data (puface runs
    only the standard operators it translates; onnx refuses weights in files outside the model's folder).
    What the model expects goes in a JSON sidecar next to it (model.onnx -> model.json):
      scale, mean, std   required: net input = (x * scale - mean) / std for x in [0, 1]
                         (mean / std: a number or one per channel; insightface ArcFace: 255, 127.5, 127.5)
      order              "RGB" (default) or "BGR"
      input_size         [height, width]; required unless an ONNX graph fixes its input shape
      embedding_dim      checked against the model's output (default: measured)
      layout             "any" (default: chips are resized) or "arcface112" (ArcFace 112 px crops)
      name, licence, source   shown in reports
    e.g. {"input_size": [112, 112], "scale": 255, "mean": 127.5, "std": 127.5, "layout": "arcface112"}
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@models.command("list")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Also load each model (converting and caching its weights once) to show whether it works here.")
def list_cmd(check: bool) -> None:
    """Show each built-in model: name, source package, licence, input size and embedding size."""
    from ..models.registry import EMBEDDERS, create_embedder, list_embedders
    from ..utils.errors import PufaceError

    list_embedders()  # registers the built-in models
    rows: list[tuple[str, ...]] = []
    for entry in EMBEDDERS:
        info = entry.info
        status = ""
        if check:
            try:
                emb = create_embedder(entry.name)
                status = f"ok ({emb.normalization.describe()})"
            except PufaceError as e:
                status = f"unavailable: {e}"
        rows.append(
            (
                entry.name,
                info.get("source", ""),
                info.get("licence", ""),
                str(info.get("input_size", "")),
                str(info.get("layout", "")),
                str(info.get("dim", "")),
                status,
            )
        )
    headers = ("name", "source", "licence", "input", "face layout", "dim") + (("status",) if check else ())
    rows = [r[: len(headers)] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    click.echo(line)
    click.echo("  ".join("-" * w for w in widths))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    click.echo(
        "\nYour own model: an ONNX / TorchScript / .pt2 file (a path, or a file name in $PUFACE_MODELS) wherever a "
        "model name is taken (cloak --surrogate, evaluate --victim, embedders= in an attack spec), its input "
        "size and normalisation in a JSON sidecar next to it (model.onnx -> model.json); see "
        "`puface models --help`."
    )


@models.command("info")
@click.argument("model")
@click.option(
    "--images",
    "images_root",
    type=click.Path(path_type=Path),
    default=None,
    help="A folder root/<identity>/<image> of aligned face chips (a few people, several photos each): also "
    "measure how well the model tells them apart (leave-one-out 1-NN accuracy, mean cosine of same- and "
    "other-identity pairs). A wrong normalisation or input size in the sidecar shows as the two cosines "
    "close together (MobileFace read at scale 1 instead of 255: 1.000 and 1.000, against 0.640 and 0.158) "
    "or an accuracy near chance.",
)
@click.option(
    "--per-identity",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="With --images: at most this many photos per identity (a seeded choice).",
)
@device_option()
def info_cmd(model: str, images_root: Path | None, per_identity: int, device: str) -> None:
    """What a face model is and whether it behaves: MODEL is a built-in name or your own ONNX / TorchScript / .pt2
    file (with its JSON sidecar). Prints its input size, face layout, normalisation, embedding size and weights
    fingerprint, and checks on 4 seeded random images that its embeddings are unit-norm, deterministic, independent of
    the rest of the batch, and that gradients reach the input (attacks need them). Exit code 1 when a check fails."""
    from ..models.checks import check_embedder, identification
    from ..models.registry import load_embedder

    emb = load_embedder(model, device=None if device == "auto" else device)
    for k, v in emb.describe().items():
        click.echo(f"{k:15s} {v}")
    click.echo(f"{'fingerprint':15s} {emb.fingerprint()}")
    failed = 0
    for name, ok, detail in check_embedder(emb):
        failed += not ok
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if images_root is not None:
        r = identification(emb, images_root, per_identity=per_identity)
        click.echo(f"identification on {r['images']} photos of {r['identities']} people ({images_root}): leave-one-out "
                   f"1-NN accuracy {r['accuracy']:.1%} (chance {r['chance']:.1%}); mean cosine same person "
                   f"{r['same']:.3f}, other people {r['other']:.3f}")
        if r["same"] - r["other"] < 0.05 or r["accuracy"] < 2 * r["chance"]:
            click.echo(
                "warning: the model barely tells these people apart: check the sidecar's scale, mean, std, order "
                "and input_size (and that the photos are aligned chips)"
            )
    if failed:
        raise click.exceptions.Exit(1)
