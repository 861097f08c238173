"""Command-line options that several commands share: the engine of a folder job (`--engine`, `--address`,
`--workers`)."""

from __future__ import annotations

from typing import Callable

import click

from ..utils.errors import PufaceError


def engine_options(actors: str, outputs: str = "Same outputs either way.") -> Callable:
    """`--engine local|ray`, `--address ADDR`, `--workers N` for a folder job whose Ray actors run `actors`
    ("model", "attack", "detector"); `outputs` says what both engines produce alike."""
    opts = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help=f"local: threads in this process. ray: a streaming Ray Data pipeline (decode tasks, a pool of "
                          f"{actors} actors, write tasks) on the Ray cluster at --address, or a new local one; needs "
                          f"puface[ray]. {outputs}"),
        click.option("--address", default=None, metavar="ADDR",
                     help="With --engine ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); default: start a local one."),
        click.option("--workers", type=int, default=None,
                     help=f"With --engine ray: {actors} actors (default: one per GPU with CUDA, else the cluster's CPUs minus one)."),
    ]

    def deco(f: Callable) -> Callable:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def check_engine(engine: str, address: str | None, workers: int | None) -> None:
    """--address and --workers only go with --engine ray."""
    if engine == "local" and (address is not None or workers is not None):
        raise PufaceError("--address and --workers go with --engine ray")
