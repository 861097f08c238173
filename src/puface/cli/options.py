"""Command-line options that several commands share: the device (`--device`), the engine of a folder job
(`--engine`, `--address`, `--workers`), the share of the files of one process (`--rank`, `--world-size`), `--dry-run`,
torch's threads (`--threads`), turned photos with --align (`--rotations`), the packaged configs of the commands
that run one (`--list`, `--show`) and their `--set KEY=VALUE` overrides (`parse_overrides`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click

from ..utils.errors import ConfigError, PufaceError


DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available)"


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a device torch does not know, or CUDA where there is none, before any work (the rule of
    `utils.device.resolve_device`); the value itself is passed on as given."""
    if value is not None:
        from ..utils.device import resolve_device

        resolve_device(value)
    return value


def device_option(default: str | None = "auto", help: str = DEVICE_HELP + ".") -> Callable:
    """`--device`, checked when parsed: an unknown device or an unavailable CUDA is a one-line error."""
    return click.option("--device", default=default, show_default=default is not None, callback=_check_device,
                        metavar="DEVICE", help=help)


WEIGHTS_FIRST_LOAD = ("a face model's first load caches its converted weights in $PUFACE_HOME/weights, as any command "
                      "does")
"""What a dry run may write after all (every dry run's help says it)."""


def dry_run_option(verb: str, out: str = "OUT", writes: str = "no OUT, record or lock",
                   refusals: str = "OUT inside IN, OUT made with other settings", after: str = "") -> Callable:
    """`--dry-run` of a folder job that would `verb` ("purify") its inputs into `out`, writing `writes` otherwise;
    `refusals`: examples of the job's refusals; `after`: a sentence added at the end (the options it refuses)."""
    return click.option(
        "--dry-run", "dry_run", is_flag=True,
        help=f"Say what the job would do and write nothing ({writes}): the inputs found (and the files skipped as not "
        f"images), how many are already done in {out} (a resume skips them), how many it would {verb}, and its "
        f"settings; the job's refusals ({refusals}, ...) end it with the same one-line error (exit 2). Loads the "
        f"models to check them, runs none ({WEIGHTS_FIRST_LOAD}).{' ' + after if after else ''}")


