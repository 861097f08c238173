"""`unmask`: a pattern one person's photos share (a universal mask) is found and subtracted; natural groups,
photos cloaked one by one and small groups pass unchanged; the protocol calls it per person and caches by group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puface.defenses import SharedPatternRemoval, create_defense, shared_pattern_score
from puface.utils.errors import ConfigError


def _mask(shape, eps=8 / 255, seed=0) -> torch.Tensor:
    """A universal L-inf mask as OPOM's signed steps leave it: each pixel at +-eps."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (1, *shape), generator=g).float() * 2 - 1) * eps


@pytest.fixture(scope="module")
def person(johns_images):
    """One johns identity's 11 natural chips (11, 3, 150, 150)."""
    _, labels, images = johns_images
    rows = [i for i, lab in enumerate(labels) if lab == labels[0]]
    return images[rows].clone()


def test_score_is_about_one_for_unrelated_photos_and_grows_with_a_shared_mask(person):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(12, 3, 40, 40, generator=g)
    assert 0.9 < shared_pattern_score(noise) < 1.1  # independent residuals: t statistics of unit rms
    assert shared_pattern_score(person) < 1.5  # real photos of one person
    masked = (person + _mask(person.shape[1:])).clamp(0, 1)
    assert shared_pattern_score(masked) > 2.0
    with pytest.raises(ValueError, match="at least 4"):
        shared_pattern_score(person[:3])


def test_removes_a_universal_mask_and_leaves_natural_groups_alone(person):
    d = create_defense("unmask")
    assert (
        d.groupwise
        and isinstance(d, SharedPatternRemoval)
        and d.params == {"tau": 2.0, "k": 9, "min_photos": 4, "test_photos": 8}
    )
    assert torch.equal(d(person), person) and d.last_score is not None and d.last_score <= 2.0
    # exact duplicates count once: 4 photos twice are not a shared pattern
    twice = torch.cat([person[:4], person[:4]])
    assert torch.equal(d(twice), twice) and d.last_score < 2.0
    mask = _mask(person.shape[1:])
    masked = (person + mask).clamp(0, 1)
    out = d(masked)
    assert d.last_score > 2.0
    removed = (masked - out).flatten()
    # what it takes out is mostly the mask (the rest: the person's own mean face structure at the 9 px scale)
    assert torch.nn.functional.cosine_similarity(removed, mask.expand_as(masked).flatten(), dim=0) > 0.6
    fine = create_defense("unmask:k=3")(masked)  # the 3 px estimate takes out less structure: pixels get closer
    assert (fine - person).pow(2).mean().sqrt() < 0.6 * (masked - person).pow(2).mean().sqrt()
    # photos cloaked one by one (a different mask each) share nothing: unchanged
    one_by_one = torch.stack([(p + _mask(p.shape, seed=i)[0]).clamp(0, 1) for i, p in enumerate(person)])
    assert torch.equal(d(one_by_one), one_by_one)
    # the same photos as uint8, or summed in small chunks: the same pattern
    from puface.utils.images import to_uint8

    m = d.shared_pattern(masked)
    assert torch.allclose(d.shared_pattern(to_uint8(masked), chunk=3), m, atol=1e-6)
    # the order of the photos does not matter
    perm = torch.randperm(len(masked), generator=torch.Generator().manual_seed(3))
    assert torch.equal(d(masked[perm]), out[perm])
    # too few photos to tell: unchanged
    assert torch.equal(d(masked[:3]), masked[:3]) and d.last_score is None


def test_composes_before_the_purifier_and_checks_its_settings():
    c = create_defense("unmask:k=17+jpeg:quality=90")
    assert (
        c.groupwise
        and c.name == "unmask-k17+jpeg-q90"
        and create_defense("unmask+jpeg").name == "unmask+jpeg-q75"
        and not create_defense("jpeg:quality=90").groupwise
    )
    assert create_defense("unmask:k=17").cache_key != create_defense("unmask").cache_key
    for spec, msg in [("unmask:k=4", "odd"), ("unmask:tau=0", "tau"), ("unmask:min_photos=1", "min_photos"),
                      ("unmask:test_photos=3", "test_photos")]:
        with pytest.raises(ConfigError, match=msg):
            create_defense(spec)


