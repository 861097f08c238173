"""Translate an ONNX graph into a differentiable PyTorch `nn.Module` (no onnx2torch, no torchvision).

    >>> net = OnnxModule("arcface_r50.onnx")          # doctest: +SKIP
    >>> emb = net(x)  # x: float32 (N, 3, 112, 112) -> (N, 512), differentiable wrt x   # doctest: +SKIP

What the translation does, once, at construction:

* checks every operator against `SUPPORTED_OPS` and raises `UnsupportedOperatorError` naming all
  missing operators and the file;
* turns initializers into float32 tensors (integer tensors stay integer) and *folds* every node whose
  inputs are all constant: `DequantizeLinear` (per-tensor, per-axis and blocked) yields fp32 weights,
  weight `Reshape`s and shape arithmetic disappear;
* makes `Conv` (+ a following `BatchNormalization`, folded in), `Gemm` (+ a following BatchNormalization,
  folded in) and `MatMul` with a constant matrix, `BatchNormalization` and `PRelu` real `nn.Module`s
  (`Conv`, `Linear`, `ChannelAffine`, `PReLU`); other float constants become buffers (so `state_dict()`
  holds every weight and `.to(device)` moves them), integer constants (shapes, indices) stay on the CPU;
* keeps the rest as small op modules run in topological order.

The module computes in float32, accepts any batch size (in a graph exported with a fixed batch of 1, a
`Reshape` target's leading 1 is read as the batch, see `_reshape`), and every op is an ordinary torch op,
so gradients flow to the inputs. Graph inputs that no node uses (e.g. stale weights left by an MXNet
export) are dropped; graph inputs that have an initializer are constants.
"""

from __future__ import annotations

import math
import re
from functools import reduce
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import PufaceError

__all__ = [
    "OnnxImportError",
    "UnsupportedOperatorError",
    "OnnxModule",
    "SUPPORTED_OPS",
    "load_onnx_model",
    "dequantize_linear",
    "fold_batchnorm",
]


class OnnxImportError(PufaceError):
    """An ONNX file could not be read or translated; the message names the file (and the node)."""


class UnsupportedOperatorError(OnnxImportError):
    """The graph uses operators the translator does not implement. `ops` lists them, `path` is the file."""

    def __init__(self, ops: Sequence[str], path: str | Path | None):
        self.ops = sorted(set(ops))
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}unsupported ONNX operator(s): {', '.join(self.ops)} "
            f"(puface translates {len(SUPPORTED_OPS)} standard operators, "
            "listed in puface.models.onnx_import.SUPPORTED_OPS); "
            "export the model with those, or save it as TorchScript / torch.export instead"
        )


# --------------------------------------------------------------------------------------- loading


def load_onnx_model(path: str | Path) -> Any:
    """Read and check an ONNX file; clear `OnnxImportError`s for a missing or non-ONNX file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, external data missing, ...
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:
        raise OnnxImportError(f"{path}: not an ONNX model (the graph has no nodes)")
    return model


_ONNX_TO_TORCH_DTYPE = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.int32, 13: torch.int64, 16: torch.bfloat16,
}  # 12/13 (uint32/uint64) widened to signed


def _to_tensor(arr: np.ndarray) -> Tensor:
    """numpy (any ONNX dtype) -> torch; floats become float32, unsigned ints widen when torch lacks them."""
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype in (np.uint16, np.uint32, np.uint64):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "U" or arr.dtype == object:
        raise OnnxImportError(f"string tensors are not supported (dtype {arr.dtype})")
    return torch.from_numpy(np.array(arr, copy=True))


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == a.TENSOR:
            v = _to_tensor(numpy_helper.to_array(v))
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


# ------------------------------------------------------------------------------- shared helpers


def dequantize_linear(
    x: Tensor, scale: Tensor, zero_point: Tensor | None = None, axis: int = 1, block_size: int = 0
) -> Tensor:
    """ONNX DequantizeLinear: (x - zero_point) * scale, in float32.

    Per-tensor when `scale` has one element, per-axis when it is 1-D along `axis`, blocked when
    `block_size` > 0: then `scale`/`zero_point` have x's rank and are repeated `block_size` times along
    `axis` and trimmed to x's size there.
    """
    xf = x.to(torch.float32)
    s = scale.to(torch.float32)
    z = zero_point.to(torch.float32) if zero_point is not None else None
    if block_size and block_size > 0:
        ax = axis % x.ndim
        n = x.shape[ax]
        s = s.repeat_interleave(block_size, dim=ax).narrow(ax, 0, n)
        if z is not None:
            z = z.repeat_interleave(block_size, dim=ax).narrow(ax, 0, n)
    elif s.numel() > 1:  # per-axis: 1-D along `axis`
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        s = s.reshape(shape)
        if z is not None:
            z = z.reshape(shape)
    else:
        s = s.reshape(())
        if z is not None:
            z = z.reshape(())
    return (xf - z) * s if z is not None else xf * s


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Fold an inference BatchNorm over the output channels (dim 0 of `weight`) into weight and bias."""
    a = gamma / torch.sqrt(var + eps)
    w = weight * a.reshape([-1] + [1] * (weight.ndim - 1))
    b = (bias if bias is not None else torch.zeros_like(mean)) * a + (beta - mean * a)
    return w, b


