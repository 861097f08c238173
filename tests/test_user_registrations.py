"""A user's own defense and attack, registered from their own code as docs/ARCHITECTURE.md says, then used by name
in a spec and in an experiment config run from Python."""

from __future__ import annotations

import pytest
import torch

from evaluation_helpers import EXPERIMENT_COLOURS_TOML, STANDIN_EMBEDDER, register_standins, write_colour_faces

DEFENSE_SOURCE = '''
import torch
from puface.defenses import Defense, register


@register
class Posterize(Defense):
    """posterize: round every channel to `levels` grey levels"""

    kind = "test-posterize"

    def __init__(self, levels: int = 16):
        super().__init__(levels=levels)

    @property
    def name(self) -> str:
        return f"posterize-{self.params['levels']}"

    def _apply(self, images):
        n = self.params["levels"] - 1
        return torch.round(images * n) / n
'''


@pytest.fixture()
def own_entries():
    """Run the user's definitions in a module namespace of their own, and take them out of the registries after the
    test (tests/test_contracts.py checks every registered entry)."""
    from puface.attacks import ATTACKS
    from puface.defenses import DEFENSES

    namespace = {"__name__": "my_defenses"}
    exec(compile(DEFENSE_SOURCE, "my_defenses.py", "exec"), namespace)
    yield namespace
    for registry, name in ((DEFENSES, "test-posterize"), (ATTACKS, "test-uniform-noise")):
        registry._entries.pop(name, None)


def _register_attack():
    """The user's attack, uniform noise: a `CloakAttack` subclass and its registered factory, as ARCHITECTURE says."""
    from puface.attacks import ATTACKS, CloakAttack

    class UniformNoise(CloakAttack):
        kind = "test-uniform-noise"
        algorithm = "test-uniform-noise/1"

        def __init__(self, embedders=None, *, eps: float = 8.0, **kw):
            super().__init__(embedders or [STANDIN_EMBEDDER], **kw)
            self.eps = float(eps)

        def _settings(self):
            return {"eps": self.eps}

        def _attack_batch(self, x, generators):
            noise = self.uniform_noise(generators, x.shape[1:], -self.eps / 255, self.eps / 255, x.device)
            return (x + noise).clamp(0, 1), {}

    @ATTACKS.register("test-uniform-noise", summary="uniform noise (a user's example)", fast={})
    def _uniform_noise(**kw):
        return UniformNoise(**kw)


def test_a_users_defense_registers_from_puface_defenses_and_again_when_rerun(own_entries):
    """`from puface.defenses import register` was an ImportError (register lived in puface.defenses.registry only), and
    running the same definition again (a notebook cell, a script re-run in one session) was a ValueError 'registered
    twice'; a different definition under a taken name is still refused, naming both."""
    import puface

    d = puface.create_defense("test-posterize:levels=5+jpeg:quality=90")
    assert d.name == "posterize-5+jpeg-q90"
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(puface.create_defense("test-posterize:levels=2")(x), (x >= 0.5).float())
    exec(compile(DEFENSE_SOURCE, "my_defenses.py", "exec"), {"__name__": "my_defenses"})  # the cell run again
    assert puface.create_defense("test-posterize:levels=2")(x).unique().tolist() == [0.0, 1.0]
    other = DEFENSE_SOURCE.replace("kind = \"test-posterize\"", "kind = \"jpeg\"")
    with pytest.raises(ValueError, match=r"defense 'jpeg' registered twice: by puface\.defenses\.pixel\.JPEG and by "
                                         r"other_module\.Posterize; give the new one another name"):
        exec(compile(other, "other_module.py", "exec"), {"__name__": "other_module"})


def test_a_users_attack_and_defense_run_in_a_config(own_entries, tmp_path):
    import puface

    register_standins()
    _register_attack()
    _register_attack()  # registered again by the same code: replaced, not refused
    root = write_colour_faces(tmp_path / "data")
    text = EXPERIMENT_COLOURS_TOML.replace("{root}", str(root))
    text = text.replace(
        '[[defenses]]\nname = "bitdepth"\nbits = 4', '[[defenses]]\nname = "test-posterize"\nlevels = 4'
    )
    text = text.replace(
        "[victims]",
        f'[[attacks]]\nname = "test-uniform-noise"\neps = 4.0\nembedders = ["{STANDIN_EMBEDDER}"]\n\n[victims]',
    )
    (tmp_path / "own.toml").write_text(text)
    res = puface.run_experiment(tmp_path / "own.toml", out=tmp_path / "out")
    cells = {(r["attack"], r["defense"]) for r in res.summary}
    assert ("test-uniform-noise", "posterize-4") in cells and ("checker", "posterize-4") in cells
    assert (tmp_path / "out" / "report.html").is_file()
