"""Options several commands share, and bad numbers: each is refused with one clear line before any work."""

from __future__ import annotations

import pytest

from puface.cli import COMMANDS, main
from puface.io.jobs import resolve_rank
from puface.utils.errors import PufaceError


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


DEVICE_COMMANDS = {
    "evaluate": ["evaluate", "--no-progress"],
    "reproduce": ["reproduce", "demo", "--no-progress"],
    "demo": ["demo", "--no-progress"],
    "train-detector": ["train-detector"],
    "train-purifier": ["train-purifier", "--prepare-only"],
    "purify": ["purify", "IN", "OUT"],
    "cloak": ["cloak", "IN", "OUT"],
    "detect": ["detect", "IN"],
    "calibrate-detector": ["calibrate-detector", "IN", "--out", "d.safetensors"],
}


@pytest.mark.parametrize("name", sorted(DEVICE_COMMANDS))
def test_device_cuda_without_cuda_is_one_line_before_any_work(name, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    code, _, err = run([*DEVICE_COMMANDS[name], "--device", "cuda"], capsys)
    assert (
        code == 2
        and err.strip() == "puface: error: device 'cuda' requested but CUDA is not available (use --device cpu)"
    )
    code, _, err = run([*DEVICE_COMMANDS[name], "--device", "gpu"], capsys)
    assert code == 2 and "invalid device 'gpu'" in err and "Traceback" not in err


def test_every_device_option_takes_auto(capsys):
    with_device = [name for name in COMMANDS if "--device" in run([*name.split(), "--help"], capsys)[1]]
    assert sorted(with_device) == sorted(DEVICE_COMMANDS)
    for name in with_device:
        assert "auto" in run([name, "--help"], capsys)[1].split("--device", 1)[1].split("--", 1)[0]


def test_device_auto_passes_the_check_and_a_configs_device_is_checked(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(["evaluate", "--data", str(tmp_path / "missing"), "--device", "auto", "--no-progress",
                        "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "data folder not found" in err  # got past the device, to the data
    cfg = tmp_path / "c.toml"  # the device is checked before the (missing) data
    cfg.write_text(f'[data]\nroot = "{tmp_path / "missing"}"\n[run]\ndevice = "cuda"\n'
                   '[[attacks]]\nname = "none"\n[[trainers]]\nname = "nn"\n[[defenses]]\nname = "none"\n')
    code, _, err = run(["reproduce", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 2 and "device 'cuda' requested but CUDA is not available" in err
    code, _, err = run(
        ["reproduce", str(cfg), "--device", "cpu", "--out", str(tmp_path / "r"), "--no-progress"], capsys
    )
    assert code == 2 and "data folder not found" in err  # --device overrides the config's


@pytest.mark.parametrize("argv, option", [
    (["evaluate", "--users", "-2"], "--users"),
    (["evaluate", "--users", "0"], "--users"),
    (["evaluate", "--image-size", "0"], "--image-size"),
    (["evaluate", "--max-per-identity", "0"], "--max-per-identity"),
    (["purify", "IN", "OUT", "--world-size", "0"], "--world-size"),
    (["purify", "IN", "OUT", "--world-size", "-2"], "--world-size"),
    (["purify", "IN", "OUT", "--threads", "0"], "--threads"),
    (["detect", "IN", "--rank", "-1"], "--rank"),
    (["cloak", "IN", "OUT", "--mode", "custom", "--steps", "0"], "--steps"),
    (["cloak", "IN", "OUT", "--threads", "0"], "--threads"),
    (["train-detector", "--threads", "0"], "--threads"),
    (["data", "info", "IN", "--top", "-1"], "--top"),
    (["purify", "IN", "OUT", "--io-workers", "0"], "--io-workers"),
    (["cloak", "IN", "OUT", "--io-workers", "-1"], "--io-workers"),
    (["detect", "IN", "--io-workers", "0"], "--io-workers"),
    (["data", "split", "IN", "--min-train", "-3"], "--min-train"),
    (["data", "split", "IN", "--min-test", "-1"], "--min-test"),
])
def test_bad_numbers_name_the_option(argv, option, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and f"Invalid value for '{option}'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "spec", ["fawkes:mode=custom,th=inf", "fawkes:mode=custom,lr=inf", "fawkes:mode=custom,th=nan"]
)
def test_fawkes_budget_and_step_must_be_finite(spec):
    from puface.attacks import create_attack
    from puface.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="must be a number > 0"):
        create_attack(spec)


def test_evaluate_takes_named_users_or_a_count_not_both(tmp_path, capsys):
    code, _, err = run(
        [
            "evaluate",
            "--data",
            str(tmp_path),
            "--user",
            "A",
            "--users",
            "3",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 2 and "give one or the other" in err and not (tmp_path / "r").exists()


def test_rank_and_world_size_from_the_environment_are_checked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "abc")
    code, _, err = run(["purify", str(tmp_path), str(tmp_path / "o")], capsys)
    assert code == 2 and err.strip() == "puface: error: $RANK must be an integer, got 'abc'"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(PufaceError, match="world size"):
        resolve_rank(None, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_rank(None, None) == (0, 2) and resolve_rank(1, None) == (1, 2)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_unusable_puface_home_is_one_line(where, tmp_path, monkeypatch, capsys, johns_dir):
    """$PUFACE_HOME that cannot be a folder: one line naming it and what to do, not a traceback."""
    blocker = tmp_path / "home"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PUFACE_HOME", str(blocker if where == "a file" else blocker / "sub"))
    src = tmp_path / "in" / "a"
    src.mkdir(parents=True)
    (src / "x.jpg").write_bytes(next(iter(sorted(johns_dir.glob("*/*.jpg")))).read_bytes())
    code, _, err = run(
        ["cloak", "--mode", "custom", "--steps", "1", "--no-progress", str(tmp_path / "in"), str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "$PUFACE_HOME" in err and "writable folder" in err and "Traceback" not in err


def test_the_top_level_help_names_every_environment_variable_puface_reads(capsys):
    """`puface --help` said nothing of $PUFACE_HOME (where the cache grows, GBs), $PUFACE_DATA, $PUFACE_MODELS or
    $PUFACE_MAX_PIXELS; each PUFACE_* variable the package reads is now named there."""
    import re
    from pathlib import Path

    import puface

    src = Path(puface.__file__).parent
    read = {m for p in src.rglob("*.py")
            for m in re.findall(r"environ(?:\.get\(|\[)\s*['\"](PUFACE_\w+)['\"]", p.read_text(encoding="utf-8"))}
    assert {"PUFACE_HOME", "PUFACE_DATA", "PUFACE_MODELS"} <= read  # the scan finds them
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert not [name for name in sorted(read) if not re.search(rf"^\s+{name}\s", out, flags=re.M)], out
    assert "~/.cache/puface" in out  # where the cache is when PUFACE_HOME is not set
