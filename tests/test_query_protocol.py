"""The query-time protocol: clean gallery, cloaked probes, the defense on every probe. Its ASR on a tiny
synthetic case whose answer is known, and the same cloak under the training-time protocol for contrast;
a whole experiment with `protocol = "query"`."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation_helpers import COLOURS, EXPERIMENT_COLOURS_TOML, colour_embedder, register_standins, write_colour_faces
from puface.defenses import create_defense
from puface.evaluation.data import EvaluationData
from puface.evaluation.protocol import PROTOCOLS, AttackSpec, Protocol, QueryProtocol, TrainerSpec, protocol_class
from puface.experiments import load_config, run_experiment
from puface.utils.errors import ConfigError, PufaceError


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    return EvaluationData.prepare(write_colour_faces(tmp_path_factory.mktemp("colours")), seed=0, image_size=32)


class SwapToBob:
    """A "cloak" that repaints every other image of a batch in Bob's colour (the rest untouched), and
    records how many images it was given."""

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(images))
        out = images.clone()
        out[::2] = torch.tensor(COLOURS["Bob"]).view(1, 3, 1, 1).expand_as(out[::2])
        return out


def run(cls, data, attack, defenses=("none",), trainers=("nn", "linear")):
    proto = cls(data, ["Alice"], [AttackSpec("clean", None), AttackSpec("swap", attack, surrogates=("colour",))],
                {"colour": colour_embedder()}, [TrainerSpec(t, t) for t in trainers],
                {d: create_defense(d) for d in defenses}, cloak_cache=None, progress=False)
    return proto, proto.run()


def test_query_asr_on_a_known_case(colour_data):
    """Alice has 3 probes; the swap repaints 2 of them in Bob's colour: those are matched to Bob, the third
    to Alice, so ASR = 2/3 exactly, and every other identity's probes are recognised."""
    swap = SwapToBob()
    n_probes = len(colour_data.test.rows_of("Alice"))
    assert n_probes == 3
    proto, rows = run(QueryProtocol, colour_data, swap)
    assert swap.seen == [n_probes]  # the attack cloaked the user's probes, not the gallery
    for r in rows:
        assert r["protocol"] == "query" and r["normal_acc"] == 1.0
        assert r["asr"] == (pytest.approx(2 / 3) if r["attack"] == "swap" else 0.0), r
    assert r["n_user_test"] == 3
    assert r["n_user_train"] == len(colour_data.train.rows_of("Alice")) == 7  # her gallery photos, not her probes


def test_the_same_cloak_fails_at_training_time(colour_data):
    """Under FaceCure's protocol the same swap repaints 4 of Alice's 7 training photos; her 3 unswapped ones
    still match her clean test photos under 1-NN: ASR 0. The protocols measure different threats."""
    _, rows = run(Protocol, colour_data, SwapToBob(), trainers=("nn",))
    swap = [r for r in rows if r["attack"] == "swap"]
    assert swap and all(r["asr"] == 0.0 and r["protocol"] == "training" for r in swap)


def test_the_clean_references_image_quality_is_of_the_defended_training_photos(colour_data):
    """Without a cloak the protected user's training photos still go through the defense: the quality recorded for the
    clean reference compares the defended photos with the natural ones (not the natural photos with themselves)."""
    proto, _ = run(Protocol, colour_data, SwapToBob(), defenses=("none", "noise"), trainers=("nn",))
    assert set(proto.quality["clean", "none", "Alice"]["psnr"]) == {99.0}  # identical: the cap
    noisy = proto.quality["clean", "noise", "Alice"]
    assert len(noisy["psnr"]) == 7 and max(noisy["psnr"]) < 60 and max(noisy["ssim"]) < 1


