"""The Python API as a newcomer calls it (`import puface`): images in the wrong form, the usual mistakes. Each is
either taken (as documented) or a ValueError / ImportError that names the problem, never a silent wrong answer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import puface


@pytest.fixture(scope="module")
def models():
    """The shipped purifier and detector, a defense and an embedder: every API entry that takes images."""
    purifier = puface.load_purifier()
    return {"purifier.purify": purifier.purify, "purifier(images)": purifier,
            "detector.score": puface.load_detector().score, "defense": puface.create_defense("jpeg:quality=75"),
            "embedder": puface.create_embedder("sface")}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_pixels_are_refused_by_every_model(models, bad):
    """A NaN pixel (a division by zero upstream) came back as NaN images or embeddings, as black from the JPEG
    defense (a silent wrong answer) or as an IndexError from inside the detector: now a ValueError naming the count."""
    x = torch.rand(2, 3, 24, 24)
    x[1, 0, 3, 4] = bad
    for who, call in models.items():
        with pytest.raises(ValueError, match=r"expected values in \[0, 1\], got 1 NaN or infinite value"):
            call(x)
        assert call(x[:1]).isfinite().all(), who  # the clean image alone is fine


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_below_one_or_fractional_is_refused_not_images_dropped(models, batch_size):
    """purify(x, batch_size=0) returned no images and batch_size=-1 two of three (slices of a negative size), an
    embedder's embed(batch_size=-1) none, the detector a RuntimeError from inside: now a ValueError naming it."""
    x = torch.rand(3, 3, 24, 24)
    calls = {"purifier": models["purifier.purify"], "detector": models["detector.score"],
             "sface": models["embedder"].embed}
    for who, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{who}: batch_size must be an integer >= 1, got {batch_size}$"):
            call(x, batch_size=batch_size)
        assert len(call(x, batch_size=2)) == 3, who


@pytest.mark.parametrize("batch_size", [np.True_, torch.tensor(True), "3", b"3", "3.0"])
def test_a_numpy_or_torch_bool_or_text_batch_size_is_refused_as_a_python_bool_is(models, batch_size):
    """`check_batch_size` refused batch_size=True but took numpy's and torch's True as 1 (one image per forward pass,
    silently), took the text "3" (and b"3") though text is refused, and answered "3.0" with Python's own message
    (invalid literal for int()) naming no model. Each is now the ValueError naming it; numpy and 0-d torch integers
    are still taken as their values, and an int too large for a float (an OverflowError before) as itself."""
    from puface.utils.images import check_batch_size

    with pytest.raises(ValueError, match=r"^purifier: batch_size must be an integer >= 1, got "):
        models["purifier.purify"](torch.rand(2, 3, 24, 24), batch_size=batch_size)
    assert [check_batch_size(v, "x") for v in (np.int64(2), torch.tensor(2), np.float64(2.0), 2.0, 2)] == [2] * 5
    assert check_batch_size(10**400, "x") == 10**400


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_your_own_module_as_a_defense_refuses_a_bad_batch_size_naming_it(batch_size):
    """`ModuleDefense(module, batch_size=...)` (your own denoiser, the batched call the batch_size check missed):
    0 raised range()'s "arg 3 must not be zero", -1 torch.cat's "expected a non-empty list of Tensors" (no word of
    batch_size), 2.5 and True ran as 2 and 1. Now the ValueError naming the defense's label, when it is made."""
    from puface.defenses import ModuleDefense

    with pytest.raises(ValueError, match=r"^mine: batch_size must be an integer >= 1, got "):
        ModuleDefense(torch.nn.Identity(), "mine", batch_size=batch_size)
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(ModuleDefense(torch.nn.Identity(), "mine", batch_size=np.int64(2))(x), x)


@pytest.mark.parametrize("what", ["ndarray", "Image", "list"])
def test_purify_and_score_refuse_what_is_not_a_tensor_naming_it(models, what):
    """A numpy array, a PIL image or a list of tensors into `purifier.purify` or `detector.score` (the two that also
    take uint8) gave AttributeError "'Image' object has no attribute 'dtype'"; now the ValueError the other models
    give, naming the type and how to make a tensor of it."""
    from PIL import Image

    x = torch.rand(1, 3, 24, 24)
    arr = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    given = {"ndarray": arr, "Image": Image.fromarray(arr), "list": [x[0]]}[what]
    for who in ("purifier.purify", "detector.score"):
        with pytest.raises(ValueError, match=rf"expected a torch tensor .* got {what} .*image_to_tensor"):
            models[who](given)
    assert models["purifier.purify"]((x * 255).round().to(torch.uint8)).dtype == torch.float32  # uint8: documented