_fold_bn = fold_batchnorm  # (OnnxModule's `fold_batchnorm` flag shadows the name)


def _ints(t: Tensor | Sequence[int]) -> list[int]:
    """A 1-D integer tensor (a shape, pads, axes...) or a sequence as a list of ints."""
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _same_pads(
    in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], upper: bool
) -> list[int]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER -> explicit [begin..., end...] pads."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over the last k dims -> F.pad's order."""
    k = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(k)):
        out += [pads[i], pads[i + k]]
    return out


def _window_geometry(a: dict, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """strides, dilations, explicit pads ([begins, ends]) of a Conv / pooling node for input `x`."""
    k = len(kernel)
    strides = list(a.get("strides") or [1] * k)
    dil = list(a.get("dilations") or [1] * k)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x.shape[-k:], kernel, strides, dil, auto == "SAME_UPPER")
    elif auto == "VALID":
        pads = [0] * (2 * k)
    else:
        pads = list(a.get("pads") or [0] * (2 * k))
    return strides, dil, pads


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# ------------------------------------------------------------------------------- module ops


class Conv(nn.Module):
    """ONNX Conv (1-3-D, groups, dilations, strides, explicit / asymmetric / auto pads) as an nn.Module.

    `weight` (C_out, C_in/groups, *k) and `bias` (C_out,) are parameters; a BatchNorm that followed the
    Conv in the graph is already folded into them.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, attrs: dict):
        super().__init__()
        self.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False) if bias is not None else None
        k = weight.ndim - 2
        if k not in _CONV:
            raise OnnxImportError(f"Conv with {k} spatial dims is not supported")
        self.kernel = list(weight.shape[2:])
        self.groups = int(attrs.get("group", 1))
        self.attrs = {key: attrs[key] for key in ("strides", "dilations", "pads", "auto_pad") if key in attrs}

    def forward(self, x: Tensor) -> Tensor:
        return _conv_apply(x, self.weight, self.bias, self.attrs, self.groups)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, groups={self.groups}, {self.attrs}"


def _conv_apply(x: Tensor, w: Tensor, b: Tensor | None, a: dict, groups: int) -> Tensor:
    k = w.ndim - 2
    strides, dil, pads = _window_geometry(a, x, list(w.shape[2:]))
    if pads[:k] == pads[k:]:
        padding: Any = pads[:k]
    else:
        x = F.pad(x, _torch_pad(pads))
        padding = 0
    return _CONV[k](x, w, b, strides, padding, dil, groups)


class Linear(nn.Module):
    """ONNX Gemm (alpha, beta, transA/transB folded in) or MatMul with a constant 2-D matrix:
    y = x @ weight.T + bias over the last dim of x; `weight` is (out, in)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, trans_a: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False) if bias is not None else None
        self.trans_a = trans_a

    def forward(self, x: Tensor) -> Tensor:
        if self.trans_a:
            x = x.transpose(0, 1)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, bias={self.bias is not None}"


