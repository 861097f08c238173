"""Purifier data: the seeded identity split and (natural, cloaked) pairs."""

from __future__ import annotations

import pytest
import torch

from puface.utils.errors import ConfigError, PufaceError
from puface.io.images import write_image
from puface.utils.images import tensor_to_image
from puface.training.data import build_pairs, purifier_identities
from purifier_support import synthetic_cloak, synthetic_cloak_fn


def test_identity_split_is_disjoint_seeded_and_holds_out_big_identities():
    counts = {f"id{i:03d}": (5 + i % 20) for i in range(200)}
    s = purifier_identities(counts, heldout_min_images=10, heldout_fraction=0.1, val_fraction=0.2, seed=0)
    assert set(s.train) | set(s.val) | set(s.heldout) == set(counts)
    assert not (set(s.train) & set(s.val)) and not (set(s.train) & set(s.heldout)) and not (set(s.val) & set(s.heldout))
    assert {n for n, c in counts.items() if c >= 10} <= set(s.heldout)
    small = [n for n, c in counts.items() if c < 10]
    assert len(s.heldout) == 200 - len(small) + round(0.1 * len(small))
    assert s == purifier_identities(counts, heldout_min_images=10, heldout_fraction=0.1, val_fraction=0.2, seed=0)
    assert s != purifier_identities(counts, heldout_min_images=10, heldout_fraction=0.1, val_fraction=0.2, seed=1)
    with pytest.raises(PufaceError, match="no identities left"):
        purifier_identities({"a": 20}, heldout_min_images=10)


def test_no_training_identities_says_to_raise_the_held_out_minimum():
    """Every identity of a small set with >= 10 images each is held out; the message said 'lower
    data.heldout_min_images', which holds out more. Now it says which way, with a value that works."""
    counts = {f"id{i}": 10 + i for i in range(12)}
    with pytest.raises(PufaceError) as e:
        purifier_identities(counts, heldout_min_images=10)
    assert "lower data.heldout_min_images" not in str(e.value)
    assert "12 held out with >= 10 images each" in str(e.value)
    assert "--set data.heldout_min_images=22: none" in str(e.value)
    s = purifier_identities(counts, heldout_min_images=22, val_fraction=0.1)  # the value it names works
    assert not s.heldout and len(s.val) == 1 and len(s.train) == 11
    with pytest.raises(ConfigError):
        purifier_identities(counts, val_fraction=1.0)


def test_build_pairs_with_the_cloak_function(johns_dir):
    ids = sorted(p.name for p in johns_dir.iterdir() if p.is_dir())[:2]
    pairs = build_pairs(johns_dir, ids, [{"name": "fawkes", "mode": "high", "images": 5}, {"name": "lowkey"}],
                        seed=0, cloak_fn=synthetic_cloak_fn(), log=lambda s: None)
    assert pairs.attack_names == ["fawkes-high", "lowkey"]
    assert pairs.summary()["per_attack"] == {"fawkes-high": 5, "lowkey": 22}
    assert pairs.natural.dtype == torch.uint8 and pairs.natural.shape == pairs.cloaked.shape == (27, 3, 150, 150)
    diff = (pairs.natural.int() - pairs.cloaked.int()).abs()
    assert 0 < diff.float().mean() and diff.max() <= 9
    again = build_pairs(johns_dir, ids, [{"name": "fawkes", "mode": "high", "images": 5}, {"name": "lowkey"}],
                        seed=0, cloak_fn=synthetic_cloak_fn(), log=lambda s: None)
    assert again.files == pairs.files  # seeded choice
    with pytest.raises(ConfigError, match="unique"):
        build_pairs(
            johns_dir, ids, [{"name": "lowkey"}, {"name": "lowkey"}], cloak_fn=synthetic_cloak_fn(), log=lambda s: None
        )


