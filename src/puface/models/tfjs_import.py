"""TensorFlow.js graph models (`model.json` + weight shards, as npm packages ship them) as torch modules,
without TensorFlow: the graph is run op by op (`TFJSGraphNet`), differentiably, in float32.

    >>> net = load_tfjs_graph("models/mobilefacenet.json")           # doctest: +SKIP
    >>> emb = net(images_nchw)                                        # (N, 3, H, W) -> the graph's output

Supported ops (what face-embedding graphs use): Const, Placeholder, Identity, Conv2D, _FusedConv2D and
(Fused)DepthwiseConv2dNative (NHWC, SAME / VALID / explicit padding, fused BiasAdd, Relu, Relu6), BiasAdd,
Relu, Relu6, Prelu, Abs, Neg, Add, AddV2, Sub, Mul, RealDiv, Maximum, Minimum, Square, Sqrt, Rsqrt, Sum,
Mean (reduction), Squeeze, Reshape, MatMul / _FusedMatMul, Pad. Anything else is an error naming the op.
Only the nodes the chosen output needs are run and checked, so a multi-head graph (an embedding beside age
and gender heads, as HSE faceres) loads with `output="global_pooling/Mean"`.
Weights may be float32 or float16, or uint8/uint16-quantised (dequantised on load).

`tools/export_tfjs_embedder.py` turns such a graph into a TorchScript file with a sidecar, the form
`puface` takes a user's own face model in (`models.custom`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import PufaceError

__all__ = ["TFJSGraphNet", "load_tfjs_graph", "read_tfjs_model", "tf_same_padding"]


def _s(attr: dict, key: str, default: str = "") -> str:
    v = attr.get(key, {}).get("s")
    return base64.b64decode(v).decode() if v else default


def _ints(attr: dict, key: str) -> list[int]:
    return [int(i) for i in attr.get(key, {}).get("list", {}).get("i", [])]


def read_tfjs_model(model_json: str | Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(graph nodes, {weight name: array}) of a TF.js graph model; shards are read from the json's folder."""
    path = Path(model_json)
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
        nodes = model["modelTopology"]["node"]
        manifest = model["weightsManifest"]
    except (OSError, ValueError, KeyError) as e:
        raise PufaceError(f"{path}: not a TensorFlow.js graph model ({e})") from None
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        blob = b"".join((path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                qdt = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}[q["dtype"]]
                raw = np.frombuffer(blob, dtype=qdt, count=n, offset=offset)
                offset += raw.nbytes
                arr = (
                    raw.astype(np.float32)
                    if q["dtype"] == "float16"
                    else raw.astype(np.float32) * q["scale"] + q["min"]
                )
            else:
                dt = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
                arr = np.frombuffer(blob, dtype=dt, count=n, offset=offset)
                offset += arr.nbytes
            weights[w["name"]] = arr.reshape(shape).copy()
    return nodes, weights


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) along one axis: the extra pixel goes after."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _conv(x: Tensor, w: Tensor, attr: dict, depthwise: bool) -> Tensor:
    """NHWC conv (or depthwise conv) with TF's padding semantics; w is (kh, kw, in, out|multiplier)."""
    sh, sw = (_ints(attr, "strides") or [1, 1, 1, 1])[1:3]
    dh, dw = (_ints(attr, "dilations") or [1, 1, 1, 1])[1:3]
    if _s(attr, "data_format", "NHWC") != "NHWC":
        raise PufaceError("only NHWC graphs are supported")
    kh, kw = w.shape[0], w.shape[1]
    xc = x.permute(0, 3, 1, 2)
    padding = _s(attr, "padding", "VALID")
    if padding == "SAME":
        pt, pb = tf_same_padding(xc.shape[2], kh, sh, dh)
        pl, pr = tf_same_padding(xc.shape[3], kw, sw, dw)
        xc = F.pad(xc, [pl, pr, pt, pb])
    elif padding == "EXPLICIT":
        p = _ints(attr, "explicit_paddings")
        xc = F.pad(xc, [p[4], p[5], p[2], p[3]])
    if depthwise:
        cin, mult = w.shape[2], w.shape[3]
        weight = w.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        y = F.conv2d(xc, weight, stride=(sh, sw), dilation=(dh, dw), groups=cin)
    else:
        y = F.conv2d(xc, w.permute(3, 2, 0, 1), stride=(sh, sw), dilation=(dh, dw))
    return y.permute(0, 2, 3, 1)