class ChannelAffine(nn.Module):
    """Inference BatchNormalization, y = x * scale + shift over dim 1 of x (N, C, ...)."""

    scale: Tensor  # buffers
    shift: Tensor

    def __init__(self, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor, eps: float):
        super().__init__()
        a = gamma / torch.sqrt(var + eps)
        self.register_buffer("scale", a.float().contiguous())
        self.register_buffer("shift", (beta - mean * a).float().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.ndim - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class PReLU(nn.Module):
    """ONNX PRelu with a constant slope: x if x >= 0 else slope * x (slope broadcast numpy-style).
    A per-channel slope of shape (C,1,...,1) runs as `F.prelu`."""

    slope: Tensor  # buffer

    def __init__(self, slope: Tensor):
        super().__init__()
        self.register_buffer("slope", slope.float().contiguous())
        s = slope.shape
        self.per_channel = len(s) >= 1 and all(d == 1 for d in s[1:]) and s[0] > 1

    def forward(self, x: Tensor) -> Tensor:
        if self.per_channel and x.ndim == len(self.slope.shape) + 1 and x.shape[1] == self.slope.shape[0]:
            return F.prelu(x, self.slope.reshape(-1))
        if self.slope.numel() == 1:
            return F.prelu(x, self.slope.reshape(1))
        return torch.where(x >= 0, x, x * self.slope)


# ------------------------------------------------------------------------------- functional ops
# Each op: fn(inputs: list[Tensor | None], attrs: dict, opset: int) -> Tensor | tuple[Tensor, ...]


def _opt(xs: list, i: int) -> Tensor | None:
    return xs[i] if len(xs) > i else None


def _input_ints(xs: list, i: int, op: str) -> list[int]:
    """Input `i` of an `op` node, a required integer tensor (shape, starts, pads...), as ints;
    `OnnxImportError` when the node leaves it out or gives it the empty name."""
    t = _opt(xs, i)
    if t is None:
        raise OnnxImportError(f"{op}: required input {i} is missing")
    return _ints(t)


def _opt_ints(xs: list, i: int) -> list[int] | None:
    """Optional input `i` (axes, steps, split...) as ints, None when absent."""
    t = _opt(xs, i)
    return None if t is None else _ints(t)


def _conv(xs, a, opset):
    return _conv_apply(xs[0], xs[1], _opt(xs, 2), a, int(a.get("group", 1)))


def _batchnorm(xs, a, opset):
    if a.get("training_mode", 0):
        raise OnnxImportError("BatchNormalization with training_mode=1 is not supported")
    x, g, b, m, v = xs[:5]
    return ChannelAffine(g, b, m, v, float(a.get("epsilon", 1e-5)))(x)


def _prelu(xs, a, opset):
    x, s = xs[0], xs[1]
    return torch.where(x >= 0, x, x * s)


def _gemm(xs, a, opset):
    A, B, C = xs[0], xs[1], _opt(xs, 2)
    if a.get("transA", 0):
        A = A.transpose(0, 1)
    if a.get("transB", 0):
        B = B.transpose(0, 1)
    y = A @ B
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if C is not None:
        y = y + (C * beta if beta != 1.0 else C)
    return y


def _flatten(xs, a, opset):
    x = xs[0]
    ax = int(a.get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    lead = math.prod(x.shape[:ax])
    return x.reshape(lead, -1) if x.numel() else x.reshape(lead, math.prod(x.shape[ax:]))


def _reshape(xs, a, opset):
    """ONNX Reshape (0 copies a dim unless allowzero). In a graph exported for batch 1 (attribute
    `_batch1`, set by OnnxModule on runtime nodes), a leading literal 1 stands for the batch."""
    x, shape = xs[0], _input_ints(xs, 1, "Reshape")
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(shape)]
    if a.get("_batch1") and shape and shape[0] == 1 and x.ndim and x.shape[0] != 1:
        shape[0] = x.shape[0]
    return x.reshape(shape)


def _transpose(xs, a, opset):
    x = xs[0]
    perm = a.get("perm") or list(reversed(range(x.ndim)))
    return x.permute(*perm)


def _pool_prepare(
    x: Tensor, a: dict, kernel: list[int], fill: float
) -> tuple[Tensor, list[int], list[int], list[int], bool]:
    """Explicit padding that torch pooling cannot express is applied up front (with `fill`)."""
    strides, dil, pads = _window_geometry(a, x, kernel)
    k = len(kernel)
    symmetric = pads[:k] == pads[k:] and all(p <= kk // 2 for p, kk in zip(pads[:k], kernel))
    if symmetric:
        return x, strides, dil, pads[:k], False
    return F.pad(x, _torch_pad(pads), value=fill), strides, dil, [0] * k, True


def _maxpool(xs, a, opset):
    x = xs[0]
    if len(a.get("kernel_shape", [])) == 0:
        raise OnnxImportError("MaxPool without kernel_shape")
    if a.get("storage_order", 0):
        raise OnnxImportError("MaxPool with storage_order=1 is not supported")
    kernel = list(a["kernel_shape"])
    x, strides, dil, pad, _ = _pool_prepare(x, a, kernel, float("-inf"))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(x, kernel, strides, pad, dil, ceil_mode=bool(a.get("ceil_mode", 0)))


def _avgpool(xs, a, opset):
    x = xs[0]
    kernel = list(a["kernel_shape"])
    if any(d != 1 for d in a.get("dilations") or []):
        raise OnnxImportError("AveragePool with dilations is not supported")
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    xp, strides, _, pad, padded = _pool_prepare(x, a, kernel, 0.0)
    if not padded:
        return fn(xp, kernel, strides, pad, ceil_mode=ceil, count_include_pad=include)
    total = fn(xp, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include:
        return total
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    _, _, pads = _window_geometry(a, x, kernel)
    frac = fn(F.pad(ones, _torch_pad(pads)), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return total / frac


def _global_avgpool(xs, a, opset):
    x = xs[0]
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def _global_maxpool(xs, a, opset):
    x = xs[0]
    return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


def _concat(xs, a, opset):
    ts = [t for t in xs if t is not None]
    if ts and not all(t.dtype == ts[0].dtype for t in ts):
        ts = [t.to(ts[0].dtype) for t in ts]
    return torch.cat(ts, dim=int(a["axis"]))


def _dequantize(xs, a, opset):
    return dequantize_linear(xs[0], xs[1], _opt(xs, 2), int(a.get("axis", 1)), int(a.get("block_size", 0)))


def _constant(xs, a, opset):
    if "value" in a:
        return a["value"]
    for key, dtype in (
        ("value_float", torch.float32),
        ("value_floats", torch.float32),
        ("value_int", torch.int64),
        ("value_ints", torch.int64),
    ):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise OnnxImportError(f"Constant node with unsupported attribute(s) {sorted(a)}")


def _identity(xs, a, opset):
    return xs[0]


def _dropout(xs, a, opset):
    x = xs[0]
    return (x, torch.ones_like(x, dtype=torch.bool))


def _shape(xs, a, opset):
    shape = torch.tensor(list(xs[0].shape), dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end")
    return shape[start:end]


def _size(xs, a, opset):
    return torch.tensor(xs[0].numel(), dtype=torch.int64)


def _gather(xs, a, opset):
    x, idx = xs[0], xs[1].long()
    ax = int(a.get("axis", 0)) % x.ndim
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    out = x.index_select(ax, idx.reshape(-1).to(x.device))
    return out.reshape(tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1 :]))


def _axes(xs, a, opset, input_index: int, since: int) -> list[int] | None:
    if opset >= since:
        return _opt_ints(xs, input_index)
    return a.get("axes")


def _unsqueeze(xs, a, opset):
    x = xs[0]
    axes = _axes(xs, a, opset, 1, 13) or []
    rank = x.ndim + len(axes)
    for ax in sorted(d % rank for d in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(xs, a, opset):
    x = xs[0]
    axes = _axes(xs, a, opset, 1, 13)
    if axes is None:
        return x.squeeze()
    for ax in sorted((d % x.ndim for d in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _slice(xs, a, opset):
    x = xs[0]
    if opset >= 10:
        starts, ends = _input_ints(xs, 1, "Slice"), _input_ints(xs, 2, "Slice")
        axes = _opt_ints(xs, 3) or list(range(len(starts)))
        steps = _opt_ints(xs, 4) or [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= x.ndim
        n = x.shape[ax]
        if sp == 0:
            raise OnnxImportError("Slice with step 0")
        st = st + n if st < 0 else st
        en = en + n if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), n), min(max(en, 0), n)
            if sp == 1:
                x = x.narrow(ax, st, max(en - st, 0))
                continue
        else:
            st, en = min(max(st, 0), n - 1), min(max(en, -1), n - 1)
        idx = torch.arange(st, en, sp, device=x.device)
        x = x.index_select(ax, idx)
    return x


def _softmax_like(fn: Callable[[Tensor, int], Tensor]):
    def op(xs, a, opset):
        x = xs[0]
        if opset >= 13:
            return fn(x, int(a.get("axis", -1)))
        ax = int(a.get("axis", 1)) % x.ndim
        flat = x.reshape(math.prod(x.shape[:ax]), -1)
        return fn(flat, 1).reshape(x.shape)

    return op


def _pad(xs, a, opset):
    x = xs[0]
    if opset >= 11:
        pads = _input_ints(xs, 1, "Pad")
        fill = _opt(xs, 2)
        value = float(fill.reshape(-1)[0]) if fill is not None and fill.numel() else 0.0
        axes = _opt_ints(xs, 3)
    else:
        pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), None
    mode = a.get("mode", "constant")
    if axes is not None:  # pads only on `axes`: expand to all dims
        full = [0] * (2 * x.ndim)
        k = len(axes)
        for i, ax in enumerate(axes):
            ax %= x.ndim
            full[ax], full[ax + x.ndim] = pads[i], pads[i + k]
        pads = full
    tp = _torch_pad(pads)
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:  # drop untouched leading dims
        tp = tp[:-2]
    if mode == "constant":
        return F.pad(x, tp, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise OnnxImportError(f"Pad mode {mode!r} is not supported")
    return F.pad(x, tp, mode=torch_mode)


def _clip(xs, a, opset):
    x = xs[0]
    if opset >= 11:
        t_lo, t_hi = _opt(xs, 1), _opt(xs, 2)
        lo = float(t_lo) if t_lo is not None else None
        hi = float(t_hi) if t_hi is not None else None
    else:
        lo, hi = a.get("min"), a.get("max")
    return torch.clamp(x, min=lo, max=hi)


def _reduce(kind: str, axes_input_since: int):
    def op(xs, a, opset):
        x = xs[0]
        axes = _axes(xs, a, opset, 1, axes_input_since)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        dims = tuple(d % x.ndim for d in axes)
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=dims, keepdim=keep)
        if kind == "max":
            return x.amax(dim=dims, keepdim=keep)
        if kind == "min":
            return x.amin(dim=dims, keepdim=keep)
        if kind == "sumsquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if kind == "l1":
            return x.abs().sum(dim=dims, keepdim=keep)
        raise AssertionError(kind)

    return op


def _lpnorm(xs, a, opset):
    x = xs[0]
    p = int(a.get("p", 2))
    return x / torch.linalg.vector_norm(x, ord=p, dim=int(a.get("axis", -1)), keepdim=True)


def _cast(xs, a, opset):
    dtype = _ONNX_TO_TORCH_DTYPE.get(int(a["to"]))
    if dtype is None:
        raise OnnxImportError(f"Cast to ONNX dtype {a['to']} is not supported")
    if dtype in (torch.float16, torch.bfloat16, torch.float64):
        dtype = torch.float32  # the translated module computes in float32
    return xs[0].to(dtype)


def _constant_of_shape(xs, a, opset):
    value = a.get("value")
    shape = _input_ints(xs, 0, "ConstantOfShape")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype)


def _expand(xs, a, opset):
    x, shape = xs[0], _input_ints(xs, 1, "Expand")
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


def _split(xs, a, opset, n_outputs: int = 1):
    x = xs[0]
    ax = int(a.get("axis", 0)) % x.ndim
    split = _opt_ints(xs, 1) if opset >= 13 else a.get("split")
    if not split:
        k = int(a.get("num_outputs", n_outputs))
        size = math.ceil(x.shape[ax] / k)
        split = [min(size, x.shape[ax] - i * size) for i in range(k)]
    return tuple(torch.split(x, split, dim=ax))


def _matmul(xs, a, opset):
    return torch.matmul(xs[0], xs[1])


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]):
    return lambda xs, a, opset: reduce(fn, [t for t in xs if t is not None])


def _binary(fn: Callable[[Tensor, Tensor], Tensor]):
    return lambda xs, a, opset: fn(xs[0], xs[1])


def _unary(fn: Callable[[Tensor], Tensor]):
    return lambda xs, a, opset: fn(xs[0])


def _div(x: Tensor, y: Tensor) -> Tensor:
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _pow(x: Tensor, y: Tensor) -> Tensor:
    if y.numel() == 1 and y.is_floating_point() and float(y) == 2.0:
        return x * x
    return torch.pow(x, y)


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "PRelu": _prelu,
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda xs, a, opset: F.leaky_relu(xs[0], float(a.get("alpha", 0.01))),
    "Elu": lambda xs, a, opset: F.elu(xs[0], float(a.get("alpha", 1.0))),
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": lambda xs, a, opset: torch.clamp(
        xs[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0, 1
    ),
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(_pow),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": _global_avgpool,
    "GlobalMaxPool": _global_maxpool,
    "Concat": _concat,
    "DequantizeLinear": _dequantize,
    "Constant": _constant,
    "Identity": _identity,
    "Dropout": _dropout,
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Softmax": _softmax_like(lambda x, d: torch.softmax(x, d)),
    "LogSoftmax": _softmax_like(lambda x, d: torch.log_softmax(x, d)),
    "Pad": _pad,
    "Clip": _clip,
    "ReduceMean": _reduce("mean", 18),
    "ReduceSum": _reduce("sum", 13),
    "ReduceMax": _reduce("max", 18),
    "ReduceMin": _reduce("min", 18),
    "ReduceSumSquare": _reduce("sumsquare", 18),
    "ReduceL2": _reduce("l2", 18),
    "ReduceL1": _reduce("l1", 18),
    "LpNormalization": _lpnorm,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Split": _split,
}

