"""Without the `shards` extra, shard inputs are a one-line error naming `pip install 'puface[shards]'`, before any
output is written (no traceback). Runs whether or not the extra is installed: its modules are hidden."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from puface.cli import main


def _tar(path: Path) -> Path:
    data = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (150, 150), (120, 100, 90)).save(data, "PNG")
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a-0001.png")
        info.size = len(data.getvalue())
        tf.addfile(info, io.BytesIO(data.getvalue()))
    return path


@pytest.mark.parametrize("spec", ["s-000.tar", "*.tar", "s-{000..000}.tar"])
def test_shards_without_the_extra_are_one_line(tmp_path, monkeypatch, capsys, spec):
    for mod in ("webdataset", "braceexpand", "pyarrow"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)  # `import mod` raises ImportError
    src = tmp_path / "in"
    src.mkdir()
    _tar(src / "s-000.tar")
    out = tmp_path / "out"
    code = main(["purify", "--no-progress", "--device", "cpu", str(src / spec), str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "puface[shards]" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