def threads_option(help: str = "Torch compute threads (default: torch's choice).") -> Callable:
    """`--threads N` (N >= 1)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


def rank_options(f: Callable) -> Callable:
    """`--rank` and `--world-size` of a folder job whose files are split between processes."""
    f = click.option(
        "--world-size",
        type=click.IntRange(min=1),
        default=None,
        help="Number of processes sharing the files (default: $WORLD_SIZE or 1); every process writing into one "
        "output gives the same number (another is refused while they run).",
    )(f)
    return click.option("--rank", type=click.IntRange(min=0), default=None,
                        help="This process's share of the files (default: $RANK or 0).")(f)


#: `--rotations` choices (`align.detect.ROTATIONS`, not imported here: it would load the align package for --help)
ROTATION_CHOICES = ("auto", "off")


def rotations_option(done: str, lead: str = "With --align: ") -> Callable:
    """`--rotations auto|off` of an --align command whose faces are `done` ("purified and pasted back"); `lead`
    starts the help (`puface align`, which always aligns, gives none)."""
    return click.option(
        "--rotations",
        type=click.Choice(ROTATION_CHOICES),
        default=None,
        help=f"{lead}auto (the default; off when resuming a folder aligned upright only) also searches a "
        "photo in which no face, or only a weak one, is found "
        "upright (a sideways or upside-down photo whose EXIF orientation was lost) turned 90, 270 and 180 degrees "
        f"clockwise, before the slower CNN detector; its faces are {done}. Costs three HOG runs more on a photo "
        "without a face (bench/results/align-rotations.md). off: "
        "upright faces only.",
    )


def check_rotations(rotations: str | None, align: bool, record: Path | None = None, resume: bool = False,
                    section: str | None = "align", redo: str = "--no-resume") -> str:
    """`--rotations` as the job takes it; given without --align it is an error. Not given: "auto", or "off" when the
    job resumes a folder whose settings `record` (JSON; its `section`, or the whole record when None) says --align
    ran upright only (--rotations off, or before it existed), so that a half-done job goes on as it began: said in
    one line naming `redo`, the flag that starts it over with "auto"."""
    if rotations is not None and not align:
        raise PufaceError("--rotations needs --align")
    if rotations is not None or not align or not resume or record is None or not record.is_file():
        return rotations or "auto"
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "auto"  # the job's own settings check names the unreadable record
    made = old.get(section) if section and isinstance(old, dict) else old
    from ..align.detect import recorded_rotations  # here: --help does not load the align package

    if isinstance(made, dict) and made.get("align", True) and recorded_rotations(made) == "off":
        click.echo(f"{record}: made with faces searched upright only (--rotations off, or before it existed); resuming "
                   f"with --rotations off ({redo} redoes it with auto)", err=True)
        return "off"
    return "auto"


def engine_options(actors: str, outputs: str = "Same outputs either way.") -> Callable:
    """`--engine local|ray`, `--address ADDR`, `--workers N` for a folder job whose Ray actors run `actors`
    ("model", "attack", "detector"); `outputs` says what both engines produce alike."""
    opts = [
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=f"local: threads in this process. ray: a streaming Ray Data pipeline (decode tasks, a pool of "
            f"{actors} actors, write tasks) on the Ray cluster at --address, or a new local one; needs "
            f"puface[ray]. {outputs}",
        ),
        click.option(
            "--address",
            default=None,
            metavar="ADDR",
            help="With --engine ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); "
            "default: start a local one.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help=f"With --engine ray: {actors} actors "
            "(default: one per GPU with CUDA, else the cluster's CPUs minus one).",
        ),
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


def list_packaged(kind: str) -> None:
    """Print the packaged configs of `kind` with their description (first comment line for recipes)."""
    from ..utils.tomlconfig import packaged_config, packaged_config_names, read_toml

    for name in packaged_config_names(kind):
        path = packaged_config(name, kind)
        text = str(read_toml(path).get("description", "")) if path else ""
        if not text and path:
            first = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
            text = first.lstrip("# ")
        click.echo(f"{name:24s} {text if len(text) <= 110 else text[:107].rstrip() + '...'}")


def show_config(ref: str, kind: str) -> None:
    """Print the text of the config `ref` (a packaged name or a file) as it is, comments included, so it can be
    copied and edited (`puface reproduce lfw --show > mine.toml`); an `extends` in it still finds the packaged
    parent by name; a file that cannot be read as UTF-8 text is a `ConfigError` naming it."""
    from ..utils.tomlconfig import find_config

    path = find_config(ref, kind)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a config (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    click.echo(text, nl=False)


#: `--show` of the commands that run a config (reproduce, train-purifier, train-detector)
SHOW_HELP = "Print the config's text (comments included: a start for your own copy) and exit."


def parse_override(text: str) -> tuple[str, Any]:
    """One `--set SECTION.KEY=VALUE` as (key, value): VALUE read as TOML (a bare word is text, `none` is None:
    `tomlconfig.parse_toml_value`); a text without `=` or without a key is a `ConfigError` saying the form."""
    from ..utils.tomlconfig import parse_toml_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return key.strip(), parse_toml_value(value)


def parse_overrides(texts: Sequence[str], options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `--set` options of a command ({key: value}, in order). A key given twice, or one that an option given
    beside them also sets (`options`: {key: that option, e.g. "data.root": "--data"}, only those given), is a
    `ConfigError` naming both: one of the two would be dropped without a word."""
    sets: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        if key in sets:
            raise ConfigError(f"--set {key} is given twice; give it once")
        taken = [(k, opt) for k, opt in (options or {}).items() if _sets(key, value, k)]
        if taken:
            raise ConfigError(f"--set {text} and {taken[0][1]} both set {taken[0][0]}; give one of them")
        sets[key] = value
    return sets


def _sets(key: str, value: Any, setting: str) -> bool:
    """Whether `--set key=value` sets `setting` ("data.root"): the key, or a table that holds it (data={root=...})."""
    if key == setting:
        return True
    if not setting.startswith(key + "."):
        return False
    for part in setting[len(key) + 1:].split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True
