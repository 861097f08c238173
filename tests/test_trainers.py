"""Each trainer fits and predicts; the frozen-embedder trainers agree with hand-built embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation_helpers import COLOURS, colour_embedder, tiny_conv_embedder, write_colour_faces
from puface.utils.errors import PufaceError
from puface.evaluation.data import EvaluationData
from puface.evaluation.trainers import LinearProbe, balanced_batch, create_trainer, list_trainers, random_hflip


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    return EvaluationData.prepare(write_colour_faces(tmp_path_factory.mktemp("colours")), seed=0, image_size=32)


def test_registry():
    assert {"nn", "linear", "e2e"} <= set(list_trainers())
    with pytest.raises(PufaceError, match="unknown trainer"):
        create_trainer("svm", colour_embedder())
    with pytest.raises(PufaceError, match="accepted parameters"):
        create_trainer("linear", colour_embedder(), gamma=2)
    for name in ("nn", "linear", "e2e"):  # refused when made, not a ValueError from range() at fit time
        with pytest.raises(PufaceError, match="batch_size"):
            create_trainer(name, colour_embedder(), batch_size=0)


def test_a_trainer_from_a_spec_string_or_table():
    """The one spec grammar (`--trainer e2e:steps=300`) works from Python too, as for attacks and defenses."""
    import puface

    for spec, options in (
        ("e2e:steps=3,batch_size=2", {}),
        ({"name": "e2e", "steps": 3, "label": "e2e-3"}, {"batch_size": 2}),
        ("e2e", {"steps": 3, "batch_size": 2}),
    ):
        t = create_trainer(spec, colour_embedder(), **options)
        assert t.name == "e2e" and (t.params["steps"], t.params["batch_size"]) == (3, 2)
    assert puface.create_trainer("linear:C=0.5", colour_embedder()).params["C"] == 0.5
    with pytest.raises(PufaceError, match="accepted parameters"):
        create_trainer("linear:gamma=2", colour_embedder())


@pytest.mark.parametrize("name", ["nn", "linear", "e2e"])
def test_torch_labels_are_their_values(name, colour_data):
    """Integer labels as a torch tensor: each element (a 0-d tensor, hashed by identity) was a class of its own (the
    linear probe fitted one class per image) and predict returned tensors; now the values, as with a list."""
    names = sorted(set(colour_data.train.labels.tolist()))
    codes = torch.tensor([names.index(y) for y in colour_data.train.labels.tolist()])
    images = colour_data.train.images
    opts = {"steps": 2, "batch_size": 4} if name == "e2e" else {}
    t = create_trainer(name, colour_embedder(), **opts).fit(images, codes)
    assert t.classes_.tolist() == list(range(len(names)))
    pred = t.predict(colour_data.test.images)
    assert all(type(p) is int for p in pred)
    if name != "e2e":  # the frozen-embedder trainers: the same fit as with the names
        by_name = create_trainer(name, colour_embedder()).fit(images, colour_data.train.labels).predict(
            colour_data.test.images)
        assert [names[p] for p in pred] == by_name.tolist()


def test_nearest_neighbour_on_hand_built_embeddings():
    train = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.9, 0.1, 0]])
    labels = ["a", "b", "c", "a"]
    t = create_trainer("nn", colour_embedder()).fit_embeddings(train, labels)
    q = torch.tensor([[0.2, 1.0, 0], [5.0, 0.1, 0.0], [0.1, 0.0, -1.0], [0.0, 0.1, 3.0]])
    # cosine: scale does not matter; the third query is opposite to c, nearest to a/b -> "a" (0.1 > 0)
    assert t.predict_embeddings(q).tolist() == ["b", "a", "a", "c"]


def test_nearest_neighbour_compares_directions_not_raw_dot_products():
    """Cosine 1-NN: a training embedding of large norm does not win by its length (a dot product without normalising
    the training side would pick it for every query with a positive component along it)."""
    train = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    t = create_trainer("nn", colour_embedder()).fit_embeddings(train, ["a", "b"])
    q = torch.tensor([[1.0, 0.2], [0.2, 1.0]])  # cos to a 0.98 vs b 0.83; cos to a 0.20 vs b 0.83
    assert t.predict_embeddings(q).tolist() == ["a", "b"]


def test_linear_probe_on_hand_built_embeddings():
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (20, 4)) for c in centres])
    y = np.repeat(["p", "q", "r"], 20)
    t = create_trainer("linear", colour_embedder()).fit_embeddings(torch.from_numpy(x), y)
    test = np.concatenate([c + rng.normal(0, 0.5, (10, 4)) for c in centres])
    assert (t.predict_embeddings(torch.from_numpy(test)) == np.repeat(["p", "q", "r"], 10)).mean() == 1.0
    assert isinstance(t, LinearProbe)
    with pytest.raises(TypeError):  # every fit starts cold: no start from another fit (it stopped near that one)
        t.fit_embeddings(torch.from_numpy(x), y, init=t)


@pytest.mark.parametrize("name", ["nn", "linear", "e2e"])
def test_predicting_no_images_gives_no_labels(name, colour_data):
    tr = colour_data.train
    options = {"steps": 2, "batch_size": 2} if name == "e2e" else {}
    t = create_trainer(name, colour_embedder(), **options).fit(tr.images, tr.labels)
    assert t.predict(tr.images[:0]).shape == (0,)


@pytest.mark.parametrize("name", ["nn", "linear", "e2e"])
def test_tuple_labels_are_labels_like_any_hashable(name):
    """Labels are any hashable values: tuples (e.g. (source, identity)) come back as tuples, not a numpy error."""
    labels = [("lfw", "a"), ("lfw", "b"), ("web", "a")] * 2
    x = torch.zeros(6, 3, 32, 32)
    for i, colour in enumerate([0, 1, 2] * 2):
        x[i, colour] = 0.9
    options = {"steps": 2, "batch_size": 2} if name == "e2e" else {}
    t = create_trainer(name, colour_embedder(), **options).fit(x, labels)
    pred = t.predict(x)
    assert pred.shape == (6,) and all(isinstance(p, tuple) for p in pred)
    assert set(t.classes_.tolist()) == set(labels)
    if name != "e2e":
        assert pred.tolist() == labels
    one = create_trainer(name, colour_embedder(), **options).fit(x[:2], [("lfw", "a")] * 2)  # one class
    assert one.predict(x[:3]).tolist() == [("lfw", "a")] * 3


@pytest.mark.parametrize("name", ["nn", "linear"])
def test_frozen_trainers_fit_and_predict_images(name, colour_data):
    tr, te = colour_data.train, colour_data.test
    t = create_trainer(name, colour_embedder()).fit(tr.images, tr.labels)  # uint8 accepted
    pred = t.predict(te.images.float() / 255)  # float accepted
    assert pred.dtype == object and set(pred) <= set(COLOURS)
    assert (pred == te.labels).mean() == 1.0


def test_end_to_end_fits_predicts_and_trains_the_backbone(colour_data):
    tr, te = colour_data.train, colour_data.test
    emb = tiny_conv_embedder(seed=1)
    before = [p.clone() for p in emb.parameters()]
    t = create_trainer("e2e", emb, steps=40, batch_size=8, backbone_lr=1e-3, seed=0, device="cpu").fit(
        tr.images, tr.labels
    )
    pred = t.predict(te.images)
    assert (pred == te.labels).mean() == 1.0
    assert np.mean(t.losses[-5:]) < np.mean(t.losses[:5])
    # the fitted copy changed, the caller's embedder did not
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model_.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, emb.parameters()))
    # seeded: the same run gives the same model
    t2 = create_trainer("e2e", emb, steps=40, batch_size=8, backbone_lr=1e-3, seed=0, device="cpu").fit(
        tr.images, tr.labels
    )
    assert t.losses == t2.losses


def test_end_to_end_head_starts_from_each_class_mean_embedding(colour_data):
    """Weight imprinting: with no steps the head is the class means, so e2e predicts the class whose mean embedding
    is nearest in cosine to the photo's embedding."""
    import torch.nn.functional as F

    tr, te = colour_data.train, colour_data.test
    emb = tiny_conv_embedder(seed=1)
    t = create_trainer("e2e", emb, steps=0, seed=0, device="cpu").fit(tr.images, tr.labels)
    with torch.no_grad():
        train_emb, test_emb = emb(tr.images.float() / 255), emb(te.images.float() / 255)
    classes = sorted(set(tr.labels.tolist()))
    means = torch.stack([train_emb[torch.from_numpy(tr.labels == c)].sum(0) for c in classes])
    want = [classes[i] for i in (F.normalize(test_emb, dim=1) @ F.normalize(means, dim=1).T).argmax(1).tolist()]
    assert t.predict(te.images).tolist() == want
    assert len(set(want)) > 1


def test_balanced_batches_and_flips():
    """1 'rare' row among 50 'common' ones is drawn about half of the time; flips are left-right."""
    by_class = [np.arange(50), np.array([50])]
    g = torch.Generator().manual_seed(0)
    idx, cls = zip(*(balanced_batch(by_class, 64, g) for _ in range(20)))
    idx, cls = np.concatenate(idx), np.concatenate(cls)
    assert 0.45 < np.mean(idx == 50) < 0.55
    assert np.all((idx == 50) == (cls == 1))
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    flipped = random_hflip(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(1))
    same = [torch.equal(f, o) for f, o in zip(flipped, x.repeat(50, 1, 1, 1))]
    mirrored = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x.repeat(50, 1, 1, 1))]
    assert all(a or b for a, b in zip(same, mirrored)) and 30 < sum(mirrored) < 70


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="fit"):
        create_trainer("nn", colour_embedder()).predict_embeddings(torch.zeros(1, 4))