def test_is_cloaked_refuses_images_given_for_scores():
    """`detector.is_cloaked(images)` (the images, not `detector.score(images)`) returned a bool per pixel, a tensor
    of the images' shape that looks like an answer; now a ValueError. Scores as a list or one number still work."""
    detector = puface.load_detector()
    with pytest.raises(ValueError, match=r"expected \(N,\) scores .* got shape \(2, 3, 8, 8\)"):
        detector.is_cloaked(torch.rand(2, 3, 8, 8))
    t = detector.threshold()
    assert detector.is_cloaked([t - 1, t + 1]).tolist() == [False, True]
    assert bool(detector.is_cloaked(torch.tensor(t + 1))) is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
@pytest.mark.parametrize("device", ["cuda", "gpu"], ids=["no-cuda", "unknown"])  # an id "cuda" reads as the mark
def test_create_embedder_on_a_device_this_machine_lacks_is_one_line(device):
    """`create_embedder("sface", device="cuda")` on a CPU-only machine raised torch's AssertionError ("Torch not
    compiled with CUDA enabled"), "auto" a RuntimeError: the device goes through `resolve_device` as in
    load_purifier and create_attack."""
    from puface.utils.errors import PufaceError

    with pytest.raises(PufaceError, match="device"):
        puface.create_embedder("sface", device=device)
    assert next(puface.create_embedder("sface", device="auto").parameters()).device.type == "cpu"


@pytest.mark.parametrize("code", ["import puface; puface.load_purifier()", "from puface import create_attack",
                                  "import puface.api"])
def test_the_api_without_torch_is_an_import_error_saying_what_to_install(code):
    """A venv without torch: `puface.load_purifier()` raised ModuleNotFoundError 'torch' from deep inside; now an
    ImportError (from `errors.missing_base_dependency`, the CLI's one line) naming the pip requirement. `puface.api`
    (the module the docstrings point to) says it too, as every other module does (the test below)."""
    run = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\ntry:\n    " + code +
                          "\nexcept ImportError as e:\n    print(type(e).__name__, e.name, e)"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]
    assert run.stdout.startswith("MissingBaseDependencyError torch PyTorch") and "pip install 'torch>=" in run.stdout


def test_puface_imported_from_a_zip_archive_without_torch_says_what_to_install(tmp_path):
    """puface imported from a zip archive (a zipapp, a wheel put on sys.path) without torch: `import puface.api` (and
    every other module) raised the bare ModuleNotFoundError 'torch', since the import hints swapped only the loaders
    of .py and .pyc files; the zip archive's loader says what to pip install now too."""
    import zipfile
    from pathlib import Path

    archive = tmp_path / "puface.zip"
    root = Path(puface.__file__).parent
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(root.rglob("*.py")):
            z.write(f, f.relative_to(root.parent).as_posix())
    code = """import sys
sys.path.insert(0, sys.argv[1])
sys.modules['torch'] = None
try:
    exec(sys.argv[2])
except ImportError as e:
    print(type(e).__name__, e.name, e)
import puface
print(puface.__file__)"""
    for stmt in ("import puface.api", "import puface; puface.load_purifier()", "import puface.purifier"):
        run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(archive), stmt], capture_output=True,
                             text=True)
        assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]
        said, where = run.stdout.strip().split("\n")
        assert where == str(archive / "puface" / "__init__.py")  # (the archive's copy was imported)
        assert said.startswith("MissingBaseDependencyError torch PyTorch") and "pip install 'torch>=" in said, said