SUPPORTED_OPS: frozenset[str] = frozenset(_OPS)


# ------------------------------------------------------------------------------- graph module


class _Op(nn.Module):
    """One functional ONNX node (`op_type`, attributes) inside an `OnnxModule`."""

    def __init__(self, op_type: str, attrs: dict, opset: int, n_outputs: int):
        super().__init__()
        self.op_type = op_type
        self.attrs = attrs
        self.opset = opset
        self.n_outputs = n_outputs

    def forward(self, *xs: Tensor | None) -> Any:
        if self.op_type == "Split":
            return _split(list(xs), self.attrs, self.opset, self.n_outputs)
        return _OPS[self.op_type](list(xs), self.attrs, self.opset)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.attrs.items() if not isinstance(v, Tensor)}
        return f"{self.op_type}{shown if shown else ''}"


def _sanitize(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else f"t_{s}"


def _opset_of(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _topological(nodes: Sequence[Any], available: set[str], path: Any) -> list[Any]:
    """Nodes in an order where every input is produced before use (Kahn; ONNX files usually are sorted)."""
    done = set(available) | {""}
    pending = list(nodes)
    order: list[Any] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.input):
                order.append(n)
                done.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in done})
            raise OnnxImportError(f"{path}: the graph has a cycle or undefined inputs: {', '.join(missing[:5])}")
        pending = rest
    return order


