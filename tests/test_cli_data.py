"""`puface data ...` and the top-level CLI behaviour."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from puface.cli import main
from puface.io.images import write_image


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "data" in out and "models" in out
    code, out, _ = run(["data", "--help"], capsys)
    assert code == 0 and "info" in out and "fetch" in out and "split" in out
    code, out, _ = run(["data", "info", "--help"], capsys)
    assert "--decode" in out and "--min-images" in out


def test_models_alone_lists_them_and_the_help_names_options_that_exist(capsys):
    import json
    import re

    from puface.models.custom import _SIDECAR_KEYS

    code, listed, _ = run(["models"], capsys)
    assert code == 0 and (code, listed) == run(["models", "list"], capsys)[:2]
    assert "dlib-resnet29" in listed
    code, helptext, _ = run(["models", "--help"], capsys)
    assert code == 0
    for text in (listed, helptext):
        assert "--embedder" not in text and "--input-size" not in text
        assert "--surrogate" in text and "--victim" in text and "model.json" in text
    assert "--surrogate" in run(["cloak", "--help"], capsys)[1] and "--victim" in run(["evaluate", "--help"], capsys)[1]
    example = json.loads(re.search(r"e\.g\. (\{.*\})", helptext).group(1))
    named = re.findall(r"^ {4}([a-z_]+(?:, [a-z_]+)*) {2,}", helptext, re.M)
    keys = {k for line in named for k in line.split(", ")}
    assert {"scale", "mean", "std", "input_size", "layout", "order"} <= keys <= _SIDECAR_KEYS
    assert set(example) <= _SIDECAR_KEYS


def test_info_counts_and_unreadable(tmp_path, capsys):
    root = tmp_path / "faces"
    for name, n in (("ann", 3), ("bo", 2)):
        for i in range(n):
            write_image(root / name / f"{i}.png", np.zeros((6, 8, 3), np.uint8))
    (root / "bo" / "broken.jpg").write_bytes(b"nope")
    code, out, _ = run(["data", "info", str(root)], capsys)
    assert code == 1
    assert "identities:  2" in out and "images:      6" in out
    assert "8x6 (5)" in out
    assert "unreadable:  1" in out and "broken.jpg" in out


def test_info_on_johns(johns_dir, capsys):
    code, out, _ = run(["data", "info", str(johns_dir)], capsys)
    assert code == 0 and "identities:  5" in out and "images:      55" in out and "150x150 (55)" in out


def test_missing_folder_is_one_clear_line(tmp_path, capsys):
    code, out, err = run(["data", "info", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert "no such folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_split_writes_csv(johns_dir, tmp_path, capsys):
    dest = tmp_path / "split.csv"
    code, out, _ = run(["data", "split", str(johns_dir), "--seed", "1", "-o", str(dest)], capsys)
    assert code == 0 and "5 identities: 40 training and 15 test images" in out
    lines = dest.read_text().splitlines()
    assert lines[0] == "identity,path,part" and len(lines) == 56


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get")
def test_fetch_johns_from_scratch(tmp_path):
    """With an empty cache, `puface data fetch johns` downloads and unpacks libdlib19.1."""
    env = {"PUFACE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    r = subprocess.run(
        [sys.executable, "-m", "puface", "data", "fetch", "johns"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "johns: 55 images" in r.stdout or "johns: already here, 55 images" in r.stdout
    from pathlib import Path

    d = Path(r.stdout.split(" in ", 1)[1].strip())
    if str(d).startswith("/usr/share/doc"):
        pytest.skip("libdlib19.1 is installed system-wide; nothing was fetched")
    assert d.is_relative_to(tmp_path / "home")
    assert len(list(d.glob("*/*.jpg"))) == 55
    assert (d / "LICENSE_FOR_EXAMPLE_PROGRAMS.txt").is_file()


def test_data_list_and_a_data_set_puface_cannot_fetch(tmp_path, monkeypatch, capsys):
    (tmp_path / "lfw-chips150" / "A").mkdir(parents=True)
    monkeypatch.setenv("PUFACE_DATA", str(tmp_path))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"$PUFACE_DATA: {tmp_path}" in out and str(tmp_path / "lfw-chips150") in out and "johns" in out
    assert main(["data", "fetch", "lfw-chips150"]) == 0  # there already: where it is, nothing to fetch
    assert f"lfw-chips150: already here, 0 images in {tmp_path / 'lfw-chips150'}" in capsys.readouterr().out
    (tmp_path / "lfw-chips150" / "A").rmdir()
    (tmp_path / "lfw-chips150").rmdir()
    assert main(["data", "fetch", "lfw-chips150"]) == 2
    err = capsys.readouterr().err
    assert "cannot fetch 'lfw-chips150' itself" in err and "puface align" in err
    assert main(["data", "fetch", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_a_fetchable_data_set_in_puface_data_is_listed_and_not_fetched_again(johns_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "johns").symlink_to(johns_dir, target_is_directory=True)
    monkeypatch.setenv("PUFACE_DATA", str(tmp_path / "sets"))
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    where = listed[listed.index(next(x for x in listed if x.startswith("johns "))) + 1]
    assert where.strip() == str(tmp_path / "sets" / "johns")
    assert main(["data", "fetch", "johns"]) == 0
    assert capsys.readouterr().out.strip() == f"johns: already here, 55 images in {tmp_path / 'sets' / 'johns'}"
    assert not (tmp_path / "home" / "data" / "johns").exists()


def test_fetch_lfw_without_dlib_says_so_before_any_download(tmp_path, monkeypatch, capsys):
    """The chips need dlib (the align extra): without it, `data fetch lfw` stops first, not after 111 MB."""
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError
    tarball = tmp_path / "lfw-deepfunneled.tgz"
    tarball.write_bytes(b"not checked")
    assert main(["data", "fetch", "lfw", "--tarball", str(tarball), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "puface[align]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_split_of_an_identity_folder_whose_name_is_not_utf8(johns_dir, tmp_path, capsys):
    import os

    root = tmp_path / "root"
    chips = sorted(johns_dir.glob("*/*.jpg"))[:8]
    try:  # e.g. a Latin-1 name from an old zip; macOS refuses such names
        os.makedirs(os.path.join(os.fsencode(root), b"Ren\xe9"))
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    (root / "Anna").mkdir()
    for i, f in enumerate(chips):
        shutil.copy(f, (root / (os.fsdecode(b"Ren\xe9") if i % 2 else "Anna")) / f"{i}.jpg")
    dest = tmp_path / "split.csv"
    code, out, err = run(["data", "split", str(root), "-o", str(dest)], capsys)
    assert code == 0 and "2 identities: 6 training and 2 test images" in out, err
    rows = dest.read_bytes().splitlines()
    assert len(rows) == 9 and sum(b"/Ren\xe9/" in r for r in rows) == 4
    # a UTF-8 name's seed is what it always was
    from puface.utils.seeding import stable_seed

    assert stable_seed("split", 0, "Anna") == 10495944068040909451
