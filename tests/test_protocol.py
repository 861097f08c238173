"""The FaceCure protocol: split determinism, the metrics on hand-built cases with known answers,
the defense reaching every training image, the grid, caching and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation_helpers import COLOURS, CheckerCloak, colour_embedder, write_colour_faces
from puface.defenses import create_defense
from puface.utils.errors import PufaceError
from puface.evaluation.cache import ContentCache
from puface.evaluation.metrics import attack_success_rate, normal_accuracy, protocol_scores, summarise
from puface.utils.metrics import psnr, ssim
from puface.evaluation.data import EvaluationData, choose_users
from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec, setting_of


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory):
    return write_colour_faces(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def colour_data(colour_root):
    return EvaluationData.prepare(colour_root, seed=0, image_size=32)


# ------------------------------------------------------------------ metrics


def test_metrics_on_hand_built_predictions():
    true = ["u", "u", "u", "u", "a", "a", "b", "b", "b", "c"]
    pred = ["u", "a", "b", "u", "a", "u", "b", "b", "a", "c"]
    assert attack_success_rate(pred, true, "u") == 0.5  # 2 of the user's 4 missed
    assert normal_accuracy(pred, true, "u") == pytest.approx(4 / 6)  # a:1/2, b:2/3, c:1/1
    s = protocol_scores(pred, true, "u")
    assert s == {"asr": 0.5, "normal_acc": pytest.approx(4 / 6), "user_acc": 0.5, "n_user_test": 4, "n_other_test": 6}
    assert math.isnan(attack_success_rate(pred, true, "nobody"))
    # user_acc is the share of the user's test photos recognised: 1 - ASR (3 of 4 here, ASR 1 of 4)
    s = protocol_scores(["u", "u", "a", "u", "a", "b"], ["u", "u", "u", "u", "a", "b"], "u")
    assert (s["asr"], s["user_acc"], s["normal_acc"]) == (0.25, 0.75, 1.0)
    with pytest.raises(ValueError, match="length"):
        attack_success_rate(pred[:-1], true, "u")


def test_metrics_take_torch_labels_and_say_when_given_logits():
    """A classifier's torch labels and a user given as a tensor (`labels[i]`) raised AttributeError "'bool' object
    has no attribute 'any'"; logits for labels said "differ in length (5 vs 5)"."""
    pred, true = torch.tensor([1, 1, 0, 2, 2]), torch.tensor([1, 1, 1, 2, 0])
    for user in (1, torch.tensor(1), np.int64(1), true[0]):
        assert attack_success_rate(pred, true, user) == pytest.approx(1 / 3)
        assert normal_accuracy(pred, true, user) == 0.5
        assert protocol_scores(pred, true, user)["n_user_test"] == 3
    assert attack_success_rate(pred.numpy(), true.numpy(), 1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"differ in shape \(\(5, 3\) vs \(5,\)\).*argmax"):
        attack_success_rate(torch.rand(5, 3), true, 1)


def test_summaries_and_image_quality():
    s = summarise([0.2, 0.4, float("nan"), 0.6])
    assert (s.mean, s.n) == (pytest.approx(0.4), 3) and s.std == pytest.approx(0.2)
    assert s.format() == "40.0 ± 20.0" and summarise([]).format() == "-" and summarise([0.5]).format() == "50.0"
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    y = (x + 0.1).clamp(0, 1)
    assert torch.allclose(psnr(x, x.clone()), torch.tensor([float("inf")] * 2))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, y) < 0.999).all() and (psnr(x, y) > 19).all() and (psnr(x, y) < 21).all()


# ------------------------------------------------------------------ data and users