_FUSED_ACT = {"Relu": F.relu, "Relu6": lambda t: t.clamp(0, 6)}


class TFJSGraphNet(nn.Module):
    """A TF.js graph run op by op. Constants are buffers (`consts.<i>`), so `.to(device)`, state dicts and
    fingerprints work as for any module. Input: (N, C, H, W) float (permuted to the graph's NHWC inside);
    output: the graph's output node (`output`, default the last node)."""

    def __init__(self, nodes: list[dict], weights: dict[str, np.ndarray], output: str | None = None):
        super().__init__()
        self.output = output or [n for n in nodes if n["op"] != "Const"][-1]["name"]
        nodes = _ancestors(
            nodes, self.output
        )  # heads the output does not need (age, gender...) and their weights are left out
        self.nodes = [n for n in nodes if n["op"] != "Const"]
        self._const_index: dict[str, int] = {}
        for n in nodes:
            if n["op"] == "Const":
                if n["name"] not in weights:
                    raise PufaceError(f"constant {n['name']} has no weights in the manifest")
                self._const_index[n["name"]] = len(self._const_index)
                arr = weights[n["name"]]
                self.register_buffer(f"const_{len(self._const_index) - 1}", torch.from_numpy(np.ascontiguousarray(arr)))
        known = {
            "Placeholder",
            "Identity",
            "Conv2D",
            "_FusedConv2D",
            "DepthwiseConv2dNative",
            "FusedDepthwiseConv2dNative",
            "BiasAdd",
            "Relu",
            "Relu6",
            "Prelu",
            "Abs",
            "Neg",
            "Add",
            "AddV2",
            "Sub",
            "Mul",
            "RealDiv",
            "Maximum",
            "Minimum",
            "Square",
            "Sqrt",
            "Rsqrt",
            "Sum",
            "Mean",
            "Squeeze",
            "Reshape",
            "MatMul",
            "_FusedMatMul",
            "Pad",
        }
        for n in self.nodes:
            if n["op"] not in known:
                raise PufaceError(f"unsupported TF.js op {n['op']} (node {n['name']})")
        self.input_name = next(n["name"] for n in self.nodes if n["op"] == "Placeholder")

    def _const(self, name: str) -> Tensor | None:
        i = self._const_index.get(name.split(":")[0])
        return None if i is None else getattr(self, f"const_{i}")

    def forward(self, x: Tensor) -> Tensor:
        vals: dict[str, Tensor] = {self.input_name: x.permute(0, 2, 3, 1)}

        def get(name: str) -> Tensor:
            name = name.split(":")[0].lstrip("^")
            c = self._const(name)
            return c if c is not None else vals[name]

        for n in self.nodes:
            op, attr = n["op"], n.get("attr", {})
            if op == "Placeholder":
                continue
            ins = [get(i) for i in n.get("input", []) if not i.startswith("^")]
            if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
                y = _conv(ins[0], ins[1].float(), attr, depthwise="Depthwise" in op)
                for k, fused in enumerate(_s_list(attr, "fused_ops")):
                    if fused == "BiasAdd":
                        y = y + ins[2 + k]
                    elif fused in _FUSED_ACT:
                        y = _FUSED_ACT[fused](y)
                    elif fused == "Prelu":
                        y = torch.where(y > 0, y, y * ins[2 + k])
                    else:
                        raise PufaceError(f"unsupported fused op {fused} in {n['name']}")
            elif op in ("MatMul", "_FusedMatMul"):
                a, b = ins[0], ins[1]
                if attr.get("transpose_a", {}).get("b"):
                    a = a.T
                if attr.get("transpose_b", {}).get("b"):
                    b = b.T
                y = a @ b
                for k, fused in enumerate(_s_list(attr, "fused_ops")):
                    y = y + ins[2 + k] if fused == "BiasAdd" else _FUSED_ACT[fused](y)
            elif op == "Identity":
                y = ins[0]
            elif op == "BiasAdd":
                y = ins[0] + ins[1]
            elif op == "Relu":
                y = F.relu(ins[0])
            elif op == "Relu6":
                y = ins[0].clamp(0, 6)
            elif op == "Prelu":
                y = torch.where(ins[0] > 0, ins[0], ins[0] * ins[1])
            elif op == "Abs":
                y = ins[0].abs()
            elif op == "Neg":
                y = -ins[0]
            elif op in ("Add", "AddV2"):
                y = ins[0] + ins[1]
            elif op == "Sub":
                y = ins[0] - ins[1]
            elif op == "Mul":
                y = ins[0] * ins[1]
            elif op == "RealDiv":
                y = ins[0] / ins[1]
            elif op == "Maximum":
                y = torch.maximum(ins[0], ins[1].to(ins[0].dtype))
            elif op == "Minimum":
                y = torch.minimum(ins[0], ins[1].to(ins[0].dtype))
            elif op == "Square":
                y = ins[0] * ins[0]
            elif op == "Sqrt":
                y = ins[0].sqrt()
            elif op == "Rsqrt":
                y = ins[0].rsqrt()
            elif op in ("Sum", "Mean"):
                dims = [int(d) for d in ins[1].reshape(-1).tolist()]
                keep = bool(attr.get("keep_dims", {}).get("b", False))
                y = ins[0].sum(dim=dims, keepdim=keep) if op == "Sum" else ins[0].mean(dim=dims, keepdim=keep)
            elif op == "Squeeze":
                dims = _ints(attr, "squeeze_dims")
                y = ins[0]
                for d in sorted(dims, reverse=True):
                    y = y.squeeze(d)
            elif op == "Reshape":
                shape = [int(d) for d in ins[1].reshape(-1).tolist()]
                y = ins[0].reshape([ins[0].shape[0] if i == 0 and d == -1 else d for i, d in enumerate(shape)])
            else:  # Pad
                p = ins[1].reshape(-1, 2).tolist()
                flat: list[int] = []
                for before, after in reversed(p):
                    flat += [int(before), int(after)]
                y = F.pad(ins[0], flat)
            vals[n["name"]] = y
        out = vals[self.output]
        return out.permute(0, 3, 1, 2) if out.ndim == 4 else out


