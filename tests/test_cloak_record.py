"""`puface cloak`'s record (OUT/cloak_config.json: the attack's cache-key config and every setting) never changes for
the same attack: a folder made before resumes, and its record is byte for byte what the code writes today. Pinned per
registered attack (at the earlier values of its later knobs and at other values) and for a user's attack without a
settings dataclass, as recorded on the code before the record's "settings" and the cache key's knobs had one home."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from puface.attacks import CloakAttack, create_attack, list_attacks
from puface.attacks.folder import CONFIG_NAME, cloak_folder
from puface.utils.version import __version__

from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (attack, settings, sha256 of its record with the input folder as <IN> and the version as <VERSION>)
PINNED = [
    ("fawkes", {"mode": "custom", "steps": 2},
     "2e5e79501d24c9d7612b79389efc31b10dedce65531500bf3a2e7735b830cfdf"),
    ("fawkes", {"mode": "low", "cap": "project", "ensemble": "min"},
     "9883383da3905e636943688ae6a8c2ef16ce8c69846720ee5120ddc7b2ed8394"),
    ("lowkey", {"perceptual": "ssim", "steps": 2},
     "12d6d23de49a9e0a9c001025a0144a920033e0417e4dd6092d1c70a82b5c6fbd"),
    ("lowkey", {"perceptual": "ssim", "steps": 2, "clamp": "steps"},
     "32f2200456a7459c3cc2acdf60d4c622376d96834a4a9c7c915eaaec2af476fd"),
    ("opom", {"steps": 2},
     "abf4c8c0a66ed335a8f28e9a70a518050f00c191b12ed9938f4e9854e95c00dd"),
    ("opom", {"steps": 2, "variant": "dfanet-mfim", "droprate": 0.2},
     "7536cd115baf44a57ea15303ec0a26951f1cafaee063705d5d43f9007a95054f"),
    ("unlearnable", {"max_rounds": 1, "steps": 2, "train_steps": 2},
     "7f9810f21c56a0005f07c87c9a1e3d57dd34f76aca364980d411748b97f23b31"),
    ("unlearnable", {"max_rounds": 1, "steps": 2, "train_steps": 2, "stop_on": "protected", "start": "uniform"},
     "3318d5ad8b4caa182a5c9376b9cf2a389c7c868711dd60ca489a7ac6ea38c4bd"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """IN/<identity>/<n>.png: 2 identities x 2 seeded noise images, 48x48 (the tiny surrogate's size)."""
    root = tmp_path_factory.mktemp("record") / "in"
    rng = np.random.default_rng(0)
    for ident in ("a", "b"):
        (root / ident).mkdir(parents=True)
        for n in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / ident / f"{n}.png")
    return root


def _record(out, tree) -> str:
    """OUT's record as written, with the (temporary) input folder and the version as placeholders."""
    text = (out / CONFIG_NAME).read_text()
    return text.replace(json.dumps(str(tree.resolve())), '"<IN>"').replace(json.dumps(__version__), '"<VERSION>"')


def _cloak(kind, settings, tree, out, **kw):
    attack = create_attack(kind, embedders=[tiny_embedder()], device="cpu", **settings)
    return cloak_folder(tree, out, attack, progress=False, **kw)


def test_every_registered_attack_is_pinned():
    assert {kind for kind, *_ in PINNED} == {k for k in list_attacks() if not k.startswith("test-")}


@pytest.mark.parametrize("kind, settings, digest", PINNED, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(PINNED)])
def test_the_cloak_record_is_as_recorded_and_a_folder_resumes(tree, tmp_path, kind, settings, digest):
    out = tmp_path / "out"
    assert _cloak(kind, settings, tree, out).written == 4
    text = _record(out, tree)
    assert hashlib.sha256(text.encode()).hexdigest() == digest, text
    record = json.loads(text)
    # the record's "settings" are every field of the settings, those the key leaves out at an earlier value too
    assert set(record["settings"]) >= set(record["attack"]) - {"attack", "name", "algorithm", "seed", "surrogates",
                                                               "mode"}
    assert _cloak(kind, settings, tree, out).resumed == 4


class _Noise(CloakAttack):
    """A user's attack with its knobs in `_settings()` and no settings dataclass (as tests/test_user_registrations)."""

    kind = "test-record-noise"
    algorithm = "test-record-noise/1"

    def __init__(self, embedders, *, eps: float = 8.0, **kw):
        super().__init__(embedders, **kw)
        self.eps = float(eps)

    def _settings(self):
        return {"eps": self.eps}

    def _attack_batch(self, x, generators):
        noise = self.uniform_noise(generators, x.shape[1:], -self.eps / 255, self.eps / 255, x.device)
        return (x + noise).clamp(0, 1), {}


def test_a_users_attack_without_a_settings_dataclass_records_none_and_keys_its_knobs(tree, tmp_path):
    out = tmp_path / "out"
    assert cloak_folder(tree, out, _Noise([tiny_embedder()], eps=4.0, device="cpu"), progress=False).written == 4
    record = json.loads(_record(out, tree))
    assert record["settings"] is None and record["attack"]["eps"] == 4.0


@pytest.mark.parametrize("kind", sorted({kind for kind, *_ in PINNED}))
def test_the_key_knobs_are_the_recorded_settings_and_only_fawkes_adds_its_mode(kind):
    """The record's "settings" are the one home of an attack's knobs; the cache key's (`_settings()`, before the
    EARLIER values are left out) are those and the knobs kept outside the settings dataclass: Fawkes' mode alone."""
    attack = create_attack(kind, embedders=[tiny_embedder()], device="cpu")
    extra = {"mode": "high"} if kind == "fawkes" else {}
    assert attack._settings() == {**extra, **attack.recorded_settings()}
    assert list(attack._settings())[: len(extra)] == list(extra)