@pytest.mark.parametrize("dep, spec", [("torch", "torch>="), ("numpy", "numpy>=")])
def test_every_module_without_a_base_dependency_imports_or_says_what_to_install(dep, spec):
    """Without torch, `import puface.purifier` (or models, attacks, detection, utils.images: 70 of puface's modules)
    raised a bare ModuleNotFoundError 'torch'; only `puface.api` said what to pip install. Now every module (walked
    with pkgutil) either imports or raises the MissingBaseDependencyError naming the requirement."""
    import json
    import pkgutil

    names = [m.name for m in pkgutil.walk_packages(puface.__path__, "puface.") if not m.name.endswith("__main__")]
    code = f"""import importlib, json, sys
sys.modules[{dep!r}] = None
got = {{}}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        got[name] = "imported"
    except ImportError as e:
        got[name] = f"{{type(e).__name__}} {{e.name}}: {{e}}"
print(json.dumps(got))"""
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *names], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    hint = f"MissingBaseDependencyError {dep}: "
    bad = {name: said for name, said in got.items() if said != "imported" and not (
        said.startswith(hint) and f"pip install '{spec}" in said)}
    assert not bad, bad
    for needs in ("api", "purifier", "models.base", "utils.images", "evaluation.data"):
        needs = f"puface.{needs}"
        assert got[needs].startswith(hint), (needs, got[needs])  # the dependency was missing indeed
    assert got["puface.cli"] == got["puface.utils.errors"] == "imported"  # `puface --help` needs neither


@pytest.mark.parametrize("again", [
    "for k in [k for k in sys.modules if k.split('.')[0] == 'puface']:\n    del sys.modules[k]\nimport puface",
    "import importlib, puface.utils.errors\nimportlib.reload(puface.utils.errors)\nimportlib.reload(puface)",
], ids=["modules-dropped", "reloaded"])
def test_puface_imported_afresh_still_imports_its_modules(again):
    """`import puface` after its modules were dropped from sys.modules (a test's clean-up, a notebook's reload), or a
    reload of utils.errors and puface, put a second import-hint finder on sys.meta_path beside the first (a new class,
    which the check for one did not recognise); each asked the other for puface's modules, so the next
    `import puface.purifier` ended in RecursionError. One finder stays, and it still says what to install."""
    code = (f"import sys\nimport puface\n{again}\nimport puface.purifier, puface.io.jobs\n"
            "print(sum(getattr(f, 'puface_hints', False) for f in sys.meta_path))\n"
            "sys.modules['torch'] = None\nsys.modules.pop('puface.detection', None)\n"
            "try:\n    import puface.detection\nexcept ImportError as e:\n    print(type(e).__name__, e.name)")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-1500:]
    assert run.stdout.split("\n")[:2] == ["1", "MissingBaseDependencyError torch"]


def test_a_missing_part_of_an_installed_dependency_is_not_called_a_missing_package():
    """A ModuleNotFoundError for a submodule of an installed base package ('numpy._core' from a wheel built for numpy
    2 under numpy 1, a torch build without a part) was dressed up as 'PyTorch ... is not installed; pip install
    torch>=2.1', by every puface module since the import hints (before, by puface.api and the CLI): installing changes
    nothing. Such an error is now raised as it is; a missing package, or a part of one, still says what to install."""
    code = """import sys
sys.modules[sys.argv[1]] = None
try:
    import puface.training.train
except ImportError as e:
    print(type(e).__name__, e.name)"""
    got = {}
    for missing in ("torch.distributed", "torch"):
        run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, missing], capture_output=True, text=True)
        got[missing] = run.stdout.strip()
    assert got == {"torch.distributed": "ModuleNotFoundError torch.distributed",
                   "torch": "MissingBaseDependencyError torch"}, got
    run = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                          "from puface.utils.errors import missing_base_dependency as m\n"
                          "print(type(m(ModuleNotFoundError(name='torch.nn'))).__name__)"],
                         capture_output=True, text=True)
    assert run.stdout.strip() == "MissingBaseDependencyError", run.stderr[-1000:]


def test_a_misspelt_shipped_purifier_names_the_shipped_ones():
    """`load_purifier("arcfase112")` said only "purifier checkpoint not found" (the detector's loader lists its
    shipped names); now Purifier.load, the one home the `puface` defense also goes through, lists them."""
    from puface.utils.errors import PufaceError

    for load in (puface.load_purifier, lambda w: puface.create_defense("puface", weights=w)(torch.rand(1, 3, 8, 8))):
        with pytest.raises(PufaceError, match=r"arcfase112: purifier checkpoint not found; .* default, arcface112"):
            load("arcfase112")


