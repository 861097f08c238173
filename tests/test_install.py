"""The base install works: `pip install puface`, no extras, runs `puface demo` (slow: builds a fresh venv)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_without_extras_runs_the_demo(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first, on its own (as scripts/setup.sh does): TORCH_SPEC picks the build, the local CPU wheel here
    subprocess.run(pip + [os.environ.get("TORCH_SPEC", "torch==2.13.0")], check=True)
    subprocess.run(pip + [str(REPO)], check=True)
    extras = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('dlib'), u.find_spec('onnxruntime'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert extras.stdout.split() == ["None", "None"]  # truly without the extras
    lic = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                          "print([f.name for f in m.distribution('puface').files if 'licenses' in f.parts])"],
                         capture_output=True, text=True, check=True)
    assert "LICENSE" in lic.stdout  # the licence text travels with the package
    out = tmp_path / "demo"
    run = subprocess.run([str(venv / "bin" / "puface"), "demo", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert {r["defense"] for r in rows} >= {"none", "puface"} and (out / "report.html").is_file()
    assert "Traceback" not in run.stderr


def test_build_backend_floor_reads_the_license_field():
    """`license = "MIT"` (an SPDX string, PEP 639) is read by setuptools 77 on; an older one that the build-system
    floor lets in (a pinned or system setuptools, --no-build-isolation) fails the build on it."""
    from packaging.requirements import Requirement

    from puface.utils.tomlconfig import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    if not isinstance(meta["project"].get("license"), str):
        return
    req = next(Requirement(r) for r in meta["build-system"]["requires"] if Requirement(r).name == "setuptools")
    assert not req.specifier.contains("76.1.0"), req


@pytest.mark.parametrize("args", [["demo"], ["purify", "in", "out"], ["detect", "in"], ["models", "list"]])
def test_cli_without_torch_says_what_to_install(tmp_path, args):
    """A venv without torch (`pip install --no-deps puface`, or torch uninstalled): every command that needs it
    is one line naming the pip requirement, not a traceback, and writes nothing."""
    code = "import sys; sys.modules['torch'] = None; from puface.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
    assert "PyTorch" in run.stderr and "pip install 'torch>=" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_base_dependencies_name_the_requirement_from_pyproject():
    """Each import name the CLI turns into a pip hint is one of pyproject's dependencies, with its version floor;
    any other missing module is not dressed up as one (it is a bug, and surfaces as such)."""
    from puface.utils.errors import BASE_IMPORTS, missing_base_dependency
    from puface.utils.tomlconfig import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    by_name = {d.split(";")[0].split(">")[0].split("=")[0].strip().lower(): d.split(";")[0].strip() for d in deps}
    for module, dist in BASE_IMPORTS.items():
        assert dist in by_name, f"{dist} (import {module}) is not in pyproject's dependencies"
        err = missing_base_dependency(ModuleNotFoundError(f"No module named '{module}'", name=module))
        assert err is not None and f"pip install '{by_name[dist]}'" in str(err)
    assert missing_base_dependency(ModuleNotFoundError("No module named 'dlib'", name="dlib")) is None
    assert missing_base_dependency(ModuleNotFoundError("No module named 'puface.nope'", name="puface.nope")) is None


def test_wheel_and_sdist_hold_the_package_and_its_data(tmp_path):
    """Built offline with the installed setuptools (no isolation): the wheel holds every file under src/puface
    (the shipped weights, the packaged configs, py.typed; a data file that package-data misses would only fail at
    run time) and nothing beside the package; the sdist holds the same source and no partial test suite."""
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build-system floor
    import tarfile
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(REPO / name, tmp_path)
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    built = []
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state between the two
        code = f"import sys, setuptools.build_meta as b; print('built:', b.{hook}(sys.argv[1]))"
        run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        built.append(run.stdout.rsplit("built: ", 1)[1].strip())  # after setuptools' log on stdout
    sdist_name, wheel_name = built

    package = {p.relative_to(src).as_posix() for p in (src / "puface").rglob("*") if p.is_file()}
    assert {"puface/weights/purifier-default.safetensors", "puface/configs/demo.toml", "puface/py.typed"} <= package
    with zipfile.ZipFile(out / wheel_name) as whl:
        names = set(whl.namelist())
    assert {n for n in names if not n.startswith("puface-")} == package
    assert "puface = puface.cli:main" in zipfile.ZipFile(out / wheel_name).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    with tarfile.open(out / sdist_name) as sd:
        files = {m.name.split("/", 1)[1] for m in sd.getmembers() if m.isfile()}
    assert {f"src/{p}" for p in package} <= files
    assert not [f for f in files if f.startswith("tests/")], "a partial test suite in the sdist"
