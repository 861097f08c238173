"""Is the purifier idempotent? Embedding cosines after purifying once, twice and three times.

    python docs/studies/2026-11-27-purify-twice/bench_purify_twice.py [--weights CKPT] [--data DIR] [--users A,B,...] [--attack-seed N]

Natural chips: the first chip of the first 6 identities with >= 10 chips (held out from the shipped
purifier's training). Cloaked chips: every LowKey-ensemble cloak (LowKey as released against dlib +
SFace) already in the cloak cache for the named users' chips (made by `puface reproduce
lfw-lowkey-ensemble`; nothing is cloaked here). Reported: the mean cosine to the natural
chip's embedding (dlib-resnet29 and SFace) of x, P(x), P(P(x)), P(P(P(x))), and the MSE to the natural
chip. Prints JSON; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

USERS = "Angelina_Jolie,Laura_Bush,Trent_Lott,Muhammad_Ali"  # four of the seed-0 ensemble grid's users


def cosines(models: dict, ref: torch.Tensor, xs: list[torch.Tensor]) -> dict[str, list[float]]:
    out = {}
    with torch.no_grad():
        for name, m in models.items():
            e0 = F.normalize(m(ref), dim=1)
            out[name] = [round((e0 * F.normalize(m(x), dim=1)).sum(1).mean().item(), 4) for x in xs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="purifier checkpoint (default: the shipped one)")
    ap.add_argument("--data", type=Path, default=Path("$PUFACE_DATA/lfw-chips150"))
    ap.add_argument("--users", default=USERS, help="identities whose cached LowKey-ensemble cloaks to use")
    ap.add_argument("--attack-seed", type=int, default=0, help="the experiment seed the cloaks were made with (`--seed`)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from puface.attacks import create_attack
    from puface.attacks.cache import CloakCache
    from puface.utils.errors import CloakNotCachedError
    from puface.io.images import read_image
    from puface.utils.images import image_to_tensor
    from puface.models import create_embedder
    from puface.purifier import Purifier, default_weights_path

    t0 = time.perf_counter()
    torch.manual_seed(0)
    weights = args.weights or str(default_weights_path())
    p = Purifier.load(weights).eval()
    models = {"dlib-resnet29": create_embedder("dlib-resnet29"), "sface": create_embedder("sface")}

    def passes(x: torch.Tensor, n: int = 3) -> list[torch.Tensor]:
        out = [x]
        with torch.no_grad():
            for _ in range(n):
                out.append(p(out[-1]))
        return out

    def row(natural: torch.Tensor, inputs: torch.Tensor) -> dict:
        """Cosines and MSE to `natural` of the inputs purified 0-3 times."""
        xs = passes(inputs)
        return {"n": len(natural), "cos": cosines(models, natural, xs),
                "mse": [round(((natural - x) ** 2).mean().item(), 6) for x in xs]}

    result: dict = {"weights": weights, "rows": {}}
    big = sorted(d for d in args.data.iterdir() if d.is_dir() and sum(1 for _ in d.iterdir()) >= 10)[:6]
    natural = torch.stack([image_to_tensor(read_image(sorted(d.iterdir())[0])) for d in big])
    result["rows"]["natural"] = row(natural, natural)

    atk = create_attack("lowkey", embedders=["dlib-resnet29", "sface"], seed=args.attack_seed)
    cache = CloakCache(cached_only=True)
    pairs = []
    for user in [u.strip() for u in args.users.split(",") if u.strip()]:
        for f in sorted((args.data / user).iterdir()):
            try:
                c, _, _ = cache.cloak(atk, [f], progress=False)
            except CloakNotCachedError:
                continue
            pairs.append((image_to_tensor(read_image(f)), c[0]))
    if not pairs:
        raise SystemExit("no cached LowKey-ensemble cloaks for those users; run `puface reproduce "
                         "lfw-lowkey-ensemble` first")
    result["rows"]["lowkey-ensemble"] = row(torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs]))
    result["columns"] = ["input", "purified once", "twice", "three times"]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
