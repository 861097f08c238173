"""Identity folders, FaceScrub layout, caps and seeded splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from puface.data.layout import scan_identities
from puface.io.files import list_image_files
from puface.data.split import split_counts, split_dataset, split_identities
from puface.utils.errors import PufaceError
from puface.io.images import write_image


def _img(path: Path) -> Path:
    write_image(path, np.zeros((4, 4, 3), np.uint8))
    return path


def make_tree(root: Path, counts: dict[str, int], ext: str = ".jpg") -> Path:
    for name, n in counts.items():
        for i in range(n):
            _img(root / name / f"{name}_{i:04d}{ext}")
    return root


def test_identity_layout_and_extensions_any_case(tmp_path):
    root = tmp_path / "faces"
    _img(root / "alice" / "a.JPG")
    _img(root / "alice" / "b.jpeg")
    _img(root / "alice" / "c.PnG")
    _img(root / "bob" / "d.webp")
    _img(root / "bob" / "e.BMP")
    (root / "bob" / "notes.txt").write_text("not an image")
    _img(root / "bob" / ".hidden.jpg")
    ds = scan_identities(root)
    assert ds.layout == "identity"
    assert ds.identities == ["alice", "bob"]
    assert len(ds) == 5
    assert sorted(p.path.name for p in ds.images) == ["a.JPG", "b.jpeg", "c.PnG", "d.webp", "e.BMP"]


def test_facescrub_layout(tmp_path):
    root = tmp_path / "download"
    _img(root / "Adam_Sandler" / "face" / "1.jpg")
    _img(root / "Adam_Sandler" / "face" / "2.jpg")
    _img(root / "Alyssa_Milano" / "face" / "3.jpg")
    ds = scan_identities(root)
    assert ds.layout == "facescrub"
    assert ds.identities == ["Adam_Sandler", "Alyssa_Milano"]
    assert len(ds) == 3


def test_min_images_cap_and_seed(tmp_path):
    root = make_tree(tmp_path / "r", {"a": 10, "b": 3, "c": 1})
    assert scan_identities(root, min_images=2).identities == ["a", "b"]
    cap1 = scan_identities(root, max_per_identity=4, seed=1)
    cap1b = scan_identities(root, max_per_identity=4, seed=1)
    cap2 = scan_identities(root, max_per_identity=4, seed=2)
    a1 = [im.path.name for im in cap1.images if im.identity == "a"]
    assert len(a1) == 4
    assert a1 == [im.path.name for im in cap1b.images if im.identity == "a"]
    assert a1 != [im.path.name for im in cap2.images if im.identity == "a"]


def test_clear_errors(tmp_path):
    with pytest.raises(PufaceError, match="no such folder"):
        scan_identities(tmp_path / "missing")
    flat = tmp_path / "flat"
    _img(flat / "x.jpg")
    with pytest.raises(PufaceError, match="sub-folder"):
        scan_identities(flat)
    root = make_tree(tmp_path / "r", {"a": 2})
    with pytest.raises(PufaceError, match="zed"):
        scan_identities(root, identities=["a", "zed"])


def test_a_folder_of_data_sets_names_the_one_below(tmp_path):
    """ROOT/<set>/<identity>/<image> (a --data one level too high) says where the identity folders are."""
    make_tree(tmp_path / "sets" / "mine", {"a": 2, "b": 2})
    with pytest.raises(PufaceError, match=r"one level down, in .*sets/mine: give that folder"):
        scan_identities(tmp_path / "sets")


def test_filters_that_leave_nothing_say_so(tmp_path, capsys):
    root = make_tree(tmp_path / "r", {"a": 4, "b": 3, "c": 1})
    with pytest.raises(PufaceError, match=r"3 identity folder\(s\) with images found \(the largest has 4\), but none "
                                          r"passes the filter \(min_images=100\)"):
        scan_identities(root, min_images=100)
    with pytest.raises(PufaceError, match=r"none passes the filter \(min_images=1, max_per_identity=0\)"):
        scan_identities(root, max_per_identity=0)
    from puface.cli import main

    assert (
        main(["evaluate", "--data", str(root), "--min-images", "100", "--no-progress", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "3 identity folder(s) with images found" in capsys.readouterr().err


def test_exclude_output_folder_inside_input(tmp_path):
    root = make_tree(tmp_path / "r", {"a": 2, "b": 2})
    out = root / "b"
    assert [p.parent.name for p in list_image_files(root, exclude=[out])] == ["a", "a"]
    assert scan_identities(root, exclude=[out]).identities == ["a"]


def test_a_folder_loop_is_listed_once_and_a_linked_folder_is_followed(tmp_path, caplog):
    root = make_tree(tmp_path / "r", {"a": 2, "b": 1})
    other = make_tree(tmp_path / "elsewhere", {"c": 1})
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)  # a/loop -> a
    (root / "up").symlink_to(root, target_is_directory=True)  # r/up -> r
    (root / "c").symlink_to(other / "c", target_is_directory=True)  # a linked identity folder: followed
    with caplog.at_level("WARNING", logger="puface.io.files"):
        files = list_image_files(root)
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a/a_0000.jpg",
        "a/a_0001.jpg",
        "b/b_0000.jpg",
        "c/c_0000.jpg",
    ]
    assert "a folder loop" in caplog.text and "loop" in caplog.text and "up" in caplog.text
    assert scan_identities(root).identities == ["a", "b", "c"]


def test_split_counts_respect_minimums():
    assert split_counts(10, 0.7, 1, 1) == (7, 3)
    assert split_counts(2, 0.7, 1, 1) == (1, 1)
    assert split_counts(5, 0.9, 1, 2) == (3, 2)
    with pytest.raises(PufaceError):
        split_counts(2, 0.7, 2, 1)
    with pytest.raises(PufaceError):
        split_counts(10, 1.0, 1, 1)


def test_split_is_deterministic_and_independent_of_other_identities(tmp_path):
    root = make_tree(tmp_path / "r", {"a": 10, "b": 7, "c": 1})
    ds = scan_identities(root)
    s1 = split_dataset(ds, seed=3)
    s2 = split_dataset(ds, seed=3)
    assert s1 == s2
    assert {im.identity for im in s1.train} == {"a", "b"}  # 'c' has too few images and is dropped
    a_train = sorted(im.path for im in s1.train if im.identity == "a")
    assert len(a_train) == 7 and len([im for im in s1.test if im.identity == "a"]) == 3
    # dropping identity b does not change a's split
    s3 = split_dataset(ds.subset(["a"]), seed=3)
    assert sorted(im.path for im in s3.train) == a_train
    # a different seed gives a different split
    s4 = split_dataset(ds, seed=4)
    assert sorted(im.path for im in s4.train if im.identity == "a") != a_train
    # train and test never overlap
    assert not set(s1.train) & set(s1.test)
    with pytest.raises(PufaceError, match="'c'"):
        split_dataset(ds, drop_small=False)


def test_each_identity_is_shuffled_with_its_own_seed(tmp_path):
    """Identities of one size are not split alike: each is shuffled from (seed, its name) (module docstring), so
    the photos a seed keeps for training are not the same positions of every identity's sorted list."""
    names = [f"id{i}" for i in range(6)]
    split = split_dataset(scan_identities(make_tree(tmp_path / "r", {n: 10 for n in names})), seed=0)
    positions = {
        n: frozenset(int(Path(im.path).stem.rsplit("_", 1)[1]) for im in split.train if im.identity == n) for n in names
    }
    assert all(len(p) == 7 for p in positions.values())
    assert len(set(positions.values())) > 1


def test_split_identities_gives_the_first_group_the_rounded_share():
    """round(n * fraction), not its floor: 10 names at 0.28 give 3 (2.8), not 2."""
    a, b = split_identities([f"id{i}" for i in range(10)], 0.28, seed=0)
    assert (len(a), len(b)) == (3, 7)
    a, b = split_identities([f"id{i}" for i in range(10)], 0.22, seed=0)
    assert (len(a), len(b)) == (2, 8)


def test_split_identities_disjoint_and_seeded():
    names = [f"id{i}" for i in range(20)]
    a, b = split_identities(names, 0.25, seed=0)
    assert len(a) == 5 and len(b) == 15 and not set(a) & set(b)
    assert split_identities(names, 0.25, seed=0) == (a, b)
    assert split_identities(names, 0.25, seed=1) != (a, b)


def test_johns_default_data(johns_dir):
    ds = scan_identities(johns_dir)
    assert len(ds.identities) == 5 and len(ds) == 55