def test_the_defense_reaches_every_probe_and_never_the_gallery(colour_data):
    """A defense that paints every image Bob's colour: the gallery stays clean (the model still knows
    everyone), but every defended probe looks like Bob: Alice is never matched (ASR 1 even without a cloak)
    and only Bob's own probes are right (normal accuracy 1/3)."""

    from puface.defenses import Defense

    class PaintBob(Defense):
        kind = "paint-bob"

        def _apply(self, images):
            return torch.tensor(COLOURS["Bob"]).view(1, 3, 1, 1).expand_as(images).clone()

    proto = QueryProtocol(colour_data, ["Alice"], [AttackSpec("clean", None)], {"colour": colour_embedder()},
                          [TrainerSpec("nn", "nn")], {"paint": PaintBob()}, cloak_cache=None, progress=False)
    (row,) = proto.run()
    assert row["asr"] == 1.0 and row["normal_acc"] == pytest.approx(1 / 3)
    model = proto._models["colour", "nn"]
    assert model.predict_embeddings(proto.embed("colour", colour_data.test.images, colour_data.test.hashes)).tolist() \
        == colour_data.test.labels.tolist()  # fitted on the clean gallery


def test_protocol_registry_and_checks(colour_data):
    assert set(PROTOCOLS) == {"training", "query"} and protocol_class("query") is QueryProtocol
    with pytest.raises(PufaceError, match="unknown protocol 'probe'"):
        protocol_class("probe")
    resume = run(QueryProtocol, colour_data, SwapToBob())[1]
    proto = QueryProtocol(colour_data, ["Alice"], [AttackSpec("clean", None), AttackSpec("swap", SwapToBob())],
                          {"colour": colour_embedder()}, [TrainerSpec(t, t) for t in ("nn", "linear")],
                          {"none": create_defense("none")}, cloak_cache=None, progress=False,
                          done=[r["run_id"] for r in resume])
    assert proto.run() == []  # resumes: nothing left to do


def test_query_experiment_end_to_end(tmp_path):
    register_standins()
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root)).replace(
        'seeds = [0]', 'seeds = [0]\nprotocol = "query"'
    )
    (tmp_path / "q.toml").write_text(text)
    cfg = load_config(tmp_path / "q.toml")
    assert cfg.protocol == "query" and cfg.resolved()["protocol"] == "query"
    res = run_experiment(cfg, tmp_path / "out", progress=False, echo=lambda s: None)
    assert len(res.rows) == 2 * 2 * 2 * 3 and {r["protocol"] for r in res.rows} == {"query"}
    assert "Query-time protocol" in res.table_md and "probe images" in res.table_md
    clean = [r for r in res.rows if r["attack"] == "clean"]
    assert all(r["asr"] == 0.0 for r in clean)
    # detection scores the cloaked probes (2 users x 3 test photos), not training photos nobody cloaked here
    det = json.loads((tmp_path / "out" / "results.json").read_text())["detection"]
    assert [(r["attack"], r["n_cloaked"], r["n_natural"]) for r in det["rows"]] == [("checker", 6, 14)]
    assert det["cloaked_split"] == "probe" and "cloaked = the protected users' cloaked probe photos" in res.table_md
    (tmp_path / "bad.toml").write_text(text.replace('protocol = "query"', 'protocol = "probe"'))
    with pytest.raises(ConfigError, match="unknown protocol"):
        load_config(tmp_path / "bad.toml")
    training = load_config("lfw")
    assert training.protocol == "training" and "protocol" not in training.raw  # old configs: unchanged fingerprints


def test_evaluate_cli_offers_the_protocol(capsys):
    from puface.cli import main

    assert main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--protocol [training|query]" in text and "probe" in text


def test_views_defense_is_refused_at_query_time(colour_data):
    with pytest.raises(PufaceError, match="views"):
        QueryProtocol(colour_data, ["Alice"], [AttackSpec("clean", None)], {"colour": colour_embedder()},
                      [TrainerSpec("nn", "nn")], {"keep": create_defense("views:of=none|blur")}, cloak_cache=None,
                      progress=False)
