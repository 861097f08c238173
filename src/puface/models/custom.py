"""A user's own face model (ONNX, TorchScript or torch.export .pt2 file) as a `FaceEmbedder`.

    >>> emb = load_embedder("w600k_r50.onnx",
    ...                     normalization={"scale": 255, "mean": 127.5, "std": 127.5})  # doctest: +SKIP

What the model expects is never guessed where a guess could silently cost accuracy:

* input size (h, w): the `input_size` option, else `input_size` in a JSON sidecar next to the file
  (`model.onnx` -> `model.json`), else, for ONNX and torch.export, the graph's static input shape;
* normalisation: the `normalization` option (an `InputNormalization` or a dict), else the sidecar's
  `scale`, `mean`, `std` (and optional `order`, default "RGB"); required, with an error naming what is missing.
  net_in = (x * scale - mean) / std for x in [0, 1]; e.g. insightface ArcFace: scale 255, mean 127.5, std 127.5;
* channel layout: (N, 3, H, W); an ONNX graph whose input is (N, H, W, 3) (TensorFlow exports) is fed so;
* embedding size: the `embedding_dim` option / sidecar key, else measured by a probe forward pass.

Sidecar example (`model.json`)::

    {"input_size": [112, 112], "scale": 255, "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5],
     "order": "RGB", "name": "arcface-r50", "licence": "non-commercial research (insightface)", "layout": "arcface112"}

* face layout: the `layout` option / sidecar key: "any" (default: chips are plainly resized) or
  "arcface112" (the model was trained on ArcFace-aligned 112 px crops: puface's dlib chips are warped into
  that layout, as for SFace).

Trust: a TorchScript or torch.export file is a program that loading runs (`torch.export.load` unpickles a .pt2
file, so any Python code in it runs): load only such files you trust. An ONNX file is data: puface's importer
(`onnx_import`) runs only the standard operators it translates, and `onnx.load` refuses external weights outside
the model's folder or behind a link.

A graph that only runs with batch 1 is run image by image (with a warning); a torch.export program exported
without dynamic shapes (fixed batch B) is run B images at a time, the last chunk padded.
"""

from __future__ import annotations

import math
import numbers
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..utils.errors import ConfigError, MissingFileError, PufaceError
from ..utils.tomlconfig import read_json_object
from .base import FaceEmbedder, InputNormalization

__all__ = ["load_custom_embedder", "read_sidecar", "CustomModelError", "MissingModelFileError"]

_NORM_KEYS = ("scale", "mean", "std")
_SIDECAR_KEYS = {
    "input_size",
    "scale",
    "mean",
    "std",
    "order",
    "name",
    "embedding_dim",
    "licence",
    "license",
    "source",
    "layout",
}
#: face layouts a model may be trained on; puface's dlib chips are warped into them (None: plain resize)
LAYOUTS = ("any", "arcface112")
_TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip"}


class CustomModelError(PufaceError):
    """A user-supplied model file cannot be used as given; the message says what to change."""


class MissingModelFileError(CustomModelError, MissingFileError):
    """A model file that does not exist (`named`: the path or name as given)."""


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a model file (`model.onnx` -> `model.json`), or {} when there is none."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return {}
    data = read_json_object(side, "a JSON object with keys like input_size, scale, mean, std, order")
    unknown = sorted(set(data) - _SIDECAR_KEYS)
    if unknown:
        raise ConfigError(f"{side}: unknown key(s) {unknown}; allowed: {sorted(_SIDECAR_KEYS)}")
    return data


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a number (bools, strings, null, NaN and inf are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real too
        return None
    return float(value) if math.isfinite(value) else None


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float]:
    if isinstance(value, (list, tuple)):
        vals = tuple(_number(v) for v in value)
    else:
        vals = (_number(value),) * 3
    nums = [v for v in vals if v is not None]
    if len(vals) != 3 or len(nums) != 3:
        raise ConfigError(f"{where}: {key} must be a number or 3 numbers (one per channel), got {value!r}")
    return (nums[0], nums[1], nums[2])