def _ancestors(nodes: list[dict], output: str) -> list[dict]:
    """The nodes `output` depends on (itself included), in the graph's order."""
    by_name = {n["name"]: n for n in nodes}
    if output not in by_name:
        raise PufaceError(f"no node named {output} in the graph")
    need, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name in need or name not in by_name:
            continue
        need.add(name)
        todo += [i.split(":")[0].lstrip("^") for i in by_name[name].get("input", [])]
    return [n for n in nodes if n["name"] in need]


def _s_list(attr: dict, key: str) -> list[str]:
    return [base64.b64decode(s).decode() for s in attr.get(key, {}).get("list", {}).get("s", [])]


def load_tfjs_graph(model_json: str | Path, output: str | None = None) -> TFJSGraphNet:
    """A TF.js graph model file as a `TFJSGraphNet` in eval mode (see the module docstring)."""
    nodes, weights = read_tfjs_model(model_json)
    return TFJSGraphNet(nodes, weights, output).eval()


def graph_summary(model_json: str | Path) -> dict[str, Any]:
    """Input shape and op counts of a TF.js graph model (for messages and tools)."""
    nodes, _ = read_tfjs_model(model_json)
    ops: dict[str, int] = {}
    for n in nodes:
        ops[n["op"]] = ops.get(n["op"], 0) + 1
    inp = next((n for n in nodes if n["op"] == "Placeholder"), None)
    dims = [
        int(d.get("size", -1)) for d in (inp or {}).get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
    ]
    return {"input": dims, "ops": ops}