def test_protocol_calls_it_per_person_and_caches_by_group(monkeypatch, person):
    from puface.evaluation.cache import ContentCache
    from puface.evaluation.protocol import Protocol
    from puface.utils.fingerprint import content_hashes
    from puface.utils.images import to_uint8

    seen: list[int] = []
    real = SharedPatternRemoval._apply

    def spy(self, images):
        seen.append(len(images))
        return real(self, images)

    monkeypatch.setattr(SharedPatternRemoval, "_apply", spy)
    d = create_defense("unmask+puface")
    masked = to_uint8((person + _mask(person.shape[1:])).clamp(0, 1))
    natural = to_uint8(person)
    images = torch.cat([masked, natural])
    hashes = content_hashes(images)
    groups = ["masked"] * len(masked) + ["natural"] * len(natural)
    proto = Protocol.__new__(Protocol)  # only the defense machinery: no data, users or models needed
    proto.cache, proto.batch_size, proto.progress = ContentCache(":memory:"), 4, False
    proto.timings = {"defend_s": 0.0}
    out, _ = proto.apply_defense(d, images, hashes, groups=groups)
    assert seen == [11, 11]  # one call per person, whole groups despite batch_size 4
    direct = to_uint8(d(torch.cat([masked, natural]).float()[: len(masked)] / 255))
    assert torch.equal(out[: len(masked)], direct)
    assert not torch.equal(out[: len(masked)], to_uint8(create_defense("puface")(masked.float() / 255)))
    # the same images again: from the cache; regrouped: the cache does not answer for another group
    seen.clear()
    again, _ = proto.apply_defense(d, images, hashes, groups=groups)
    assert seen == [] and torch.equal(again, out)
    mixed = ["a" if i % 2 else "b" for i in range(len(images))]  # each group half masked, half natural
    proto.apply_defense(d, images, hashes, groups=mixed)
    assert sorted(seen) == [11, 11]
    with pytest.raises(Exception, match="group-wise"):
        proto.apply_defense(d, images, hashes)


def test_refused_at_query_time(tmp_path):
    """At query time the defender does not know whose probe it is: a group-wise defense is refused."""
    from evaluation_helpers import CheckerCloak, colour_embedder, write_colour_faces

    from puface.evaluation.data import EvaluationData
    from puface.evaluation.protocol import AttackSpec, QueryProtocol, TrainerSpec
    from puface.utils.errors import PufaceError

    data = EvaluationData.prepare(write_colour_faces(tmp_path), seed=0, image_size=32)
    with pytest.raises(PufaceError, match="group-wise"):
        QueryProtocol(data, ["Alice"], [AttackSpec("checker", CheckerCloak(), surrogates=("colour",))],
                      {"c": colour_embedder()}, [TrainerSpec("nn", "nn")], {"u": create_defense("unmask+puface")},
                      cloak_cache=None, progress=False)


def test_known_answer_in_the_protocol(tmp_path):
    """The checker "cloak" of the protocol tests is one pattern on all of a user's photos: `unmask` takes it out
    (ASR 0, as blur does), and leaves the flat natural photos (normal accuracy 1)."""
    from evaluation_helpers import CheckerCloak, colour_embedder, write_colour_faces

    from puface.evaluation.data import EvaluationData
    from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec

    data = EvaluationData.prepare(write_colour_faces(tmp_path), seed=0, image_size=32)
    proto = Protocol(
        data,
        ["Alice", "Carol"],
        [AttackSpec("checker", CheckerCloak(), surrogates=("colour",))],
        {"colour": colour_embedder()},
        [TrainerSpec("nn", "nn")],
        {"none": create_defense("none"), "unmask": create_defense("unmask")},
        cloak_cache=None,
        progress=False,
    )
    rows = proto.run()
    assert {(r["defense"], r["asr"], r["normal_acc"]) for r in rows} == {("none", 1.0, 1.0), ("unmask", 0.0, 1.0)}
    assert np.isfinite([r["asr"] for r in rows]).all()