def _normalization(
    option: InputNormalization | Mapping | None, sidecar: Mapping, side_path: Path, model_path: Path
) -> InputNormalization:
    if isinstance(option, InputNormalization):
        return option
    src, where = (option, "normalization option") if option is not None else (sidecar, str(side_path))
    missing = [k for k in _NORM_KEYS if k not in src]
    if missing:
        have = "the normalization option" if option is not None else (f"{side_path}" if sidecar else "no sidecar")
        raise CustomModelError(
            f"{model_path}: the input normalisation is unknown (missing {', '.join(missing)} in {have}). "
            f"Give normalization=InputNormalization(scale=..., mean=..., std=..., order='RGB') or a dict with keys "
            f"scale, mean, std (order optional, default RGB), or write them into {side_path}; "
            "net_in = (x * scale - mean) / std for x in [0, 1], "
            "e.g. insightface ArcFace: scale 255, mean 127.5, std 127.5"
        )
    unknown = sorted(set(src) - set(_NORM_KEYS) - {"order"}) if option is not None else []
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; use scale, mean, std, order")
    scale = _number(src["scale"])
    if scale is None or scale <= 0:
        raise ConfigError(
            f"{where}: scale must be a positive number (255 for 0..255 input, 1 for 0..1), got {src['scale']!r}"
        )
    try:
        return InputNormalization(
            scale=scale,
            mean=_triple(src["mean"], "mean", where),
            std=_triple(src["std"], "std", where),
            order=str(src.get("order", "RGB")).upper(),
        )
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _count(value: Any) -> int | None:
    """`value` as a positive int (a whole float such as 112.0 too), else None."""
    n = _number(value)
    return int(n) if n is not None and n == int(n) and n > 0 else None


def _size(value: Any, where: str) -> tuple[int, int]:
    vals = [_count(v) for v in value] if isinstance(value, (list, tuple)) else [_count(value)] * 2
    nums = [v for v in vals if v is not None]
    if len(vals) != 2 or len(nums) != 2:
        raise ConfigError(
            f"{where}: input_size must be [height, width] in pixels (positive whole numbers), got {value!r}"
        )
    return (nums[0], nums[1])


