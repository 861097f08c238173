"""An independent numpy (float64) reference for TensorFlow.js graph models: the ops puface's
`models.tfjs_import` runs, written from TensorFlow's definitions (NHWC, SAME padding with the extra pixel
after), for parity tests."""

from __future__ import annotations

import base64

import numpy as np


def _ints(attr, key):
    return [int(i) for i in attr.get(key, {}).get("list", {}).get("i", [])]


def _strs(attr, key):
    return [base64.b64decode(s).decode() for s in attr.get(key, {}).get("list", {}).get("s", [])]


def _pad_same(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv(x, w, attr, depthwise):
    s = (_ints(attr, "strides") or [1, 1, 1, 1])[1]
    kh, kw = w.shape[:2]
    if base64.b64decode(attr["padding"]["s"]).decode() == "SAME":
        (top, bottom), (left, right) = _pad_same(x.shape[1], kh, s), _pad_same(x.shape[2], kw, s)
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::s, ::s]  # N,H',W',C,kh,kw
    if depthwise:
        y = np.einsum("nhwcij,ijcm->nhwcm", win, w)
        return y.reshape(*y.shape[:3], -1)
    return np.einsum("nhwcij,ijco->nhwo", win, w)


def run(nodes, weights, x_nhwc, output=None):
    vals = {}
    for n in nodes:
        if n["op"] == "Const":
            vals[n["name"]] = weights[n["name"]].astype(np.float64)
    for n in nodes:
        op, attr = n["op"], n.get("attr", {})
        if op == "Const":
            continue
        if op == "Placeholder":
            vals[n["name"]] = x_nhwc.astype(np.float64)
            continue
        a = [vals[i.split(":")[0]] for i in n.get("input", [])]
        if op in ("_FusedConv2D", "Conv2D", "FusedDepthwiseConv2dNative", "DepthwiseConv2dNative"):
            y = conv(a[0], a[1], attr, "Depthwise" in op)
            for k, f in enumerate(_strs(attr, "fused_ops")):
                y = y + a[2 + k] if f == "BiasAdd" else (np.maximum(y, 0) if f == "Relu" else np.clip(y, 0, 6))
        elif op == "MatMul":
            y = a[0] @ a[1]
        elif op in ("Add", "AddV2", "BiasAdd"):
            y = a[0] + a[1]
        elif op == "Sub":
            y = a[0] - a[1]
        elif op == "Mul":
            y = a[0] * a[1]
        elif op == "Relu":
            y = np.maximum(a[0], 0)
        elif op == "Abs":
            y = np.abs(a[0])
        elif op == "Maximum":
            y = np.maximum(a[0], a[1])
        elif op == "Minimum":
            y = np.minimum(a[0], a[1])
        elif op == "Square":
            y = a[0] ** 2
        elif op == "Rsqrt":
            y = 1 / np.sqrt(a[0])
        elif op == "Sum":
            y = a[0].sum(axis=tuple(int(d) for d in np.ravel(a[1])), keepdims=bool(attr.get("keep_dims", {}).get("b")))
        elif op == "Squeeze":
            y = np.squeeze(a[0], axis=tuple(_ints(attr, "squeeze_dims")))
        elif op == "Reshape":
            y = a[0].reshape([len(a[0]) if i == 0 and d == -1 else int(d) for i, d in enumerate(np.ravel(a[1]))])
        elif op == "Pad":
            y = np.pad(a[0], [tuple(int(v) for v in p) for p in a[1].reshape(-1, 2)])
        else:
            raise NotImplementedError(op)
        vals[n["name"]] = y
    return vals[output or [n for n in nodes if n["op"] != "Const"][-1]["name"]]