def test_purify_unmask_cli_per_identity_folder(johns_dir, tmp_path, capsys):
    """`puface purify --unmask`: the folder whose chips carry one mask is found and cleaned (its output closer to
    the purified natural chips than plain purification gets), the other folders' outputs are exactly plain
    purification's, every folder is listed in OUT/unmask.csv; refused where it has no meaning."""
    import csv

    from puface.cli import main
    from puface.io.images import read_image, write_image

    src = tmp_path / "in"
    folders = sorted(p for p in johns_dir.iterdir() if p.is_dir())
    masked_name = folders[1].name
    mask = _mask((150, 150, 3))[0].numpy()  # (150, 150, 3) +-8/255
    for d in folders:
        for f in sorted(d.iterdir()):
            a = read_image(f)
            if d.name == masked_name:
                a = np.clip(np.rint(a + 255.0 * mask), 0, 255).astype(np.uint8)
            write_image(src / d.name / (f.stem + ".png"), a)
    nat = tmp_path / "nat"
    for f in sorted((johns_dir / masked_name).iterdir()):
        write_image(nat / masked_name / (f.stem + ".png"), read_image(f))
    assert main(["purify", str(src), str(tmp_path / "plain"), "--no-progress"]) == 0
    assert main(["purify", str(nat), str(tmp_path / "plain-nat"), "--no-progress"]) == 0
    assert main(["purify", "--unmask", str(src), str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"unmask: {masked_name}:" in err and "1 of 5 folders share a pattern" in err
    rows = {r["folder"]: r for r in csv.DictReader((tmp_path / "out" / "unmask.csv").open())}
    assert set(rows) == {d.name for d in folders}
    assert [r["folder"] for r in rows.values() if r["subtracted"] == "1"] == [masked_name]
    for d in folders:
        for f in sorted((src / d.name).iterdir()):
            got = read_image(tmp_path / "out" / d.name / f.name).astype(np.float32)
            plain = read_image(tmp_path / "plain" / d.name / f.name).astype(np.float32)
            if d.name != masked_name:
                assert np.array_equal(got, plain), f
            else:
                ref = read_image(tmp_path / "plain-nat" / d.name / f.name).astype(np.float32)
                assert np.abs(got - ref).mean() < 0.8 * np.abs(plain - ref).mean(), f
    assert main(["purify", "--unmask", "--align", str(src), str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "--unmask works on aligned chips" in capsys.readouterr().err
    # a broken file is reported by the purification pass (exit code 1) and does not stop the others; a photo at
    # the root is a group of its own ("."), too small to tell
    (src / masked_name / "broken.jpg").write_bytes(b"not a jpeg")
    write_image(
        src / "loose.png", read_image(johns_dir / folders[0].name / sorted(p.name for p in folders[0].iterdir())[0])
    )
    assert main(["purify", "--unmask", str(src), str(tmp_path / "o3"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and f"unmask: {masked_name}:" in err
    rows = {r["folder"]: r for r in csv.DictReader((tmp_path / "o3" / "unmask.csv").open())}
    assert rows["."]["subtracted"] == "0" and rows["."]["score"] == "" and rows[masked_name]["subtracted"] == "1"
    assert (tmp_path / "o3" / "loose.png").exists()


def test_a_prepare_step_is_kept_on_a_photo_with_an_alpha_channel(johns_dir, tmp_path):
    """`purify --unmask` (purify_folder's prepare step) on an RGBA chip: the step's change is written as on the same
    chip without alpha. The colour under the alpha channel is written back plus the change purification made from
    the prepared image, so the step's own change (the subtracted pattern) was dropped: an opaque RGBA chip came out
    as if never prepared."""
    from PIL import Image

    from puface.purifier.folder import purify_folder

    a = np.asarray(Image.open(sorted(johns_dir.glob("*/*.jpg"))[0]).convert("RGB"))
    alpha = np.full(a.shape[:2], 255, np.uint8)
    alpha[:20] = 128  # a half-transparent strip
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgba").mkdir()
    Image.fromarray(a).save(tmp_path / "rgb" / "x.png")
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(tmp_path / "rgba" / "x.png")
    for k in ("rgb", "rgba"):
        purify_folder(tmp_path / k, tmp_path / f"{k}-out", prepare=lambda: (lambda it: it.image // 2), progress=False,
                      device="cpu")
    plain = np.asarray(Image.open(tmp_path / "rgb-out" / "x.png")).astype(int)
    out = np.asarray(Image.open(tmp_path / "rgba-out" / "x.png"))
    assert np.array_equal(out[..., 3], alpha)
    assert (
        np.abs(out[50:, :, :3].astype(int) - plain[50:]).mean() < 0.5
    )  # opaque, away from the strip: as without alpha
    assert out[..., :3].mean() < 0.6 * a.mean()  # the step (halving) is in the output, the strip included


def test_a_folders_pattern_is_read_from_the_photos_the_purification_reads(johns_dir, tmp_path):
    """`purify --unmask` found a folder's shared pattern with `read_image`, which takes an animated file's first frame,
    while the purification refuses such a file (`io.images.open_image_parts`): a photo left unpurified still shaped
    what was subtracted from the others. Now the pattern is read as the purification reads: the animated file is left
    out of the group (and reported by the purification pass)."""
    from PIL import Image

    from puface.defenses.shared import folder_patterns
    from puface.io.images import read_image

    person = tmp_path / "in" / "person"
    person.mkdir(parents=True)
    files = sorted(next(p for p in johns_dir.iterdir() if p.is_dir()).iterdir())[:5]
    for f in files[:4]:
        (person / f.name).write_bytes(f.read_bytes())
    frames = [Image.fromarray(read_image(files[4])), Image.fromarray(255 - read_image(files[4]))]
    frames[0].save(person / "moving.png", save_all=True, append_images=frames[1:])  # an animated PNG, 2 frames
    assert getattr(Image.open(person / "moving.png"), "n_frames", 1) == 2
    assert folder_patterns(tmp_path / "in", progress=False)["person"].photos == 4
