"""CloakCache: computes once, reuses across instances and processes, keys on config and content."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from torch import nn

from puface.attacks.cache import CloakCache
from puface.attacks.fawkes import Fawkes
from puface.io.images import read_image
from puface.utils.images import image_to_tensor
from puface.models.base import FaceEmbedder, InputNormalization


# many small tensor ops: one torch thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_embedder(seed: int = 0) -> FaceEmbedder:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 16)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5 if p.ndim > 1 else torch.zeros_like(p)
            )
    return FaceEmbedder(net, name="tiny", input_size=(64, 64), embedding_dim=16, normalization=InputNormalization())


class Counting(Fawkes):
    """Fawkes that counts the images it actually optimises."""

    calls = 0

    def _attack_batch(self, x, generators, **kw):
        type(self).calls += len(x)
        return super()._attack_batch(x, generators, **kw)


@pytest.fixture()
def files(johns_dir, tmp_path):
    """Six johns chips copied to a temp folder, plus one unreadable file."""
    src = sorted(johns_dir.glob("*/*.jpg"))[::9][:6]
    out = []
    for i, p in enumerate(src):
        q = tmp_path / "in" / f"{i}_{p.name}"
        q.parent.mkdir(exist_ok=True)
        shutil.copy(p, q)
        out.append(q)
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    return out, bad


def attack(seed=0, **kw):
    Counting.calls = 0
    return Counting("custom", [tiny_embedder()], steps=4, seed=seed, device="cpu", batch_size=4, **kw)


def test_computes_once_then_reuses(files, tmp_path):
    paths, bad = files
    cache = CloakCache(tmp_path / "cache")
    atk = attack()
    x, kept, errors = cache.cloak(atk, paths + [bad], progress=False)
    assert kept == list(range(6)) and len(errors) == 1 and "broken.jpg" in str(errors[0])
    assert Counting.calls == 6 and cache.cached_count(atk) == 6
    assert (cache.attack_dir(atk) / "config.json").is_file()
    # the cached PNG holds exactly what was returned (8-bit grid, lossless)
    clean = torch.stack([image_to_tensor(read_image(p)) for p in paths])
    direct = atk.run(clean, quantize_output=True).images
    assert torch.equal(x, direct)
    # a new cache object (another experiment) reuses every file
    Counting.calls = 0
    y, kept2, _ = CloakCache(tmp_path / "cache").cloak(attack(), list(reversed(paths)), progress=False)
    assert Counting.calls == 0 and kept2 == list(range(6))
    assert torch.equal(y, x.flip(0))


def test_key_depends_on_config_and_content(files, tmp_path):
    paths, _ = files
    cache = CloakCache(tmp_path / "cache")
    cache.cloak(attack(seed=0), paths[:2], progress=False)
    a1 = attack(seed=1)
    cache.cloak(a1, paths[:2], progress=False)
    assert Counting.calls == 2  # another seed: recomputed
    a2 = attack(seed=0, th=0.01)
    cache.cloak(a2, paths[:2], progress=False)
    assert Counting.calls == 2 and cache.attack_dir(a2) != cache.attack_dir(attack(seed=0))
    # same bytes under another name: reused; edited pixels: recomputed
    twin = tmp_path / "twin.jpg"
    shutil.copy(paths[0], twin)
    a3 = attack(seed=0)
    cache.cloak(a3, [twin], progress=False)
    assert Counting.calls == 0
    img = read_image(paths[1]).copy()
    img[0, 0] = 255 - img[0, 0]
    from puface.io.images import write_image

    write_image(tmp_path / "edited.png", img)
    cache.cloak(a3, [tmp_path / "edited.png"], progress=False)
    assert Counting.calls == 1


def test_corrupt_cache_file_is_recomputed(files, tmp_path):
    paths, _ = files
    cache = CloakCache(tmp_path / "cache")
    atk = attack()
    x, _, _ = cache.cloak(atk, paths[:3], progress=False)
    victim = sorted(cache.attack_dir(atk).glob("*/*.png"))[0]
    victim.write_bytes(b"garbage")
    atk2 = attack()
    y, _, _ = cache.cloak(atk2, paths[:3], progress=False)
    assert Counting.calls == 1
    # recomputed alone rather than in a batch of 3: equal up to float-rounding effects
    assert (x - y).abs().max() <= 8 / 255 and (x - y).abs().mean() < 0.5 / 255
    assert read_image(victim).shape == (150, 150, 3)


def test_concurrent_writers_are_safe(files, tmp_path):
    paths, _ = files
    root = tmp_path / "cache"
    results, failures = [], []

    def work():
        try:
            results.append(CloakCache(root).cloak(attack(), paths, progress=False)[0])
        except Exception as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert all(torch.equal(r, results[0]) for r in results)
    files_now = list((root).rglob("*"))
    assert not [f for f in files_now if f.name.endswith(".tmp")]
    assert CloakCache(root).cached_count(attack()) == 6


def test_targeted_keys_include_the_target(files, tmp_path):
    paths, _ = files
    cache = CloakCache(tmp_path / "cache")
    atk = attack(targeted=True)
    t1 = [torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(0)), dim=0)]
    t2 = [-t1[0]]
    cache.cloak(atk, paths[:2], targets=t1, progress=False)
    cache.cloak(atk, paths[:2], targets=t1, progress=False)
    assert Counting.calls == 2
    cache.cloak(atk, paths[:2], targets=t2, progress=False)
    assert Counting.calls == 4


def test_cached_only_refuses_to_make_cloaks_and_records_files(files, tmp_path):
    from puface.utils.errors import CloakNotCachedError

    paths, _ = files
    atk = attack()
    used: set = set()
    made, _, _ = CloakCache(tmp_path / "cache", used=used).cloak(atk, paths[:3], progress=False)
    assert len(used) == 3 and all(p.is_file() for p in used)  # written files are recorded
    # the cached three are read without running the attack, and recorded
    Counting.calls = 0
    read_back: set = set()
    again, _, _ = CloakCache(tmp_path / "cache", cached_only=True, used=read_back).cloak(
        attack(), paths[:3], progress=False
    )
    assert Counting.calls == 0 and torch.equal(again, made) and read_back == used
    # one more file: stops before any cloaking, naming the file without a cloak
    with pytest.raises(CloakNotCachedError) as e:
        CloakCache(tmp_path / "cache", cached_only=True).cloak(attack(), paths[:4], progress=False)
    assert Counting.calls == 0 and e.value.missing == 1 and e.value.path == paths[3]
    assert str(paths[3]) in str(e.value) and not e.value.cache_file.exists()
    assert CloakCache(tmp_path / "cache").cached_count(atk) == 3


def test_progress_bar_names_the_experiment_label(files, tmp_path, capsys):
    """Two settings of one attack (e.g. plain and adaptive Fawkes high) show their own labels while cloaking."""
    paths, _ = files
    cache = CloakCache(tmp_path / "cache")
    cache.cloak(attack(), paths[:2], progress=True, label="fawkes-high-adaptive")
    err = capsys.readouterr().err
    assert "cloaking (fawkes-high-adaptive)" in err
    plain = attack(seed=1)
    cache.cloak(plain, paths[:2], progress=True)
    assert f"cloaking ({plain.name})" in capsys.readouterr().err and plain.name != "fawkes-high-adaptive"


def test_cache_files_follow_the_umask(files, tmp_path):
    """Cloak files and config.json are 0o666 less the umask, as other outputs (they were chmodded to 0o644 whatever
    the umask: under umask 077 every cloak was readable by all)."""
    import os
    import stat

    paths, _ = files
    old = os.umask(0o077)
    try:
        cache = CloakCache(tmp_path / "cache")
        atk = attack()
        cache.cloak(atk, paths[:2], progress=False)
    finally:
        os.umask(old)
    written = [p for p in cache.attack_dir(atk).rglob("*") if p.is_file()]
    assert len(written) == 3 and any(p.name == "config.json" for p in written)
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o600}
