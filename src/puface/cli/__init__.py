"""The `puface` command line. Thin: each sub-command lives in its own module, imported only when
used (so `puface --help` is fast), parses options, calls the library and prints."""

from __future__ import annotations

import importlib
import sys

import click

from ..utils.errors import PufaceError, missing_base_dependency
from ..utils.version import __version__

# command name -> (module, attribute, one-line help shown by `puface --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("puface.cli.data_cmd", "data", "Inspect identity folders; list and fetch the named data sets."),
    "models": ("puface.cli.models_cmd", "models", "List the face recognition models puface can use."),
    "align": ("puface.cli.align_cmd", "align", "Detect faces in photos and cut aligned face chips."),
    "cloak": ("puface.cli.cloak_cmd", "cloak", "Cloak face images (Fawkes, LowKey, OPOM, unlearnable examples)."),
    "train-purifier": (
        "puface.cli.purifier_cmd",
        "train_purifier",
        "Train a PuFace purifier from a recipe (a packaged name or a TOML file).",
    ),
    "purify": ("puface.cli.purifier_cmd", "purify", "Remove cloaks from a folder of face images."),
    "detect": ("puface.cli.detect_cmd", "detect", "Score photos for cloaks and say which look cloaked (calibrated)."),
    "calibrate-detector": (
        "puface.cli.detect_cmd",
        "calibrate_detector",
        "Calibrate the cloak detector on your own natural photos.",
    ),
    "train-detector": (
        "puface.cli.detect_cmd",
        "train_detector",
        "Train and calibrate a cloak detector from a recipe.",
    ),
    "evaluate": ("puface.cli.evaluate_cmd", "evaluate", "Measure ASR and normal accuracy of attacks and defenses."),
    "reproduce": (
        "puface.cli.evaluate_cmd",
        "reproduce",
        "Run an experiment grid from a config (a packaged name or a TOML file).",
    ),
    "demo": ("puface.cli.evaluate_cmd", "demo", "End-to-end demo on the embedded default data."),
    "report": (
        "puface.cli.report_cmd",
        "report",
        "Tables and the HTML report from finished experiments (headline, cells, html).",
    ),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        mod, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="puface")
def cli() -> None:
    """puface: remove facial cloaks (Fawkes, LowKey) from face photos before training a
    face-recognition model, and measure how well that works.

    Images are read from identity folders ROOT/<identity>/<image> (FaceScrub's
    download/<identity>/face/<image> works too). Outputs mirror the input tree.
    Run `puface COMMAND --help` for each command's options.

    \b
    Environment variables:
      PUFACE_HOME        the cache: cloaks, purified images, embeddings and detector features
                         (keyed by content), converted model weights, the fetched 'johns' set.
                         Default: $XDG_CACHE_HOME/puface, else ~/.cache/puface. It grows with
                         the experiments run (GBs); a deleted entry is made again when needed.
      PUFACE_DATA        a folder of data sets by name: a config's [data] root = "lfw-chips150"
                         is looked up there (`puface data list`).
      PUFACE_MODELS      a folder where a model file name (--victim model.onnx) is looked up.
      PUFACE_MAX_PIXELS  the largest image decoded, in pixels (default 100000000).
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI; a `PufaceError`, or a missing dependency of puface's own (a venv without torch),
    becomes one line on stderr and exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as escapes, not a traceback
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        rv = cli.main(args=argv, prog_name="puface", standalone_mode=False)
    except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) and of an aborted prompt
        click.echo("interrupted; finished outputs are kept, re-run the same command to resume", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except PufaceError as e:
        click.echo(f"puface: error: {e}", err=True)
        return 2
    except ModuleNotFoundError as e:
        missing = missing_base_dependency(e)
        if missing is None:
            raise
        click.echo(f"puface: error: {missing}", err=True)
        return 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        click.echo("interrupted; finished outputs are kept, re-run the same command to resume", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