def test_run_experiment_seeds_are_integers_or_a_config_error(tmp_path):
    """`run_experiment(cfg, seeds=1)` raised TypeError "'int' object is not iterable" (a config's `seeds = 1` is
    taken), `seeds=[1.5]` ran seed 1 (int(1.5)), `seeds=0` was ignored (falsy), and a config's `seeds = 1.5` was a
    TypeError; now one integer or a list of them, anything else the config's ConfigError, before anything runs."""
    from puface.experiments import ExperimentConfig
    from puface.utils.errors import ConfigError

    cfg = puface.load_config("demo")
    assert cfg.with_seeds(1).seeds == [1] and cfg.with_seeds(np.int64(0)).seeds == [0]
    assert cfg.with_seeds([np.int64(2), 3]).seeds == [2, 3]
    assert ExperimentConfig.from_dict({**cfg.raw, "seeds": (4, 5)}).seeds == [4, 5]  # a tuple, as before
    for bad in (1.5, [1.5], ["a"], [], [True]):  # named as the caller's, not as demo.toml's (which has other seeds)
        with pytest.raises(ConfigError, match=r"^run_experiment\(seeds=\.\.\.\): seeds must be a list of integers"):
            puface.run_experiment(cfg, tmp_path / "out", seeds=bad)
    with pytest.raises(ConfigError, match=r"^with_seeds: seeds must be a list of integers, got \[1\.5\]$"):
        cfg.with_seeds([1.5])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="seeds must be a list of integers, got 1.5"):
        ExperimentConfig.from_dict({**cfg.raw, "seeds": 1.5})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", [None, 3, b"demo"])
def test_run_experiment_given_no_config_says_what_a_config_is(config):
    """`run_experiment(None)` raised pathlib's TypeError "expected str, bytes or os.PathLike object, not NoneType";
    now the config's one line naming what it got and what it takes."""
    from puface.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^run_experiment: config must be a packaged config's name, a TOML file's "
                                          rf"path, a config dict or an ExperimentConfig, got {type(config).__name__}$"):
        puface.run_experiment(config)


def test_experiment_result_is_part_of_the_api():
    """`run_experiment` returns an ExperimentResult (its fields documented there) but `puface.ExperimentResult` was
    an AttributeError, unlike the other API types (ExperimentConfig, PurifyBatch)."""
    from puface.experiments import ExperimentResult

    assert puface.ExperimentResult is ExperimentResult and "ExperimentResult" in puface.__all__
    assert "ExperimentResult" in dir(puface)


def test_a_numpy_array_for_images_gets_the_fix_that_fits_it():
    """A float (N, 3, H, W) numpy array was told to go through `image_to_tensor` (for a uint8 (H, W, 3) photo: wrong
    for it); now the advice follows the array's dtype and layout, and the message names both."""
    from puface.utils.images import check_unit_images

    x = np.random.rand(2, 3, 8, 8).astype(np.float32)
    with pytest.raises(ValueError, match=r"^m: .*, got ndarray float32 \(2, 3, 8, 8\) \(torch\.from_numpy\(a\)\)$"):
        check_unit_images(x, "m")
    nhwc = x.transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match=r"got ndarray float32 \(2, 8, 8, 3\) \(torch\.from_numpy\(a\)\.permute\("):
        check_unit_images(nhwc, "m")
    assert check_unit_images(torch.from_numpy(nhwc).permute(0, 3, 1, 2), "m").shape == (2, 3, 8, 8)  # the fix works
    with pytest.raises(ValueError, match=r"got ndarray uint8 \(8, 8, 3\) \(a uint8 \(H, W, 3\) .*image_to_tensor"):
        check_unit_images((x[0].transpose(1, 2, 0) * 255).astype(np.uint8), "m")