def _check_supported(nodes: Sequence[Any], path: Any) -> None:
    bad = []
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            bad.append(f"{n.domain}.{n.op_type}")
        elif n.op_type not in _OPS:
            bad.append(n.op_type)
    if bad:
        raise UnsupportedOperatorError(bad, path)


def _fold(model: Any, path: Any) -> tuple[dict[str, Tensor], list[Any]]:
    """(constants, runtime nodes in topological order)."""
    from onnx import numpy_helper

    g = model.graph
    opset = _opset_of(model)
    consts: dict[str, Tensor] = {}
    for init in g.initializer:
        try:
            consts[init.name] = _to_tensor(numpy_helper.to_array(init))
        except OnnxImportError as e:
            raise OnnxImportError(f"{path}: initializer {init.name!r}: {e}") from None
    runtime_inputs = {i.name for i in g.input if i.name not in consts}
    nodes = _topological(list(g.node), set(consts) | runtime_inputs, path)
    _check_supported(nodes, path)
    runtime: list[Any] = []
    for n in nodes:
        ins = [i for i in n.input if i]
        if all(i in consts for i in ins):
            try:
                with torch.no_grad():
                    out = _Op(n.op_type, _attrs(n), opset, len(n.output))(*[consts[i] if i else None for i in n.input])
            except OnnxImportError as e:
                raise OnnxImportError(f"{path}: node {n.name or n.op_type!r}: {e}") from None
            outs = out if isinstance(out, tuple) else (out,)
            for name, t in zip(n.output, outs):
                if name:
                    consts[name] = t
        else:
            runtime.append(n)
    return consts, runtime