def test_build_pairs_from_a_cloaked_folder(johns_dir, tmp_path, johns_images):
    paths, _, images = johns_images
    ident = paths[0].parent.name
    sel = [i for i, p in enumerate(paths) if p.parent.name == ident][:4]
    cloaked = synthetic_cloak(images[sel], 0)
    for j, i in enumerate(sel):  # cloaked copies as PNG (another extension than the natural JPEGs)
        rel = paths[i].relative_to(johns_dir).with_suffix(".png")
        write_image(tmp_path / "cloaked" / rel, tensor_to_image(cloaked[j]))
    pairs = build_pairs(johns_dir, [ident], [{"name": "folder", "root": str(tmp_path / "cloaked")}], log=lambda s: None)
    assert len(pairs) == 4 and pairs.attack_names == ["folder-cloaked"]
    assert torch.equal(pairs.cloaked, (cloaked * 255).round().to(torch.uint8))
    with pytest.raises(PufaceError, match="no cloaked images"):
        (tmp_path / "empty").mkdir()
        build_pairs(johns_dir, [ident], [{"name": "folder", "root": str(tmp_path / "empty")}], log=lambda s: None)
    with pytest.raises(PufaceError, match='name = "folder", root = "DIR"'):  # the old spelling says how to write it
        build_pairs(johns_dir, [ident], [{"folder": str(tmp_path / "cloaked")}], log=lambda s: None)


def test_image_choice_is_seeded_and_prefix_stable(johns_dir):
    from puface.data.layout import scan_identities
    from puface.training.data import choose_images

    ims = scan_identities(johns_dir).images
    a = choose_images(ims, 10, 0, "t")
    assert len(a) == 10 and a == choose_images(ims, 10, 0, "t")
    assert set(a) <= set(choose_images(ims, 20, 0, "t"))  # more images keep the cached ones
    assert a != choose_images(ims, 10, 1, "t") and a != choose_images(ims, 10, 0, "u")
    assert choose_images(ims, "all", 0, "t") == sorted(ims)
    with pytest.raises(ConfigError):
        choose_images(ims, -3, 0, "t")


def _tree(tmp_path, johns_dir, size_of):
    """A copy of 2 johns identities (6 chips each) with chip i resized to `size_of(i)` px (None: as it is)."""
    from PIL import Image

    root = tmp_path / "faces"
    for ident in sorted(p for p in johns_dir.iterdir() if p.is_dir())[:2]:
        (root / ident.name).mkdir(parents=True)
        for i, f in enumerate(sorted(ident.iterdir())[:6]):
            im = Image.open(f)
            s = size_of(i)
            (im.resize((s, s)) if s else im).save(root / ident.name / f.name)
    return root


def test_training_chips_of_several_sizes_are_one_clear_error(johns_dir, tmp_path):
    """Chips of mixed sizes ended in a ValueError traceback from load_images; now a PufaceError naming a file of each
    size (cloaks from the cache and from a folder alike)."""
    root = _tree(tmp_path, johns_dir, lambda i: 120 if i == 3 else None)
    ids = sorted(p.name for p in root.iterdir())
    with pytest.raises(PufaceError, match=r"120x120 px, unlike .*\(150x150 px\)"):
        build_pairs(root, ids, [{"name": "fawkes", "mode": "high"}], cloak_fn=synthetic_cloak_fn(), log=lambda s: None)
    from puface.data.loading import load_images

    files = sorted(root.rglob("*.jpg"))
    with pytest.raises(PufaceError, match=str(files[3])):
        load_images(files)
    assert load_images(files, size=150)[0].shape == (12, 3, 150, 150)  # resized on request, as before


def test_chips_too_small_for_the_attack_are_one_clear_error(johns_dir, tmp_path):
    """8x8 px chips reached Fawkes and ended in its ValueError traceback; the cloak cache now refuses them in one line
    naming a file, before any attack runs."""
    from puface.attacks import create_attack
    from puface.attacks.cache import CloakCache

    root = _tree(tmp_path, johns_dir, lambda i: 8)
    attack = create_attack(
        {"name": "fawkes", "mode": "custom", "steps": 1, "embedders": ["dlib-resnet29"]}, device="cpu"
    )
    files = sorted(root.rglob("*.jpg"))
    with pytest.raises(
        PufaceError, match=rf"{files[0]}: 8x8 px \(12 images of this size\); fawkes-custom needs at least 11x11 px"
    ):
        CloakCache(root=tmp_path / "cache").cloak(attack, files, progress=False)
    assert not list((tmp_path / "cache").rglob("*.png"))
