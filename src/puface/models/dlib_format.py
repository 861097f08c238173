"""A pure-Python reader for dlib's binary serialization of a DNN (`dlib::serialize(net, file)`).

No dlib is needed. The encodings (dlib/serialize.h, dlib/float_details.h, dlib/dnn/*.h):

* integer: one control byte (low 4 bits: number of value bytes, bit 7: negative), then the
  magnitude in that many little-endian bytes; bits 0x70 are always zero.
* float/double: two integers, mantissa (int64) and exponent (int16): value = mantissa * 2**exponent
  (exponent 32000 / 32001 / 32002: +inf / -inf / nan).
* string: length (integer), then the bytes.  bool: the byte '0' or '1'.
* tensor (version 2): num_samples, k, nr, nc (integers), then n*k*nr*nc little-endian float32.
* alias_tensor (version 1): num_samples, k, nr, nc.

A network nests from the loss layer inwards: `add_loss_layer` (version 1, loss details, subnet),
`add_layer` (version 2: subnet, details, 3 bools, 3 tensors), `add_tag_layer` / `add_skip_layer`
(version 1: subnet only; indistinguishable in the file), and at the bottom `add_layer` over the input
layer (version 2 or 3: input details, layer details, 3 bools, 3 tensors, [sample expansion factor]).
`read_dlib_dnn` returns the layers in forward order (input side first).

Supported layer details: con_4, affine_, relu_, max_pool_2, avg_pool_2, add_prev_, fc_2,
input_rgb_image(_sized), loss_metric(_2). Anything else raises `DlibFormatError`.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..utils.errors import PufaceError

_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibFormatError(PufaceError):
    """A dlib .dat file is truncated, corrupt, or uses a layer version this reader does not know."""

    def __init__(self, path: str | Path, offset: int, message: str):
        self.path = Path(path)
        self.offset = int(offset)
        self.reason = message
        super().__init__(f"{self.path}: not a readable dlib network file at byte {self.offset}: {message}")


@dataclass
class DlibLayer:
    """One serialized layer in forward order.

    kind: "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", or "tag_or_skip"
    (dlib's tag and skip layers carry no data, so the file cannot tell them apart).
    version: the name dlib wrote (e.g. "con_4"); attrs: hyper-parameters (ints/floats);
    weights: float32 arrays (conv filters (O, I, kh, kw), biases (O,), gamma/beta (C,),
    fc weights (num_inputs, num_outputs) as dlib stores them); offset: byte where its data begins.
    """

    kind: str
    version: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0


@dataclass
class DlibNetwork:
    """A whole network: `input` and `loss` (name + attrs) and `layers` in forward order."""

    path: Path
    input: DlibLayer
    layers: list[DlibLayer]
    loss: DlibLayer

    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]

    def of_kind(self, kind: str) -> list[DlibLayer]:
        return [layer for layer in self.layers if layer.kind == kind]


class _Reader:
    """A cursor over the file's bytes; every read names what it expected when it fails."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> DlibFormatError:
        return DlibFormatError(self.path, self.pos if offset is None else offset, message)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"file ends while reading {what} (needs {n} bytes, {len(self.data) - self.pos} left; truncated?)"
            )
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    # (below these methods, annotations name builtins.int / builtins.bool: the methods shadow the types)
    def int(self, what: str, nbytes: int = 8, signed: bool = True) -> int:
        start = self.pos
        ctrl = self.take(1, what)[0]
        size = ctrl & 0x0F
        neg = bool(ctrl & 0x80)
        if ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} for {what}", start)
        if size > nbytes:
            raise self.fail(f"integer of {size} bytes for {what}, at most {nbytes} allowed", start)
        if neg and not signed:
            raise self.fail(f"negative value for unsigned {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if neg else value

    def uint(self, what: str, nbytes: builtins.int = 8) -> builtins.int:
        return self.int(what, nbytes, signed=False)

    def version(self, what: str, allowed: tuple[builtins.int, ...]) -> builtins.int:
        start = self.pos
        v = self.int(f"{what} version", 4)
        if v not in allowed:
            raise self.fail(f"{what} version {v}, expected one of {allowed}", start)
        return v

    def float(self, what: str) -> float:
        mantissa = self.int(f"{what} (mantissa)", 8)
        exponent = self.int(f"{what} (exponent)", 2)
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return math.ldexp(float(mantissa), exponent)

    def bool(self, what: str) -> builtins.bool:
        start = self.pos
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise self.fail(f"expected '0' or '1' for {what}, got byte 0x{ch[0]:02x}", start)
        return ch == b"1"

    def string(self, what: str, max_len: builtins.int = 256) -> str:
        start = self.pos
        n = self.uint(f"{what} (length)")
        if n > max_len:
            raise self.fail(f"string of length {n} for {what} (at most {max_len} expected)", start)
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII bytes in {what}", start) from None

    def peek_string_startswith(self, prefix: bytes) -> builtins.bool:
        """True when a string starting with `prefix` comes next; the cursor does not move."""
        start = self.pos
        try:
            n = self.uint("string length")
            ok = n >= len(prefix) and self.data[self.pos : self.pos + len(prefix)] == prefix
        except DlibFormatError:
            ok = False
        self.pos = start
        return ok

    def shape4(self, what: str) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        n, k, nr, nc = (self.int(f"{what} {d}") for d in ("num_samples", "k", "nr", "nc"))
        return n, k, nr, nc

    def tensor(self, what: str) -> np.ndarray:
        """A `resizable_tensor` (version 2) -> float32 array of shape (n, k, nr, nc)."""
        self.version(f"tensor {what}", (2,))
        start = self.pos
        shape = self.shape4(f"tensor {what}")
        if any(d < 0 for d in shape):
            raise self.fail(f"negative dimension {shape} in tensor {what}", start)
        count = math.prod(shape)
        raw = self.take(4 * count, f"the {count} float32 values of tensor {what} {shape}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        self.version(f"alias_tensor {what}", (1,))
        return self.shape4(f"alias_tensor {what}")


def _split(
    r: _Reader, params: np.ndarray, shapes: dict[str, tuple[int, ...]], what: str, offset: int
) -> dict[str, np.ndarray]:
    """Cut a layer's flat params into the aliased parts (consecutive, in the given order)."""
    flat = params.reshape(-1)
    total = sum(math.prod(s) for s in shapes.values())
    if total != flat.size:
        raise r.fail(f"{what}: parameter tensor has {flat.size} values, its parts need {total}", offset)
    out, at = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = flat[at : at + n].reshape(shape).copy()
        at += n
    return out


def _lr_multipliers(r: _Reader, what: str) -> dict[str, float]:
    names = (
        "learning_rate_multiplier",
        "weight_decay_multiplier",
        "bias_learning_rate_multiplier",
        "bias_weight_decay_multiplier",
    )
    return {n: r.float(f"{what} {n}") for n in names}


def _con_4(r: _Reader, layer: DlibLayer) -> None:
    params = r.tensor("con_ params")
    a = layer.attrs
    a["num_filters"] = r.int("con_ num_filters")
    a["nr"], a["nc"] = r.int("con_ nr"), r.int("con_ nc")
    a["stride_y"], a["stride_x"] = r.int("con_ stride_y", 4), r.int("con_ stride_x", 4)
    a["padding_y"], a["padding_x"] = r.int("con_ padding_y", 4), r.int("con_ padding_x", 4)
    filt, bias = r.alias("con_ filters"), r.alias("con_ biases")
    a.update(_lr_multipliers(r, "con_"))
    if filt[0] != a["num_filters"] or filt[2:] != (a["nr"], a["nc"]) or math.prod(bias) != a["num_filters"]:
        raise r.fail(
            f"con_: filters {filt} / biases {bias} disagree with {a['num_filters']} filters of {a['nr']}x{a['nc']}"
        )
    layer.weights = _split(r, params, {"weight": filt, "bias": (math.prod(bias),)}, "con_", layer.offset)


def _affine(r: _Reader, layer: DlibLayer) -> None:
    params = r.tensor("affine_ params")
    gamma, beta = r.alias("affine_ gamma"), r.alias("affine_ beta")
    layer.attrs["mode"] = {0: "conv", 1: "fc"}.get(r.int("affine_ mode", 4), "unknown")
    if layer.attrs["mode"] != "conv":
        raise r.fail("affine_ in fc mode is not supported (only per-channel conv mode)")
    layer.weights = _split(
        r, params, {"gamma": (math.prod(gamma),), "beta": (math.prod(beta),)}, "affine_", layer.offset
    )


def _pool(r: _Reader, layer: DlibLayer) -> None:
    a = layer.attrs
    a["nr"], a["nc"] = r.int("pool nr"), r.int("pool nc")  # 0 = the whole input
    a["stride_y"], a["stride_x"] = r.int("pool stride_y", 4), r.int("pool stride_x", 4)
    a["padding_y"], a["padding_x"] = r.int("pool padding_y", 4), r.int("pool padding_x", 4)


def _fc_2(r: _Reader, layer: DlibLayer) -> None:
    a = layer.attrs
    a["num_outputs"], a["num_inputs"] = r.uint("fc_ num_outputs"), r.uint("fc_ num_inputs")
    params = r.tensor("fc_ params")
    w, b = r.alias("fc_ weights"), r.alias("fc_ biases")
    a["bias"] = {0: True, 1: False}.get(r.int("fc_ bias_mode", 4))
    if a["bias"] is None:
        raise r.fail("fc_ bias_mode is neither FC_HAS_BIAS (0) nor FC_NO_BIAS (1)")
    a.update(_lr_multipliers(r, "fc_"))
    if w[:2] != (a["num_inputs"], a["num_outputs"]):
        raise r.fail(f"fc_: weights {w} disagree with {a['num_inputs']} inputs x {a['num_outputs']} outputs")
    parts: dict[str, tuple[int, ...]] = {"weight": (w[0], w[1])}
    if a["bias"]:
        parts["bias"] = (math.prod(b),)
    layer.weights = _split(r, params, parts, "fc_", layer.offset)


_LAYERS: dict[str, tuple[str, Callable[[_Reader, DlibLayer], None] | None]] = {
    "con_4": ("con", _con_4),
    "affine_": ("affine", _affine),
    "relu_": ("relu", None),
    "max_pool_2": ("max_pool", _pool),
    "avg_pool_2": ("avg_pool", _pool),
    "add_prev_": ("add_prev", None),
    "fc_2": ("fc", _fc_2),
}


def _layer_details(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string("layer name")
    if name not in _LAYERS:
        raise r.fail(f"unsupported layer {name!r} (supported: {', '.join(_LAYERS)})", start)
    kind, parse = _LAYERS[name]
    layer = DlibLayer(kind, name, offset=start)
    if parse is not None:
        parse(r, layer)
    return layer


def _input_details(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string("input layer name")
    if name not in ("input_rgb_image", "input_rgb_image_sized"):
        raise r.fail(f"unsupported input layer {name!r}", start)
    layer = DlibLayer("input", name, offset=start)
    layer.attrs["mean"] = tuple(r.float(f"{name} avg_{c}") for c in ("red", "green", "blue"))
    if name == "input_rgb_image_sized":
        layer.attrs["nr"], layer.attrs["nc"] = r.uint(f"{name} NR"), r.uint(f"{name} NC")
    return layer


def _loss_details(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string("loss layer name")
    layer = DlibLayer("loss", name, offset=start)
    if name == "loss_metric_2":
        layer.attrs["margin"] = r.float("loss_metric_ margin")
        layer.attrs["distance_threshold"] = r.float("loss_metric_ dist_thresh")
    elif name != "loss_metric_":
        raise r.fail(f"unsupported loss layer {name!r}", start)
    return layer


def _layer_state(r: _Reader, what: str) -> None:
    """The bookkeeping after a layer's details: 3 bools, 3 (normally empty) tensors."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(f"{what} {flag}")
    for t in ("x_grad", "cached_output", "params_grad/grad_final"):
        r.tensor(f"{what} {t}")


def read_dlib_dnn(path: str | Path) -> DlibNetwork:
    """Read a dlib DNN file (`dlib.net` serialization with a loss layer) into a `DlibNetwork`.

    Raises `DlibFormatError` (a `PufaceError`) naming the file and byte offset on a truncated or
    corrupt file, and on layer types this reader does not support.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PufaceError(f"{path}: cannot read dlib network file: {e.strerror or e}") from None
    r = _Reader(data, path)

    r.version("add_loss_layer", (1,))
    if not r.peek_string_startswith(b"loss_"):
        raise r.fail("expected a loss layer name (loss_...) after the add_loss_layer version")
    loss = _loss_details(r)

    # Walk inwards: each add_layer / tag / skip writes its version before its subnet.
    pending: list[str] = []
    while True:
        start = r.pos
        v = r.int("layer version", 4)
        if v == 1:
            pending.append("tag_or_skip")
        elif v in (2, 3) and r.peek_string_startswith(b"input_"):
            net_input = _input_details(r)
            first = _layer_details(r)
            _layer_state(r, first.version)
            if v == 3:
                r.uint("sample_expansion_factor", 4)
            layers = [first]
            break
        elif v == 2:
            pending.append("add_layer")
        else:
            raise r.fail(f"unexpected layer version {v} (expected 1 for tag/skip, 2 or 3 for add_layer)", start)
        if len(pending) > 100_000:
            raise r.fail("layer nesting never reaches an input layer")

    # Walk back outwards: the details of each enclosing layer follow its subnet.
    while pending:
        if pending.pop() == "tag_or_skip":
            layers.append(DlibLayer("tag_or_skip", offset=r.pos))
        else:
            layer = _layer_details(r)
            _layer_state(r, layer.version)
            layers.append(layer)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected bytes after the network")
    return DlibNetwork(path=path, input=net_input, layers=layers, loss=loss)