def _as_linear(n: Any, a: dict, consts: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, bool] | None:
    """(weight (out, in), bias (out,) or None, transA) when a Gemm / MatMul node is x @ constant + bias."""
    ins = list(n.input)
    if ins[0] in consts or ins[1] not in consts or consts[ins[1]].ndim != 2:
        return None
    B = consts[ins[1]].float()
    if n.op_type == "MatMul":
        return B.t(), None, False
    w = (B if a.get("transB", 0) else B.t()) * float(a.get("alpha", 1.0))
    b = None
    if len(ins) > 2 and ins[2]:
        if ins[2] not in consts:
            return None
        C = consts[ins[2]].float()
        if not (C.numel() == 1 or (C.shape[-1] == w.shape[0] and C.numel() == w.shape[0])):
            return None  # a per-row or full (M, N) bias: keep the generic Gemm
        b = (C.reshape(-1).expand(w.shape[0]) * float(a.get("beta", 1.0))).clone()
    return w, b, bool(a.get("transA", 0))


class OnnxModule(nn.Module):
    """An ONNX graph as a differentiable float32 `nn.Module` (see the module docstring).

    Args:
        model: path to an .onnx file, or an `onnx.ModelProto`.
        fold_batchnorm: fold BatchNormalization into the preceding Conv / Gemm / MatMul (faster, same result).
        source: the file name used in error messages (default: the path, or the graph's name).

    Attributes:
        input_names / output_names: the graph's runtime inputs (initializer-backed and unused inputs are
            not inputs) and outputs. `input_shapes`: per input, a tuple with None for dynamic dims.
    forward(*inputs) -> one tensor, or a tuple when the graph has several outputs.
    """

    def __init__(self, model: Any, *, fold_batchnorm: bool = True, source: str | Path | None = None):
        super().__init__()
        if isinstance(model, (str, Path)):
            source = source or model
            model = load_onnx_model(model)
        self.source = str(source) if source else (model.graph.name or "<onnx model>")
        opset = _opset_of(model)
        g = model.graph
        consts, nodes = _fold(model, self.source)

        used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
        self.input_names = [i.name for i in g.input if i.name not in consts and i.name in used]
        self.input_shapes = [
            tuple(
                (d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
                for d in i.type.tensor_type.shape.dim
            )
            for i in g.input
            if i.name in self.input_names
        ]
        self.output_names = [o.name for o in g.output]
        batch1 = bool(self.input_shapes) and all(len(sh) > 0 and sh[0] == 1 for sh in self.input_shapes)
        missing = [
            o
            for o in self.output_names
            if o not in consts and not any(o in n.output for n in nodes) and o not in self.input_names
        ]
        if missing:
            raise OnnxImportError(f"{self.source}: graph outputs {missing} are never produced")

        consumers: dict[str, list[Any]] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outputs = set(self.output_names)

        def single_bn_after(name: str, channels: int) -> Any | None:
            """The BatchNormalization node that alone consumes `name`, if its params are constant."""
            if not fold_batchnorm or name in outputs:
                return None
            cs = consumers.get(name, [])
            if len(cs) != 1 or cs[0].op_type != "BatchNormalization" or cs[0].input[0] != name:
                return None
            bn = cs[0]
            if _attrs(bn).get("training_mode", 0) or not all(i in consts for i in bn.input[1:5]):
                return None
            if consts[bn.input[1]].numel() != channels:
                return None
            return bn

        self.steps = nn.ModuleList()
        self._wiring: list[tuple[list[str], list[str]]] = []
        self._const_names: dict[str, str] = {}  # float constants -> buffer names
        self._static: dict[str, Tensor] = {}  # integer / bool constants, structural, not in the state dict
        skip: set[int] = set()

        def add(module: nn.Module, ins: list[str], outs: list[str]) -> None:
            for i in ins:
                if i in consts and not consts[i].is_floating_point():
                    self._static[i] = consts[i]  # shapes / indices: stay on the CPU whatever the device
                elif i in consts and i not in self._const_names:
                    attr = f"c_{_sanitize(i)}"
                    while hasattr(self, attr):
                        attr += "_"
                    self.register_buffer(attr, consts[i])
                    self._const_names[i] = attr
            self.steps.append(module)
            self._wiring.append((ins, outs))

        for n in nodes:
            if id(n) in skip:
                continue
            a = _attrs(n)
            ins, outs = list(n.input), list(n.output)
            if n.op_type == "Conv" and ins[1] in consts and (len(ins) < 3 or not ins[2] or ins[2] in consts):
                w = consts[ins[1]]
                b = consts[ins[2]] if len(ins) > 2 and ins[2] else None
                bn = single_bn_after(outs[0], w.shape[0])
                if bn is not None:
                    gamma, beta, mean, var = (consts[i] for i in bn.input[1:5])
                    w, b = _fold_bn(w, b, gamma, beta, mean, var, float(_attrs(bn).get("epsilon", 1e-5)))
                    outs = [bn.output[0]]
                    skip.add(id(bn))
                add(Conv(w, b, a), [ins[0]], outs)
            elif n.op_type in ("Gemm", "MatMul") and (lin := _as_linear(n, a, consts)) is not None:
                w, b, trans_a = lin
                bn = single_bn_after(outs[0], w.shape[0])
                if bn is not None and n.op_type == "Gemm":  # Gemm output is (N, out): BN's dim 1 is `out`
                    gamma, beta, mean, var = (consts[i] for i in bn.input[1:5])
                    w, b = _fold_bn(w, b, gamma, beta, mean, var, float(_attrs(bn).get("epsilon", 1e-5)))
                    outs = [bn.output[0]]
                    skip.add(id(bn))
                add(Linear(w, b, trans_a), [ins[0]], outs)
            elif (
                n.op_type == "BatchNormalization"
                and all(i in consts for i in ins[1:5])
                and not a.get("training_mode", 0)
            ):
                gamma, beta, mean, var = (consts[i] for i in ins[1:5])
                add(ChannelAffine(gamma, beta, mean, var, float(a.get("epsilon", 1e-5))), [ins[0]], outs[:1])
            elif n.op_type == "PRelu" and ins[1] in consts:
                add(PReLU(consts[ins[1]]), [ins[0]], outs)
            else:
                if n.op_type == "Reshape" and batch1:
                    a = {**a, "_batch1": True}
                add(_Op(n.op_type, a, opset, len(outs)), ins, outs)

        # free each intermediate right after its last use (less memory in no-grad inference)
        last_use: dict[str, int] = {}
        for k, (ins, _) in enumerate(self._wiring):
            for i in ins:
                last_use[i] = k
        self._free_after = [
            [i for i in ins if i and last_use.get(i) == k and i not in outputs and i not in consts]
            for k, (ins, _) in enumerate(self._wiring)
        ]
        self._output_consts = {o: consts[o] for o in self.output_names if o in consts}

    def forward(self, *inputs: Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{self.source}: expected {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}"
            )
        env: dict[str, Any] = dict(zip(self.input_names, inputs))
        buffers, const_names, static = self._buffers, self._const_names, self._static
        for k, (step, (ins, outs)) in enumerate(zip(self.steps, self._wiring)):
            args = [
                env[i] if i in env else (buffers[const_names[i]] if i in const_names else static.get(i)) for i in ins
            ]
            out = step(*args)
            if isinstance(out, tuple):
                for name, t in zip(outs, out):
                    if name:
                        env[name] = t
            else:
                env[outs[0]] = out
            for i in self._free_after[k]:
                env.pop(i, None)
        res = [env[o] if o in env else self._output_consts[o] for o in self.output_names]
        return res[0] if len(res) == 1 else tuple(res)

    def graph_steps(self) -> list[tuple[nn.Module, list[str], list[str]]]:
        """The translated nodes in execution order: (module, ONNX input names, ONNX output names)."""
        return [(m, list(i), list(o)) for m, (i, o) in zip(self.steps, self._wiring)]

    def constant(self, name: str) -> Tensor:
        """The folded constant that the graph calls `name` (only those used by runtime nodes are kept)."""
        if name in self._static:
            return self._static[name]
        if name not in self._const_names:
            raise KeyError(f"{self.source}: no constant {name!r} feeds a runtime node")
        t = self._buffers[self._const_names[name]]
        assert t is not None, name  # registered from a folded constant, never None
        return t

    def extra_repr(self) -> str:
        return f"source={self.source!r}, inputs={self.input_names}, outputs={self.output_names}"
