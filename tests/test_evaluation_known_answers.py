"""The evaluation's numbers against independent computations on cases whose answer is known: embeddings chosen by
hand (`lookup_helpers`) and scored with scikit-learn alone, a defense that records what it is given, detection
scores with ties, and the 70/30 split's counts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lookup_helpers import ShiftRows, lookup_embedder, row_of, write_lookup_faces
from puface.data.split import split_counts
from puface.defenses import create_defense
from puface.defenses.base import Defense
from puface.evaluation.data import EvaluationData
from puface.evaluation.protocol import AttackSpec, Protocol, QueryProtocol, TrainerSpec
from puface.utils.fingerprint import content_hashes
from puface.utils.images import to_float, to_uint8


class Recording(Defense):
    """No change; records the content hash of every image it is given."""

    kind = "recording"

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.update(content_hashes(to_uint8(images)))
        return images


def _expected(table: np.ndarray, data: EvaluationData, user: str, cloak_offset: int | None, trainer: str) -> tuple[float, float]:
    """(ASR, normal accuracy) computed with scikit-learn from the table alone: the training rows' embeddings with the
    user's replaced by their cloaked rows, FaceCure's classifiers (1-NN, cosine; StandardScaler + logistic
    regression, cold start), the clean test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    unit = table / np.linalg.norm(table, axis=1, keepdims=True)  # the embedder's L2 normalisation
    train_rows = row_of(to_float(data.train.images)).numpy()
    test_rows = row_of(to_float(data.test.images)).numpy()
    y, t = data.train.labels.astype(str), data.test.labels.astype(str)
    if cloak_offset is not None:
        train_rows = np.where(y == user, train_rows + cloak_offset, train_rows)
    x = unit[train_rows].astype(np.float32).astype(np.float64)
    q = unit[test_rows].astype(np.float32).astype(np.float64)
    if trainer == "nn":
        model = KNeighborsClassifier(1, metric="cosine")
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500, tol=1e-4))
    p = model.fit(x, y).predict(q)
    return float(np.mean(p[t == user] != user)), float(np.mean(p[t != user] == t[t != user]))


@pytest.fixture(scope="module")
def lookup_case(tmp_path_factory):
    """60 identities x 10 images (7 training / 3 test each), embeddings in 16-d around one centre per identity; the
    cloak moves each of a user's images half-way towards the next identity's centre (a partial cloak)."""
    root = tmp_path_factory.mktemp("lookup")
    k, per, dim = 60, 10, 16
    n = write_lookup_faces(root, k, per)
    g = np.random.default_rng(0)
    centres = g.normal(size=(k, dim))
    ident = np.repeat(np.arange(k), per)
    natural = centres[ident] + g.normal(size=(n, dim))
    cloaked = natural + 0.5 * (centres[(ident + 1) % k] - natural) + 0.3 * g.normal(size=(n, dim))
    table = np.concatenate([natural, cloaked]).astype(np.float32)
    return EvaluationData.prepare(root, seed=0, image_size=32), table, n


USERS = ["id00", "id01", "id02", "id03", "id04", "id05"]


def test_training_time_scores_match_scikit_learn_on_hand_chosen_embeddings(lookup_case):
    """ASR and normal accuracy of every (user, attack, trainer) run equal FaceCure's classifiers fitted from scratch
    on that run's training set (the protocol's linear probe warm-started from the all-natural probe stopped near it:
    lbfgs at tol 1e-4 barely moved, and other identities' test photos came out otherwise)."""
    data, table, n = lookup_case
    proto = Protocol(data, USERS, [AttackSpec("clean", None), AttackSpec("cloak", ShiftRows(n), surrogates=("lookup",))],
                     {"lookup": lookup_embedder(table)}, [TrainerSpec("nn", "nn"), TrainerSpec("linear", "linear")],
                     {"none": create_defense("none")}, cloak_cache=None, progress=False)
    rows = proto.run()
    assert len(rows) == len(USERS) * 2 * 2
    for r in rows:
        want = _expected(table, data, r["user"], n if r["attack"] == "cloak" else None, r["trainer"])
        assert (r["asr"], r["normal_acc"]) == pytest.approx(want, abs=1e-12), r
        assert r["n_user_test"] == 3 and r["n_other_test"] == 3 * 59 and r["n_user_train"] == 7
    assert {r["asr"] for r in rows if r["attack"] == "cloak"} - {0.0}  # the cloak protects someone: not a vacuous case