@pytest.mark.parametrize("name", ["fawkes", "opom"])  # CloakAttack.run and GroupCloakAttack.run
def test_an_attack_names_itself_and_what_it_was_given(name):
    """An attack given 0..255 floats said only "images must be finite and in [0, 1]" (not what it got, nor the
    fix), a numpy array a TypeError; now the models' check (`check_unit_images`) naming the attack, then its own
    strict [0, 1] with the range it got."""
    attack = puface.create_attack(name, embedders=["dlib-resnet29"], device="cpu")
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=rf"attack {name}.*: expected values in \[0, 1\], got .*255.*divide by 255"):
        attack(x * 255)
    with pytest.raises(ValueError, match=rf"attack {name}.*: expected values in \[0, 1\], got \[.*, 1\.2\]$"):
        attack(torch.cat([x, torch.full_like(x, 1.2)]))
    with pytest.raises(ValueError, match=rf"attack {name}.*: expected a torch tensor .* got ndarray"):
        attack(x.numpy())


def test_run_experiment_refuses_an_output_folder_inside_its_data(tmp_path):
    """`run_experiment(cfg, out=DATA/"out")` ran and wrote its examples into the data folder, so the next call (a
    resume) was refused as "results of other data (images added ...)"; now refused before anything is written, as
    the folder jobs refuse an output inside their input (`io.files.check_output_folder`)."""
    from evaluation_helpers import EXPERIMENT_COLOURS_TOML, register_standins, write_colour_faces
    from puface.utils.errors import PufaceError
    from puface.utils.tomlconfig import tomllib

    register_standins()
    root = write_colour_faces(tmp_path / "data", per_identity=4, size=16)
    cfg = tomllib.loads(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    with pytest.raises(PufaceError, match="lies inside the input folder"):
        puface.run_experiment(cfg, out=root / "out")
    assert not (root / "out").exists()


def test_every_api_name_has_its_own_docstring():
    """`help(puface.ExperimentResult)` showed only the dataclass's generated signature (no word on what `rows`,
    `summary` or `report` hold); every name `import puface` exports now has a docstring of its own, and those that
    take or return images say their form."""
    import inspect

    for name in puface.__all__:
        if name == "__version__":
            continue
        doc = inspect.getdoc(getattr(puface, name)) or ""
        assert doc and not doc.startswith(f"{name}("), name  # a dataclass without one: its generated signature
    for name in ("load_purifier", "load_detector", "create_attack", "create_defense", "create_embedder",
                 "create_trainer"):
        assert "(N, 3, H, W)" in inspect.getdoc(getattr(puface, name)) and "[0, 1]" in inspect.getdoc(
            getattr(puface, name)), name
    assert "uint8 RGB" in inspect.getdoc(puface.PurifyBatch)


def test_puface_imported_from_a_zip_archive_uses_its_shipped_weights_and_configs(tmp_path):
    """puface imported from a zip archive (torch present): `package_weights` gave the path inside the archive as a plain
    Path, so the shipped purifier and detector were "missing from this installation", and `load_config('demo')` was a
    NotADirectoryError. Now the packaged files are extracted once into $PUFACE_HOME's cache and used from there: the
    archive's purifier purifies exactly as the installed one."""
    import zipfile
    from pathlib import Path

    archive = tmp_path / "puface.zip"
    root = Path(puface.__file__).parent
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(root.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, f.relative_to(root.parent).as_posix())
    torch.manual_seed(0)
    images = torch.rand(1, 3, 150, 150)
    torch.save(images, tmp_path / "x.pt")
    code = """import sys
sys.path.insert(0, sys.argv[1])
import torch
import puface
from puface.training.config import load_config as purifier_config
assert puface.__file__.startswith(sys.argv[1]), puface.__file__
torch.save(puface.load_purifier().purify(torch.load(sys.argv[2])), sys.argv[3])
puface.load_detector()
print(puface.load_config('demo').name, puface.load_config('lfw-ablations-shipped').name, purifier_config('default')
      is not None)"""
    env = {**os.environ, "PUFACE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(archive), str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["demo", "lfw-ablations-shipped", "True"]
    assert torch.equal(torch.load(tmp_path / "y.pt"), puface.load_purifier().purify(images))


def test_two_threads_extracting_one_packaged_file_from_a_zip_both_get_it(tmp_path, monkeypatch):
    """`package_file` extracted a zip archive's file through `.NAME.<pid>.tmp`: two threads of one process (a thread
    pool loading the shipped purifier) wrote the same temporary file, the first rename published it while the second
    thread was rewriting it, and the second rename found nothing ("cannot extract ... set $PUFACE_HOME to a writable
    folder"). Each thread now has its own temporary file: both get the whole file, and none is left behind."""
    import threading
    import zipfile

    from puface.utils import paths

    data = os.urandom(1 << 16)
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("puface/weights/x.bin", data)
    monkeypatch.setattr(paths.resources, "files", lambda pkg: zipfile.Path(archive, "puface/"))
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    both = threading.Barrier(2, timeout=10)
    replace = os.replace

    def meet_then_replace(src, dst):  # both threads have written their copy before either renames it
        both.wait()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", meet_then_replace)
    got: list = []

    def extract() -> None:
        try:
            got.append(paths.package_file("weights", "x.bin").read_bytes())
        except Exception as e:  # noqa: BLE001 - the test reports it
            got.append(e)

    threads = [threading.Thread(target=extract) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [data, data], [g if isinstance(g, Exception) else len(g) for g in got]
    out = paths.package_file("weights", "x.bin")
    assert [p.name for p in out.parent.iterdir()] == ["x.bin"]


def test_plan_experiment_gives_a_grids_size_without_running_it(tmp_path):
    """The Python API had `run_experiment` only: no way to see a grid's size before starting it (as `reproduce
    --dry-run` now shows). `puface.plan_experiment(config)` checks the config and data, draws the first seed's
    users and returns its `GridPlan`, writing nothing."""
    from evaluation_helpers import EXPERIMENT_COLOURS_TOML, register_standins, write_colour_faces
    from puface.utils.tomlconfig import tomllib

    register_standins()
    root = write_colour_faces(tmp_path / "data")
    cfg = tomllib.loads(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    before = sorted(tmp_path.rglob("*"))
    plan = puface.plan_experiment(cfg, seeds=[0, 1])
    assert (plan.users, plan.attacks, plan.defenses, plan.cells, plan.runs, plan.cloaks) == (2, 2, 3, 2, 24, 14)
    assert str(plan).startswith("grid: 2 user(s) x 2 attack(s) x 3 defense(s) x 2 (victim, trainer) cell(s) = 24")
    assert sorted(tmp_path.rglob("*")) == before and "plan_experiment" in puface.__all__


@pytest.mark.parametrize("file_size", [32, 40])
def test_plan_experiment_counts_the_cloaks_the_cache_holds(tmp_path, monkeypatch, file_size):
    """`reproduce --dry-run` said "N image(s) to cloak (... those in the cloak cache are read, not made)" and counted
    every image, cached or not. The plan now looks each cloak up under the key the run would use (the cloak cache's own
    `missing`), reading no cloak and writing nothing, not even the cache's folder. Files of the grid's size (32) are
    keyed by the pixels decoded for the plan; others (40: resized on loading) are read again as the run reads them."""
    from evaluation_helpers import EXPERIMENT_COLOURS_TOML, STANDIN_EMBEDDER, register_standins, write_colour_faces
    from puface.utils.tomlconfig import tomllib

    register_standins()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PUFACE_HOME", str(home))
    root = write_colour_faces(tmp_path / "data", size=file_size)
    cfg = tomllib.loads(EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)))
    # a cloak the cache holds: a CloakAttack (the stand-in checkerboard is not one), quick
    cfg["attacks"][1] = {"name": "fawkes", "label": "fawkes", "mode": "custom", "th": 0.01, "steps": 1, "lr": 20,
                         "embedders": [STANDIN_EMBEDDER]}
    cfg["defenses"] = cfg["defenses"][:1]
    plan = puface.plan_experiment(cfg)
    assert (plan.cloaks, plan.cached) == (14, 0) and "0 in the cloak cache, read, not made; 14 to make" in str(plan)
    assert not (home / "cloaks").exists()
    puface.run_experiment(cfg, out=tmp_path / "run", progress=False)
    made = sorted((home / "cloaks").rglob("*.png"))
    assert len(made) == 14
    made[0].unlink()
    before = sorted((p, p.stat().st_mtime_ns) for p in home.rglob("*"))
    plan = puface.plan_experiment(cfg)
    assert (plan.cloaks, plan.cached) == (14, 13) and "13 in the cloak cache, read, not made; 1 to make" in str(plan)
    assert sorted((p, p.stat().st_mtime_ns) for p in home.rglob("*")) == before
