"""`puface cloak`: cloak a folder of face images with Fawkes, LowKey, OPOM or unlearnable examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from .options import (check_engine, check_rotations, device_option, dry_run_option, engine_options, rank_options,
                      rotations_option, threads_option)


@click.command("cloak")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_root", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--attack",
    "attack_spec",
    metavar="SPEC",
    default="fawkes",
    show_default=True,
    help="Cloaking attack: fawkes, lowkey, opom or unlearnable, optionally with any of its settings in the spec "
    "grammar of configs and `evaluate --attack` (name:key=value,..., lists a|b), e.g. "
    "'lowkey:steps=20,step_size=0.00625' or 'fawkes:mode=mid,cap=project'. opom and unlearnable cloak each "
    "identity folder (first level under IN) as one group: one OPOM mask per person; unlearnable examples "
    "learn the other folders as classes, with the reference code's min-min loop (stop_on=all, start=zero); "
    "'unlearnable:stop_on=protected,start=uniform' is puface's loop before 2026-12-07, a weaker noise (the "
    "published grids' unlearnable cloaks).",
)
@click.option(
    "--mode",
    type=click.Choice(["low", "mid", "high", "custom"]),
    default=None,
    help="Fawkes v1.0.2 mode (DSSIM budget / steps / learning rate: low 0.004/40/25, mid 0.012/75/20, "
    "high 0.017/150/15); 'custom' takes --th/--steps/--lr.  [default: high]",
)
@click.option(
    "--surrogate",
    "surrogates",
    multiple=True,
    metavar="NAME_OR_PATH",
    help="Face model to optimise against: a registered name (see `puface models list`) or an ONNX/"
    "TorchScript file (repeatable). Default: Fawkes low dlib-resnet29, mid/high dlib-resnet29 + sface; "
    "LowKey every installed model (one per network, on dlib chips: not the -arcface112 variants).",
)
@click.option(
    "--th",
    type=float,
    default=None,
    help="Fawkes custom: DSSIM budget (saved images stay under 1.1 x th, "
    "except those v1.0's fallback keeps; see --no-fallback).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Fawkes custom / LowKey / OPOM / unlearnable: optimisation steps (defaults: LowKey 50, OPOM 16, "
    "its variant dfanet-mfim 100, unlearnable 20 per round).",
)
@click.option("--lr", type=float, default=None, help="Fawkes custom: Adadelta learning rate.")
@click.option(
    "--fallback/--no-fallback",
    default=True,
    show_default=True,
    help="Fawkes: v1.0's 'keep the last iterate when the best one is weak' rule (it can exceed 1.1 x th, "
    "up to DSSIM 0.015; such images are flagged in the CSV). --no-fallback keeps every image in budget.",
)
@click.option(
    "--targeted",
    is_flag=True,
    help="Fawkes: the paper's targeted version (mimic the farthest identity of --target-pool) "
    "instead of v1.0's push-away.",
)
@click.option(
    "--geometry",
    type=click.Choice(["chip", "square112"]),
    default="chip",
    show_default=True,
    help="Fawkes: where the DSSIM budget is measured. chip: on the image at its size. square112: as Fawkes "
    "v1.0.2 does, on the image padded to a square (+30 px, mean colour) and resized to 112 px; the cloak "
    "is upsampled back, so the same --mode changes the image more.",
)
@click.option(
    "--cap",
    type=click.Choice(["clip", "project"]),
    default="clip",
    show_default=True,
    help="Fawkes: how the +-15 grey-level cap acts. clip: as v1.0.2, clipped inside the loss, so a pixel "
    "past the cap gets no gradient and a step that overshoots the budget can leave an image weakly "
    "cloaked. project: moved back inside the cap after every step (same budget, stronger cloaks).",
)
@click.option(
    "--target-pool",
    type=click.Path(path_type=Path),
    default=None,
    help="With --targeted: identity folders (POOL/<identity>/<image>) to pick each user's target from. "
    "A user is a first-level folder of IN.",
)
@click.option(
    "--perceptual",
    type=click.Choice(["lpips", "ssim", "auto"]),
    default=None,
    help="LowKey's perceptual penalty: lpips (the default, LowKey as released), "
    "ssim (1 - SSIM) or auto (LPIPS if installed, else SSIM with a warning).",
)
@click.option(
    "--epsilon", type=float, default=None, help="OPOM / unlearnable: L-inf budget in grey levels (0-255; default 8)."
)
@click.option(
    "--hull",
    type=click.Choice(["affine", "convex", "center", "fi-uap"]),
    default=None,
    help="OPOM: the person's feature subspace to push out of (default affine; fi-uap: the FI-UAP baseline).",
)
@click.option(
    "--perturb",
    type=click.Choice(["samplewise", "classwise"]),
    default=None,
    help="Unlearnable examples: one noise per photo (samplewise, the default) or per identity (classwise).",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="Unlearnable examples: identity folders of other people to learn as the other classes "
    "(default: the other identity folders under IN).",
)
@click.option(
    "--through-purifier",
    "through",
    metavar="DEFENSE",
    default=None,
    help="Adaptive attack: optimise the cloak through this defense ('default' = the shipped purifier, a "
    "purifier checkpoint path, or any defense spec such as blur:sigma=1), i.e. against "
    "embed(defense(x)), with the same budget. Needs --surrogate.",
)
@click.option(
    "--gradient",
    type=click.Choice(["exact", "bpda"]),
    default="exact",
    show_default=True,
    help="With --through-purifier: backpropagate through the purifier (exact) or treat it as the identity "
    "in the backward pass (bpda).",
)
@click.option(
    "--eot-noise",
    type=float,
    default=0.0,
    show_default=True,
    help="With --through-purifier: Gaussian noise (std, images in [0,1]) added before the purifier at each "
    "step (expectation over transformations).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of every random choice (per image: seed + pixel hash)."
)
@click.option(
    "--batch-size",
    type=int,
    default=16,
    show_default=True,
    help="Images optimised together. The same images in the same batches give the same bytes on every run; "
    "other batch mates give equally strong cloaks that differ in some pixels (float rounding amplified by "
    "the optimisation).",
)
@device_option()
@threads_option("Torch compute threads (default: torch's choice, one per core).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "same"]),
    default="png",
    show_default=True,
    help="Output format: png (lossless: keeps the cloak intact) or same as the input (JPEG re-encoding weakens it).",
)
@click.option(
    "--tool-names",
    is_flag=True,
    help="Name outputs like the original tools: <stem>_cloaked.png (Fawkes), <stem>_attacked.png (LowKey).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Skip images whose output and OUT/cloak_stats.csv row already exist (refused when OUT was made with "
    "other settings); --no-resume redoes every image.",
)
@click.option(
    "--align",
    is_flag=True,
    help="Photos, not chips: detect faces, cloak each aligned 150x150 face chip and paste it back "
    "(photos without a face are skipped).",
)
@click.option("--largest-face", is_flag=True, help="With --align: cloak only the largest face of each photo.")
@rotations_option("cloaked and pasted back into the photo as it is (size and layout kept)")
@rank_options
@click.option(
    "--io-workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Threads that decode and encode images meanwhile.",
)
@engine_options("attack")
@dry_run_option("cloak")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def cloak(
    in_path: Path,
    out_root: Path,
    attack_spec: str,
    mode: str | None,
    surrogates: tuple[str, ...],
    th: float | None,
    steps: int | None,
    lr: float | None,
    fallback: bool,
    targeted: bool,
    geometry: str,
    cap: str,
    target_pool: Path | None,
    perceptual: str,
    epsilon: float | None,
    hull: str | None,
    perturb: str | None,
    reference: Path | None,
    through: str | None,
    gradient: str,
    eot_noise: float,
    seed: int,
    batch_size: int,
    device: str,
    threads: int | None,
    fmt: str,
    tool_names: bool,
    resume: bool,
    align: bool,
    largest_face: bool,
    rotations: str | None,
    rank: int | None,
    world_size: int | None,
    io_workers: int,
    engine: str,
    address: str | None,
    workers: int | None,
    dry_run: bool,
    progress: bool,
) -> None:
    """Cloak the face images under IN and write them to OUT (same tree and names, PNG by default).
    An alpha channel (transparency) is kept; a grayscale image comes out RGB, since a cloak changes colours.

    Works on aligned face chips of any size (e.g. dlib's 150x150 or ArcFace's 112x112); for
    ordinary photos add --align. Writes each batch as soon as it is done, resumes where it
    stopped, and records per-image DSSIM, PSNR, largest pixel change and embedding shift per
    surrogate in OUT/cloak_stats.csv and the full attack setting in OUT/cloak_config.json.
    Exit code 1 if some images failed.

    \b
    Examples:
      puface cloak --attack fawkes --mode high faces/ cloaked/
      puface cloak --attack lowkey --surrogate dlib-resnet29 faces/ cloaked/
      puface cloak --attack 'lowkey:steps=20,step_size=0.00625,embedders=dlib-resnet29' faces/ cloaked/
      puface cloak --mode custom --th 0.01 --steps 100 --lr 20 faces/ cloaked/
      puface cloak --attack opom --surrogate dlib-resnet29 people/ masked/
      puface cloak --attack unlearnable --perturb classwise --surrogate dlib-resnet29 people/ unlearnable/

    \b
    Do your cloaks protect you? Offline, as FaceCure measures it (a face model trained on your cloaked
    photos and other people's, tested on your clean ones; with and without the purifier): put your chips
    in people/me/ beside other people's folders (e.g. from `puface data fetch lfw`), then
      puface cloak --mode high people/me/ cloaked/me/
      puface evaluate --data people/ --user me --cloaked cloaked/ --defense none --defense puface
    """
    import torch

    from ..attacks import create_attack
    from ..attacks.folder import cloak_folder
    from ..utils.errors import PufaceError

    if batch_size < 1:
        raise PufaceError("--batch-size must be >= 1")
    if threads is not None:
        torch.set_num_threads(threads)
    if largest_face and not align:
        raise PufaceError("--largest-face needs --align")
    rotations = check_rotations(rotations, align, out_root / "cloak_config.json", resume)
    from ..io.jobs import resolve_rank

    rank, world_size = resolve_rank(rank, world_size)
    attack_name, mode, spec = _attack_spec(attack_spec, mode)

    knobs: dict = {}
    group_opts = {k: v for k, v in (("epsilon", epsilon), ("hull", hull), ("perturb", perturb)) if v is not None}
    if attack_name in ("opom", "unlearnable"):
        wrong = [k for k in group_opts if (k == "hull") != (attack_name == "opom") and k != "epsilon"]
        if wrong:
            raise PufaceError(f"--{wrong[0]} is not an option of {attack_name}")
        if th is not None or lr is not None or targeted or target_pool is not None or mode is not None or not fallback \
                or geometry != "chip" or cap != "clip" or perceptual is not None:
            raise PufaceError(
                "--mode, --th, --lr, --no-fallback, --targeted, --target-pool, --geometry, --cap and --perceptual "
                "are Fawkes / LowKey options"
            )
        if reference is not None and attack_name != "unlearnable":
            raise PufaceError("--reference is an option of unlearnable")
        knobs.update(group_opts)
        if steps is not None:
            knobs["steps"] = steps
        kwargs: dict[str, Any] = {}
    elif group_opts or reference is not None:
        raise PufaceError("--epsilon, --hull, --perturb and --reference are OPOM / unlearnable options")
    elif attack_name == "fawkes":
        custom = {k: v for k, v in (("th", th), ("steps", steps), ("lr", lr)) if v is not None}
        if custom and (mode or "high") != "custom":
            raise PufaceError(
                f"--{'/--'.join(custom)} need --mode custom (mode {mode or 'high'!r} fixes th, steps and lr)"
            )
        knobs.update(custom)
        if targeted:
            knobs["targeted"] = True
        if not fallback:
            knobs["save_last_on_failed"] = False
        if geometry != "chip":
            knobs["geometry"] = geometry
        if cap != "clip":
            knobs["cap"] = cap
        if perceptual is not None:
            raise PufaceError("--perceptual is a LowKey option")
        kwargs = {"mode": mode or "high"}
    else:
        if (
            th is not None
            or lr is not None
            or targeted
            or target_pool is not None
            or mode is not None
            or not fallback
            or geometry != "chip"
            or cap != "clip"
        ):
            raise PufaceError(
                "--mode, --th, --lr, --no-fallback, --targeted, --target-pool, --geometry and --cap are Fawkes options"
            )
        if steps is not None:
            knobs["steps"] = steps
        if perceptual is not None:
            knobs["perceptual"] = perceptual
        kwargs = {}
    adaptive: dict = {}
    if through is not None:
        if not surrogates:
            raise PufaceError("--through-purifier needs the surrogate(s) named with --surrogate")
        adaptive = {"through": through, "gradient": gradient, "eot_noise": eot_noise}
    elif gradient != "exact" or eot_noise:
        raise PufaceError("--gradient and --eot-noise go with --through-purifier")
    embedders = _spec_settings(attack_spec, spec, {**knobs, **adaptive}, surrogates)
    check_engine(engine, address, workers)
    from functools import partial

    attack_factory = partial(create_attack, attack_name, embedders=embedders, seed=seed,
                             device=None if device == "auto" else device, batch_size=batch_size, **kwargs, **knobs,
                             **spec, **adaptive)
    attack = _with_spec_text(attack_factory, attack_spec, attack_name, spec)
    click.echo(f"{attack.name}: surrogates {', '.join(e.name for e in attack.surrogates)}; seed {seed}; "
               f"device {attack.device}; {torch.get_num_threads()} threads", err=True)
    report = cloak_folder(in_path, out_root, attack, fmt=fmt, tool_suffix=tool_names, batch_size=batch_size,
                          resume=resume, align=align, largest_face=largest_face, rotations=rotations,
                          target_pool=target_pool, rank=rank,
                          world_size=world_size, io_workers=io_workers, progress=progress,
                          log=lambda m: click.echo(m, err=True), reference=reference, engine=engine, address=address,
                          workers=workers, attack_factory=attack_factory, dry_run=dry_run)
    from ..io.jobs import DryRun

    if isinstance(report, DryRun):
        return click.echo(report.summary("cloak"))
    click.echo(report.summary("cloaked"))
    if report.exit_code:
        raise click.exceptions.Exit(report.exit_code)


#: the attacks `puface cloak` runs (a folder of single images or, for the group attacks, of identity folders)
CLOAK_ATTACKS = ("fawkes", "lowkey", "opom", "unlearnable")


def _attack_spec(text: str, mode: str | None) -> tuple[str, str | None, dict[str, Any]]:
    """(name, Fawkes mode, the other settings) of `--attack SPEC` (`utils.specs` grammar); a mode in the spec and
    another --mode, or an attack `cloak` does not run, is a `PufaceError`."""
    from ..utils.errors import PufaceError
    from ..utils.specs import parse_spec

    spec = parse_spec(text, "--attack")
    name = str(spec.pop("name"))
    spec.pop("label", None)  # names a row in result tables; nothing here
    if name not in CLOAK_ATTACKS:
        raise PufaceError(f"--attack {text!r}: unknown attack {name!r}; choose one of: {', '.join(CLOAK_ATTACKS)}")
    in_spec = spec.pop("mode", None)
    if in_spec is not None and mode is not None and str(in_spec) != mode:
        raise PufaceError(f"--attack {text!r} says mode={in_spec} and --mode says {mode}: give the mode once")
    return name, mode if mode is not None else (None if in_spec is None else str(in_spec)), spec


def _with_spec_text(factory: Callable[[], Any], text: str, name: str, spec: dict[str, Any]) -> Any:
    """`factory()`, with an error about a setting written in `--attack TEXT` (an unknown option, a bad value: the
    attack says `lowkey: ...`) headed by that text, as an unknown attack name is (`--attack 'lowkey:stpes=2': ...`)."""
    import re

    from ..utils.errors import ConfigError

    try:
        return factory()
    except ConfigError as e:
        said = str(e)
        if said.startswith(f"{name}: ") and any(re.search(rf"\b{re.escape(k)}\b", said) for k in spec):
            raise ConfigError(f"--attack {text!r}: {said[len(name) + 2:]}") from None
        raise


def _spec_settings(
    text: str, spec: dict[str, Any], options: dict[str, Any], surrogates: tuple[str, ...]
) -> list[str] | None:
    """The surrogates of the run (--surrogate, else the spec's `embedders`), with `spec` left holding the attack's other
    settings; a setting given both in the spec and by an option, or one that has its own option, is a `PufaceError`."""
    from ..utils.errors import PufaceError

    for key, option in (("seed", "--seed"), ("device", "--device"), ("batch_size", "--batch-size")):
        if key in spec:
            raise PufaceError(f"--attack {text!r}: give {key} as {option}")
    twice = sorted(k for k in spec if k in options)
    if twice:
        raise PufaceError(f"--attack {text!r}: {', '.join(twice)} also given by an option; give each setting once")
    in_spec = spec.pop("embedders", None)
    if in_spec is not None and surrogates:
        raise PufaceError(f"--attack {text!r} names embedders and --surrogate names surrogates: give them once")
    embedders = list(surrogates) or ([in_spec] if isinstance(in_spec, str) else in_spec)
    if "through" in spec and not embedders:
        raise PufaceError(f"--attack {text!r}: an attack through a defense needs its surrogates named (embedders=... "
                          "or --surrogate)")
    return embedders