def test_split_is_deterministic_and_70_30(colour_root):
    a = EvaluationData.prepare(colour_root, seed=0, image_size=32)
    b = EvaluationData.prepare(colour_root, seed=0, image_size=32)
    c = EvaluationData.prepare(colour_root, seed=1, image_size=32)
    assert a.train.paths == b.train.paths and a.test.paths == b.test.paths
    assert a.train.hashes == b.train.hashes and torch.equal(a.train.images, b.train.images)
    assert a.train.paths != c.train.paths
    for name in COLOURS:
        assert len(a.train.rows_of(name)) == 7 and len(a.test.rows_of(name)) == 3
    assert not set(a.train.paths) & set(a.test.paths)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (3, 32, 32)


def test_user_choice(colour_data):
    assert choose_users(colour_data, count=2, seed=5) == choose_users(colour_data, count=2, seed=5)
    assert len({tuple(choose_users(colour_data, count=2, seed=s)) for s in range(8)}) > 1
    assert "Alice" not in choose_users(colour_data, count=3, seed=0, exclude=["Alice"])
    assert choose_users(colour_data, names=["Dave", "Bob"]) == ["Dave", "Bob"]
    with pytest.raises(PufaceError, match="only 3 identities qualify"):
        choose_users(colour_data, count=4, exclude=["Alice"])
    with pytest.raises(PufaceError, match="Zoe"):
        choose_users(colour_data, names=["Zoe"])


# ------------------------------------------------------------------ the protocol


def run_protocol(data, *, defenses, attacks, trainers=("nn",), cache=None, done=(), users=("Alice", "Carol")):
    emb = colour_embedder()
    proto = Protocol(
        data,
        list(users),
        attacks,
        {"colour": emb},
        [TrainerSpec(t, t) for t in trainers],
        {d: create_defense(*d.split(":")) if ":" not in d else create_defense(d.split(":")[0]) for d in defenses},
        cache=cache,
        cloak_cache=None,
        done=done,
        progress=False,
        example_users=1,
    )
    return proto, proto.run(), emb


CLEAN = AttackSpec("clean", None)
CHECKER = AttackSpec("checker", CheckerCloak(), surrogates=("colour",))


