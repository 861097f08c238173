"""Cloak cache keys never change: a knob added after cloaks were cached stays out of the key at its earlier value
(`CloakAttack.EARLIER`), and the packaged grids' keys are pinned as recorded on the code before that rule had one
home."""

from __future__ import annotations

import hashlib
import json

import pytest

from puface.attacks import create_attack
from puface.attacks.cache import CloakCache

from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (attack, quick settings, later knob, its earlier value, another value, knobs left out with it at the earlier value)
LATER_KNOBS = [
    ("fawkes", {"mode": "mid"}, "geometry", "chip", "square112", ()),
    ("fawkes", {"mode": "mid"}, "cap", "clip", "project", ()),
    ("fawkes", {"mode": "mid"}, "ensemble", "sum", "min", ()),
    ("lowkey", {"perceptual": "ssim"}, "clamp", "end", "steps", ()),
    ("opom", {"steps": 3}, "variant", "fim", "dfanet-mfim", ("droprate",)),
    ("unlearnable", {"max_rounds": 2}, "stop_on", "protected", "all", ()),
    ("unlearnable", {"max_rounds": 2}, "start", "uniform", "zero", ()),
]


def _attack(kind: str, **kw):
    return create_attack(kind, embedders=[tiny_embedder()], device="cpu", **kw)


def _folder(config: dict, name: str) -> str:
    """The cache folder name of a config, hashed here as `CloakCache` does (not through it)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@pytest.mark.parametrize("kind, base, knob, earlier, other, along", LATER_KNOBS,
                         ids=[f"{k}-{knob}" for k, _, knob, *_ in LATER_KNOBS])
def test_a_later_knob_at_its_earlier_value_leaves_the_key_as_without_it(tmp_path, kind, base, knob, earlier, other,
                                                                        along):
    """At the earlier value the key is the key of the config without the knob (and the knobs only its later values
    use); at another value the knob is in the key, so those cloaks never pass for the earlier ones."""
    cache = CloakCache(tmp_path)
    at_earlier, at_other = _attack(kind, **base, **{knob: earlier}), _attack(kind, **base, **{knob: other})
    without = {k: v for k, v in at_other.config.items() if k not in (knob, *along)}
    without["name"] = at_earlier.name  # OPOM's variant names the attack too
    assert cache.attack_dir(at_earlier).name == _folder(without, at_earlier.name)
    assert knob not in at_earlier.config and at_other.config[knob] == other
    assert cache.attack_dir(at_other) != cache.attack_dir(at_earlier)
    for companion in along:  # does nothing at the earlier value: another value of it keeps the earlier key
        assert companion in at_other.config
        assert _attack(kind, **base, **{knob: earlier, companion: 0.3}).config == at_earlier.config


def test_every_later_knob_is_in_the_table():
    """Every attack's `EARLIER` (and the knobs left out along) is the table above: a new knob's author adds a row."""
    from puface.attacks.base import CloakAttack

    for kind in ("fawkes", "lowkey", "opom", "unlearnable"):
        _attack(kind)  # imports its module
    classes, todo = set(), [CloakAttack]
    while todo:
        for sub in todo.pop().__subclasses__():
            classes.add(sub)
            todo.append(sub)
    declared = {
        (cls.kind, knob, value, tuple(cls.EARLIER_ALONG.get(knob, ())))
        for cls in classes if cls.__module__.startswith("puface.")
        for knob, value in cls.EARLIER.items()
    }
    assert declared == {(kind, knob, earlier, along) for kind, _, knob, earlier, _, along in LATER_KNOBS}


# The cache folders (`CloakCache.attack_dir`) of the packaged grids' attacks, as `puface reproduce` builds them
# (`experiments.build.build_attack`, each config's seeds), recorded on the code before `EARLIER` existed.
PUBLISHED = {
    "lfw": {
        "fawkes-mid": "fawkes-mid-e65f9c1b4d45",
        "fawkes-mid-project": "fawkes-mid-eff635f87d17",
        "fawkes-high": "fawkes-high-f23b7224469f",
        "fawkes-high-sface": "fawkes-high-3d40667501a0",
        "lowkey": "lowkey-d451c72c7c79",
    },
    "lfw-unseen": {
        "opom": "opom-a034b421ee1d",
        "opom-sface": "opom-41b78a5b08de",
        "ue-sample": "unlearnable-samplewise-558000d575ec",
        "ue-class": "unlearnable-classwise-64a5a0751403",
    },
    "lfw-unseen-ue-stop": {
        "ue-sample": "unlearnable-samplewise-558000d575ec",
        "ue-class": "unlearnable-classwise-64a5a0751403",
        "ue-sample-ref": "unlearnable-samplewise-4d32232522aa",
        "ue-class-ref": "unlearnable-classwise-15052751a950",
    },
    "lfw-unseen-opom-dfanet": {
        "opom": "opom-a034b421ee1d",
        "opom-sface": "opom-41b78a5b08de",
        "opom-dfanet": "opom-dfanet-feb17ebf81d3",
        "opom-sface-dfanet": "opom-dfanet-1df9bcc1d03e",
    },
    "demo": {
        "fawkes-high-s40": "fawkes-custom-5954df1bddd8",
        "lowkey-s15": "lowkey-9981e166d13d",
    },
}


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_packaged_grids_keep_their_cloak_cache_keys(tmp_path, config):
    from puface.experiments.build import build_attack
    from puface.experiments.config import load_config
    from puface.models.registry import list_embedders

    if not {"dlib-resnet29", "sface"} <= set(list_embedders()):
        pytest.skip("dlib-resnet29 and sface are needed (their weights are in the keys)")
    cfg = load_config(config)
    cache = CloakCache(tmp_path)
    got = {}
    for seed in cfg.seeds:
        assert seed == 0  # the recorded keys are seed 0's
        for a in cfg.attacks:
            if not a.is_clean and a.name != "folder":
                got[a.label] = cache.attack_dir(build_attack(a, seed, "cpu", cfg.run["cloak_batch_size"]).attack).name
    assert got == PUBLISHED[config]
