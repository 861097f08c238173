"""OPOM against dlib on the johns chips, per person: the shared-pattern score T (what `unmask` tests), the first
test's energy ratio R, and the fine texture (rms of the 3x3 high-pass, grey levels) of the natural photos and of the
mask, on the training photos of the split `puface evaluate` draws (seed 0; 8 per person).

    python docs/studies/2026-12-05-universal-masks/johns_opom.py --out johns-opom.json

OPOM cloaks come from the cloak cache (`puface evaluate --users 1 --attack opom ...` fills it) or are made here
(a few seconds per person). Prints JSON; --out FILE also writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from puface.attacks import create_attack
    from puface.attacks.cache import CloakCache
    from puface.data.johns import fetch_johns
    from puface.defenses import create_defense
    from puface.defenses.shared import _by_content, highpass, shared_pattern_score
    from puface.evaluation.data import EvaluationData
    from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec
    from puface.models.registry import load_embedder
    from puface.utils.images import to_float

    data = EvaluationData.prepare(fetch_johns(), seed=args.seed)
    people = sorted(set(data.train.labels.tolist()))
    proto = Protocol(data, people, [AttackSpec("opom", create_attack("opom", seed=args.seed), surrogates=("dlib-resnet29",))],
                     {"dlib": load_embedder("dlib-resnet29")}, [TrainerSpec("nn", "nn")], {"none": create_defense("none")},
                     cloak_cache=CloakCache(), progress=False)

    def energy_ratio(x):
        h = highpass(x, 3)
        return float(h.mean(0).pow(2).mean().sqrt() / (h.pow(2).mean().sqrt() / len(x) ** 0.5))

    out = {}
    for person in people:
        cloaked = to_float(_by_content(proto.cloak(proto.attacks[0], person))[:8])
        natural = to_float(data.train.images[data.train.rows_of(person)])
        nat8 = to_float(_by_content(data.train.images[data.train.rows_of(person)])[:8])
        out[person] = {
            "photos": len(natural),
            "T cloaked": round(shared_pattern_score(cloaked), 3), "T natural": round(shared_pattern_score(nat8), 3),
            "R cloaked": round(energy_ratio(cloaked), 3), "R natural": round(energy_ratio(nat8), 3),
            "fine texture natural (grey levels)": round(float(highpass(natural, 3).pow(2).mean().sqrt() * 255), 2),
            "fine part of the mask (grey levels)": round(float(highpass(to_float(proto.cloak(proto.attacks[0], person)) - natural, 3)
                                                               .pow(2).mean().sqrt() * 255), 2),
        }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