def by(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def test_known_answers_nn(colour_data):
    """Clean: every test image is recognised. Checker cloak: the user is never recognised, everyone
    else always is. Blur on all training images removes the cloak: ASR back to 0."""
    _, rows, _ = run_protocol(colour_data, defenses=["none", "blur"], attacks=[CLEAN, CHECKER])
    assert len(rows) == 2 * 2 * 2  # users x attacks x defenses
    for r in by(rows, attack="clean"):
        assert (r["asr"], r["normal_acc"]) == (0.0, 1.0)
        assert r["setting"] == "clean"
    for r in by(rows, attack="checker", defense="none"):
        assert (r["asr"], r["normal_acc"]) == (1.0, 1.0), r
        assert r["setting"] == "white-box" and r["n_user_test"] == 3 and r["n_other_test"] == 9
    for r in by(rows, attack="checker", defense="blur"):
        assert (r["asr"], r["normal_acc"]) == (0.0, 1.0), r


def test_an_end_to_end_trainer_is_seeded_with_the_runs_seed(colour_root, monkeypatch):
    """The e2e trainer's seed (batch sampling and flips) was 0 in every draw of a grid: `--seed 1` trained the same
    batches as seed 0. Its fits now take the run's seed unless the entry sets one (seed 0 as before)."""
    from evaluation_helpers import tiny_conv_embedder
    from puface.evaluation.trainers import EndToEnd

    seen: list[int] = []
    fit = EndToEnd.fit

    def spy(self, images, labels):
        seen.append(self.params["seed"])
        return fit(self, images, labels)

    monkeypatch.setattr(EndToEnd, "fit", spy)
    e2e = {"steps": 1, "batch_size": 2, "device": "cpu"}
    for seed, params, want in ((1, e2e, 1), (0, e2e, 0), (1, {**e2e, "seed": 5}, 5)):
        seen.clear()
        data = EvaluationData.prepare(colour_root, seed=seed, image_size=32)
        Protocol(data, ["Alice"], [CLEAN], {"tiny": tiny_conv_embedder()}, [TrainerSpec("e2e", "e2e", dict(params))],
                 {"none": create_defense("none")}, cache=None, cloak_cache=None, progress=False).run()
        assert seen and set(seen) == {want}, (seed, params, seen)


def test_linear_trainer_in_the_protocol(colour_data):
    _, rows, _ = run_protocol(colour_data, defenses=["none", "blur"], attacks=[CLEAN, CHECKER], trainers=("linear",))
    assert all(r["normal_acc"] == 1.0 for r in rows)
    assert all(r["asr"] == 0.0 for r in by(rows, attack="clean") + by(rows, defense="blur"))
    # No exact answer under the undefended cloak: the user's colour is still unique, which a linear
    # model can use (1-NN cannot); at least one user must stay protected.
    assert max(r["asr"] for r in by(rows, attack="checker", defense="none")) == 1.0


def test_a_defense_that_misses_the_cloak_leaves_it(colour_data):
    _, rows, _ = run_protocol(colour_data, defenses=["bitdepth"], attacks=[CHECKER])
    assert all(r["asr"] == 1.0 for r in rows)


def test_cache_resume_examples_and_quality(colour_data):
    cache = ContentCache(":memory:")
    proto, rows, emb = run_protocol(colour_data, defenses=["none", "blur"], attacks=[CLEAN, CHECKER], cache=cache)
    first = emb.net.images_seen
    # the same grid again with the same cache: every embedding comes from the cache
    _, rows2, emb2 = run_protocol(colour_data, defenses=["none", "blur"], attacks=[CLEAN, CHECKER], cache=cache)
    assert emb2.net.images_seen == 0 and first > 0
    assert [(r["run_id"], r["asr"], r["normal_acc"]) for r in rows] == [
        (r["run_id"], r["asr"], r["normal_acc"]) for r in rows2
    ]
    # resume: finished runs are skipped
    _, rows3, _ = run_protocol(
        colour_data, defenses=["none", "blur"], attacks=[CLEAN, CHECKER], done=[r["run_id"] for r in rows]
    )
    assert rows3 == []
    # examples for the first user, per attack: natural, cloaked and each defense's output
    ex = proto.examples["Alice"]
    assert set(ex["checker"]) == {"natural", "cloaked", "defense:none", "defense:blur"}
    assert ex["checker"]["cloaked"].shape == (2, 3, 32, 32) and ex["checker"]["cloaked"].dtype == torch.uint8
    # image quality against the natural images: blur brings the cloaked images closer
    q = proto.quality
    assert np.mean(q["checker", "blur", "Alice"]["psnr"]) > np.mean(q["checker", "none", "Alice"]["psnr"]) + 5
    assert np.mean(q["clean", "none", "Carol"]["psnr"]) == 99.0 and len(q["clean", "none", "Carol"]["ssim"]) == 7


def test_setting_names():
    a = AttackSpec("fawkes-high", object(), surrogates=("dlib-resnet29",))
    assert setting_of("dlib-resnet29", a) == "white-box"
    assert setting_of("sface", a) == "oblivious"
    assert setting_of("sface", CLEAN) == "clean"


def test_bad_grids_are_refused(colour_data):
    with pytest.raises(PufaceError, match="unique"):
        Protocol(colour_data, ["Alice"], [CLEAN, CLEAN], {"c": colour_embedder()}, [TrainerSpec("nn", "nn")],
                 {"none": create_defense("none")}, cloak_cache=None, progress=False)
    with pytest.raises(PufaceError, match="at least one trainer"):
        Protocol(colour_data, ["Alice"], [CLEAN], {"c": colour_embedder()}, [], {"none": create_defense("none")},
                 cloak_cache=None, progress=False)


def test_real_embedder_on_johns(johns_dir):
    """dlib ResNet-29 on the johns chips: with no cloak every test photo is recognised (nn, linear)."""
    from puface.models.registry import create_embedder, list_embedders

    if "dlib-resnet29" not in list_embedders():
        pytest.skip("dlib-resnet29 not available")
    data = EvaluationData.prepare(johns_dir, seed=0)
    assert len(data.train) == 5 * 8 and len(data.test) == 5 * 3
    users = choose_users(data, count=2, seed=0)
    proto = Protocol(data, users, [CLEAN], {"dlib": create_embedder("dlib-resnet29")},
                     [TrainerSpec("nn", "nn"), TrainerSpec("linear", "linear")],
                     {"none": create_defense("none"), "jpeg-q75": create_defense("jpeg", quality=75)},
                     cloak_cache=None, progress=False)
    rows = proto.run()
    assert len(rows) == 2 * 2 * 2
    assert all(r["asr"] == 0.0 and r["normal_acc"] == 1.0 for r in rows)


def test_cloaks_from_a_folder(colour_root, colour_data, tmp_path):
    """Cloaks made by another tool, in a mirrored folder with Fawkes' names, act like the attack itself."""
    from puface.attacks.folder import FolderCloaks
    from puface.io.images import read_image, write_image
    from puface.utils.images import image_to_tensor, tensor_to_image

    cloak = CheckerCloak()
    for p in colour_root.glob("*/*.png"):
        x = image_to_tensor(read_image(p))[None]
        write_image(tmp_path / p.parent.name / f"{p.stem}_cloaked.png", tensor_to_image(cloak(x)[0]))
    folder = AttackSpec("folder", FolderCloaks(tmp_path), surrogates=("colour",))
    _, rows, _ = run_protocol(colour_data, defenses=["none", "blur"], attacks=[folder])
    assert [r["asr"] for r in by(rows, defense="none")] == [1.0, 1.0]
    assert [r["asr"] for r in by(rows, defense="blur")] == [0.0, 0.0]
    first_train = colour_data.train.paths[colour_data.train.rows_of("Alice")[0]]
    (tmp_path / "Alice" / f"{first_train.stem}_cloaked.png").unlink()
    with pytest.raises(PufaceError, match="no cloaked version of Alice/.*_cloaked.png"):
        run_protocol(colour_data, defenses=["none"], attacks=[folder])


def test_a_trainer_can_be_restricted_to_some_victims(colour_data):
    proto = Protocol(colour_data, ["Alice"], [CLEAN], {"a": colour_embedder("a"), "b": colour_embedder("b")},
                     [TrainerSpec("nn", "nn", victims=("a",)), TrainerSpec("linear", "linear")],
                     {"none": create_defense("none")}, cloak_cache=None, progress=False)
    rows = proto.run()
    assert sorted((r["victim"], r["trainer"]) for r in rows) == [("a", "linear"), ("a", "nn"), ("b", "linear")]
    with pytest.raises(PufaceError, match="victims not in the grid"):
        Protocol(
            colour_data,
            ["Alice"],
            [CLEAN],
            {"a": colour_embedder("a")},
            [TrainerSpec("nn", "nn", victims=("z",))],
            {"none": create_defense("none")},
            cloak_cache=None,
            progress=False,
        )


def test_views_train_on_every_view(colour_data):
    """`views`: the FR model trains on the photo and its defended version. A blur view recovers the user
    from the checker cloak (1-NN finds the blurred copy), a view that misses the cloak does not."""
    proto = Protocol(colour_data, ["Alice", "Carol"], [CLEAN, CHECKER], {"colour": colour_embedder()},
                     [TrainerSpec("nn", "nn"), TrainerSpec("linear", "linear")],
                     {"keep-blur": create_defense({"name": "views", "of": ["none", "blur"]}),
                      "keep-bits": create_defense("views:of=none|bitdepth")},
                     cloak_cache=None, progress=False, example_users=1)
    rows = proto.run()
    assert all(r["normal_acc"] == 1.0 for r in rows)
    assert all(r["asr"] == 0.0 for r in by(rows, attack="clean"))
    assert all(r["asr"] == 0.0 for r in by(rows, attack="checker", defense="keep-blur", trainer="nn"))
    assert all(r["asr"] == 1.0 for r in by(rows, attack="checker", defense="keep-bits", trainer="nn"))
    # the training set holds both views, labels repeated; the report shows the last view
    ds = proto._defended_set("keep-blur", need_emb=True)
    n = len(colour_data.train)
    assert ds.images.shape[0] == 2 * n and list(ds.labels) == list(colour_data.train.labels) * 2
    assert torch.equal(ds.images[:n], colour_data.train.images)
    assert proto.examples["Alice"]["checker"]["defense:keep-blur"].shape == (2, 3, 32, 32)


def test_views_defense_as_a_function():
    from puface.defenses import Views

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    v = create_defense({"name": "views", "of": ["none", "blur:sigma=1"]})
    assert isinstance(v, Views) and v.name == "views-none-blur-s1"
    assert torch.equal(v(x), create_defense("blur:sigma=1")(x))  # as images -> images: the last view
    assert [p.name for p in v.parts] == ["none", "blur-s1"]
    assert create_defense(v.config).cache_key == v.cache_key
    with pytest.raises(PufaceError, match="at least two"):
        create_defense({"name": "views", "of": ["none"]})


def test_a_checkpoint_is_cached_by_its_content_not_its_path(colour_data, tmp_path, monkeypatch):
    """The `puface` defense of a checkpoint file: the same file at another path reuses its purified images (before:
    the path was part of the cache key, so a copy was purified again); another checkpoint written at the same path is
    not served the first one's; images cached under the key earlier versions used (path and weights) are still found,
    and stored under the new key."""
    import hashlib
    import json

    from puface.defenses.purifier import PuFaceDefense
    from purifier_support import visible_purifier_file

    a = visible_purifier_file(tmp_path / "a" / "p.safetensors")
    copies = [tmp_path / f"{n}" / "p.safetensors" for n in ("b", "c")]
    for c in copies:
        c.parent.mkdir()
        c.write_bytes(a.read_bytes())
    da, db, dc = (create_defense({"name": "puface", "weights": str(p)}) for p in (a, *copies))
    assert da.cache_key == db.cache_key == dc.cache_key
    visible_purifier_file(copies[0], seed=1)  # another checkpoint at b's path
    assert create_defense({"name": "puface", "weights": str(copies[0])}).cache_key != da.cache_key
    assert create_defense("puface").earlier_cache_keys == []  # the shipped purifier's key is as it was

    calls = []
    real = PuFaceDefense._apply
    monkeypatch.setattr(PuFaceDefense, "_apply", lambda self, x: calls.append(len(x)) or real(self, x))
    cache = ContentCache(":memory:")
    proto = Protocol(colour_data, ["Alice"], [CLEAN], {"c": colour_embedder()}, [TrainerSpec("nn", "nn")],
                     {"p": da}, cache=cache, cloak_cache=None, progress=False)
    images, hashes = colour_data.train.images[:6], colour_data.train.hashes[:6]
    # an earlier version's entries, under its key: the config as written (c's path) and the weights
    old = hashlib.sha256(json.dumps({"config": dc.config, "fingerprint": dc.fingerprint}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    assert dc.earlier_cache_keys == [old]
    want = torch.from_numpy(np.stack([np.full((3, 32, 32), i, np.uint8) for i in range(6)]))
    cache.put("images", old, {h: w.numpy() for h, w in zip(hashes, want)})
    got, _ = proto.apply_defense(dc, images, hashes)
    assert calls == [] and torch.equal(got, want)
    assert set(cache.get("images", dc.cache_key, hashes)) == set(hashes)  # moved to the new key
    got, _ = proto.apply_defense(da, images, hashes)  # the same checkpoint at another path: from the cache
    assert calls == [] and torch.equal(got, want)