def _kind(path: Path) -> str:
    """'onnx', 'torchscript' or 'exported' (torch.export .pt2) from the file's content; the last two are zips."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "exported" if any(n.endswith("/archive_format") for n in names) else "torchscript"
    if path.suffix.lower() == ".pt2":
        raise CustomModelError(
            f"{path}: not a torch.export program (not a zip archive: cut short, or another kind of file); "
            "save one with torch.export.save(torch.export.export(model.eval(), (example,)), path)"
        )
    if path.suffix.lower() in _TORCHSCRIPT_SUFFIXES:
        raise CustomModelError(
            f"{path}: not a TorchScript file (not a zip archive); a PyTorch model must be saved with "
            "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path), or exported to ONNX"
        )
    return "onnx"


class _FirstOutput(nn.Module):
    """Returns the first output of a model with several; flattens to (N, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if not isinstance(y, Tensor):
            raise CustomModelError(f"the model returned {type(y).__name__}, expected a tensor of embeddings")
        return y.flatten(1) if y.ndim > 2 else y


class _PerImage(nn.Module):
    """Runs a batch-1-only network image by image and stacks the results."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.net(x[i : i + 1]) for i in range(x.shape[0])])


class _ChannelsLast(nn.Module):
    """Feeds a network that takes (N, H, W, C) images the (N, C, H, W) batches puface passes."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Any:
        return self.net(x.permute(0, 2, 3, 1))


def _load_onnx(path: Path) -> tuple[nn.Module, tuple[int, int] | None]:
    from .onnx_import import OnnxImportError, OnnxModule, load_onnx_model

    try:
        model = load_onnx_model(path)
    except OnnxImportError as e:
        raise CustomModelError(f"{e}; puface reads face models as ONNX (.onnx) or TorchScript (.pt)") from None
    graph = OnnxModule(model, source=path)
    if len(graph.input_names) != 1:
        raise CustomModelError(f"{path}: a face model must take one image input; this graph takes {graph.input_names}")
    shape = graph.input_shapes[0]
    if len(shape) != 4:
        raise CustomModelError(f"{path}: the input {graph.input_names[0]!r} has shape {shape}; expected (N, 3, H, W)")
    net: nn.Module = graph
    if shape[3] == 3 and shape[1] != 3:  # channels last (N, H, W, 3), as TensorFlow exports (tf2onnx) take
        net, shape = _ChannelsLast(graph), (shape[0], 3, shape[1], shape[2])
    if shape[1] not in (None, 3):
        raise CustomModelError(f"{path}: the input has shape {shape}, no dimension of 3 colour channels; "
                               "expected (N, 3, H, W) or (N, H, W, 3)")
    size = (shape[2], shape[3]) if shape[2] and shape[3] else None
    return net, size


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript; it still loads
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise CustomModelError(
            f"{path}: not a TorchScript model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "A state dict or pickled module cannot be loaded without its code: save it with "
            "torch.jit.script(model).save(path) / torch.jit.trace(model, example).save(path), or export to ONNX"
        ) from None


class _Exported(nn.Module):
    """Holds a torch.export program's module, whose train()/eval() raise: mode changes stop here
    (the program is already traced in inference mode)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "_Exported":
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Any:
        return self.module(x)


class _FixedBatch(nn.Module):
    """Runs a network traced for a fixed batch of `batch` images in chunks of that size; the last chunk is
    padded with zero images, whose outputs are dropped."""

    def __init__(self, net: nn.Module, batch: int):
        super().__init__()
        self.net = net
        self.batch = batch

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i : i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)


def _load_exported(path: Path) -> tuple[nn.Module, tuple[int | None, ...] | None]:
    """(module, the input shape the program was exported for: an int per static dim, None per dynamic one;
    None when the program does not take one tensor)."""
    try:
        module = torch.export.load(str(path)).module()
    except Exception as e:
        raise CustomModelError(f"{path}: not a loadable torch.export program ({type(e).__name__}: {e})") from None
    inputs = [n for n in module.graph.nodes if n.op == "placeholder"]
    shape = getattr(inputs[0].meta.get("val"), "shape", None) if len(inputs) == 1 else None
    shape = tuple(d if isinstance(d, int) else None for d in shape) if shape is not None else None
    return _Exported(module), shape


def _error_line(e: BaseException) -> str:
    """One line saying why user code failed. A TorchScript error's first line only says that an operation
    failed in the interpreter (then a stack of source excerpts): its last line is the cause."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "failed in the TorchScript interpreter" in lines[0]:
        return lines[-1].strip()
    return f"{type(e).__name__}: {lines[0]}"


def _check_batch_independent(net: nn.Module, size: tuple[int, int], path: Path) -> None:
    """Refuse a net whose output for an image changes with the other images of its batch: a BatchNorm
    traced or exported in training mode normalises with the batch's statistics, whatever eval() says."""
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x[:2])[0].float(), net(x[::2])[0].float()  # image 0 beside image 1, then beside image 2
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max())):
        raise CustomModelError(
            f"{path}: the model's output for an image changes with the other images in its batch (a BatchNorm traced "
            "or exported in training mode?); "
            "call model.eval() before torch.jit.trace / torch.export / torch.onnx.export"
        )


def _probe(net: nn.Module, size: tuple[int, int], path: Path) -> tuple[nn.Module, int]:
    """Run zeros through the net at batch 2 (else batch 1, then wrap per image); return (net, D)."""
    errors = []
    for batch in (2, 1):
        try:
            with torch.no_grad():
                y = net(torch.zeros(batch, 3, *size))
        except Exception as e:  # any failure of user code
            errors.append(_error_line(e))
            continue
        if y.ndim != 2 or y.shape[0] != batch:
            raise CustomModelError(
                f"{path}: output shape {tuple(y.shape)} for a batch of {batch}; expected (N, D) embeddings"
            )
        if not y.is_floating_point():
            raise CustomModelError(
                f"{path}: the model outputs {str(y.dtype).replace('torch.', '')} values; expected float "
                "embeddings (export the embedding layer's output, before any rounding or cast)"
            )
        if batch == 1:
            warnings.warn(f"{path}: the model only runs with batch 1; puface will feed it image by image", stacklevel=3)
            net = _PerImage(net)
        else:
            _check_batch_independent(net, size, path)
        return net, int(y.shape[1])
    raise CustomModelError(f"{path}: the model fails on a (N, 3, {size[0]}, {size[1]}) input: {errors[-1]}")


def load_custom_embedder(
    path: str | Path,
    *,
    input_size: int | tuple[int, int] | None = None,
    normalization: InputNormalization | Mapping | None = None,
    name: str | None = None,
    embedding_dim: int | None = None,
    layout: str | None = None,
) -> FaceEmbedder:
    """A `FaceEmbedder` around a user's ONNX or TorchScript face model (see the module docstring).

    Args:
        path: .onnx file, a TorchScript file (.pt / .pth / .ts / ...), or a torch.export program (.pt2).
        input_size: (height, width) the model expects, in pixels (or one int for square).
        normalization: `InputNormalization` or {"scale", "mean", "std", "order"}.
        name: shown in reports; default: the sidecar's "name", else the file stem.
        embedding_dim: D, checked against the model's output.
        layout: the face layout the model was trained on ("any" or "arcface112"; default: the sidecar's, else "any").
    Raises:
        CustomModelError / ConfigError / OnnxImportError (all `PufaceError`) with the fix in the message.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingModelFileError(path, f"{path}: no such model file")
    side_path = path.with_suffix(".json")
    kind = _kind(path)
    fixed_batch = None
    if kind == "onnx":
        net, graph_size = _load_onnx(path)
    elif kind == "exported":
        net, shape = _load_exported(path)
        graph_size = None
        if shape is not None:  # a program exported without dynamic_shapes fixes its batch and image size
            if len(shape) != 4 or shape[1] not in (None, 3):
                raise CustomModelError(f"{path}: the program takes input of shape {shape}; expected (N, 3, H, W)")
            graph_size = (shape[2], shape[3]) if shape[2] and shape[3] else None
            fixed_batch = shape[0]
    else:
        net, graph_size = _load_torchscript(path), None
    sidecar = read_sidecar(path)
    norm = _normalization(normalization, sidecar, side_path, path)

    if input_size is not None:
        size = _size(input_size, "input_size option")
    elif "input_size" in sidecar:
        size = _size(sidecar["input_size"], str(side_path))
    elif graph_size is not None:
        size = graph_size
    else:
        what = {
            "onnx": "the ONNX graph's input size is dynamic",
            "exported": "the program's input size is dynamic",
        }.get(kind, f"a {kind} file does not record its input size")
        raise CustomModelError(
            f"{path}: {what}; give input_size=(height, width) or put \"input_size\": [h, w] into {side_path}"
        )

    if graph_size is not None and size != graph_size:
        raise CustomModelError(
            f"{path}: the graph takes {graph_size[0]}x{graph_size[1]} images but input_size is {size[0]}x{size[1]}; "
            "drop input_size or fix it"
        )
    net = _FirstOutput(net).eval()
    if fixed_batch is not None:
        net = _FixedBatch(net, fixed_batch)
    net, dim = _probe(net, size, path)
    want, where = (
        (embedding_dim, "embedding_dim option")
        if embedding_dim is not None
        else (sidecar.get("embedding_dim"), str(side_path))
    )
    if want is not None and _count(want) is None:
        raise ConfigError(f"{where}: embedding_dim must be a positive whole number, got {want!r}")
    if want is not None and int(want) != dim:
        raise CustomModelError(f"{path}: embedding_dim {want} was given but the model outputs {dim}-d embeddings")

    layout = str(layout or sidecar.get("layout") or "any")
    if layout not in LAYOUTS:
        raise ConfigError(f"{path}: unknown face layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    warp = None
    if layout == "arcface112":
        from .sface import dlib_chip_to_arcface_warp

        warp = dlib_chip_to_arcface_warp()
    return FaceEmbedder(
        net,
        name=name or str(sidecar.get("name") or path.stem),
        input_size=size,
        embedding_dim=dim,
        normalization=norm,
        source=str(sidecar.get("source") or path),
        licence=str(sidecar.get("licence") or sidecar.get("license") or "user-supplied"),
        input_layout="dlib150" if warp is not None else "",
        input_warp=warp,
    )
