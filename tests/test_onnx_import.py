"""The ONNX -> torch translator against onnxruntime, one small graph per operator (or variant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from puface.utils.errors import PufaceError  # noqa: E402
from puface.models.onnx_import import (  # noqa: E402
    SUPPORTED_OPS,
    ChannelAffine,
    Conv,
    Linear,
    OnnxImportError,
    OnnxModule,
    UnsupportedOperatorError,
    dequantize_linear,
)

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def model(nodes, inputs, outputs, inits=None, opset=17):
    """inputs: {name: [shape]} (float) or {name: ([shape], elem_type)};
    outputs: {name: elem_type} or [names] (float)."""
    ins = []
    for name, spec in inputs.items():
        shape, et = spec if isinstance(spec, tuple) else (spec, F32)
        ins.append(helper.make_tensor_value_info(name, et, shape))
    outs = outputs if isinstance(outputs, dict) else {o: F32 for o in outputs}
    graph = helper.make_graph(
        nodes,
        "g",
        ins,
        [helper.make_tensor_value_info(o, et, None) for o, et in outs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def run_ort(m, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(m, feeds, atol=1e-5, rtol=1e-5):
    """Translate `m`, run both, compare every output; return the module."""
    ref = run_ort(m, feeds)
    net = OnnxModule(m)
    out = net(*[torch.from_numpy(feeds[n]) for n in net.input_names])
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        o = o.detach().numpy()
        assert o.shape == r.shape, (o.shape, r.shape)
        if r.dtype.kind == "f":
            np.testing.assert_allclose(o, r, atol=atol, rtol=rtol)
        else:
            np.testing.assert_array_equal(o, r)
    return net


def node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


# ----------------------------------------------------------------------------------- convolution

CONV_CASES = {
    "plain": dict(attrs=dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), cin=3, cout=5, group=1),
    "strided-dilated": dict(
        attrs=dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]), cin=4, cout=6, group=1
    ),
    "asymmetric-pads": dict(attrs=dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0]), cin=3, cout=4, group=1),
    "depthwise": dict(
        attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=8), cin=8, cout=8, group=8
    ),
    "grouped": dict(attrs=dict(kernel_shape=[1, 1], group=2), cin=4, cout=6, group=2),
    "same-upper": dict(attrs=dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), cin=3, cout=4, group=1),
    "same-lower": dict(attrs=dict(kernel_shape=[4, 4], strides=[2, 2], auto_pad="SAME_LOWER"), cin=3, cout=4, group=1),
    "valid": dict(attrs=dict(kernel_shape=[3, 3], auto_pad="VALID"), cin=3, cout=2, group=1),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case):
    c = CONV_CASES[case]
    k = c["attrs"]["kernel_shape"]
    w = rand(c["cout"], c["cin"] // c["group"], *k)
    b = rand(c["cout"])
    m = model(
        [node("Conv", ["x", "w", "b"], ["y"], **c["attrs"])], {"x": [2, c["cin"], 11, 10]}, ["y"], {"w": w, "b": b}
    )
    net = check(m, {"x": rand(2, c["cin"], 11, 10)})
    assert isinstance(net.steps[0], Conv)


def test_conv1d_without_bias():
    w = rand(4, 3, 5)
    m = model([node("Conv", ["x", "w"], ["y"], kernel_shape=[5], pads=[2, 2])], {"x": [2, 3, 16]}, ["y"], {"w": w})
    check(m, {"x": rand(2, 3, 16)})


def _bn_inits(c, prefix="bn"):
    return {
        f"{prefix}_g": rand(c, lo=0.5, hi=1.5),
        f"{prefix}_b": rand(c),
        f"{prefix}_m": rand(c),
        f"{prefix}_v": rand(c, lo=0.1, hi=2.0),
    }


def _bn(x, y, prefix="bn", eps=1e-3):
    return node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y], epsilon=eps)


def test_conv_batchnorm_prelu_is_folded_into_one_conv():
    inits = {"w": rand(6, 3, 3, 3), "slope": rand(6, 1, 1, lo=0.0, hi=0.5), **_bn_inits(6)}
    m = model(
        [
            node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            _bn("c", "n"),
            node("PRelu", ["n", "slope"], ["y"]),
        ],
        {"x": [2, 3, 8, 8]},
        ["y"],
        inits,
    )
    net = check(m, {"x": rand(2, 3, 8, 8)})
    kinds = [type(s).__name__ for s in net.steps]
    assert kinds == ["Conv", "PReLU"]
    unfolded = OnnxModule(m, fold_batchnorm=False)
    assert [type(s).__name__ for s in unfolded.steps] == ["Conv", "ChannelAffine", "PReLU"]


def test_batchnorm_not_folded_when_conv_output_is_shared():
    inits = {"w": rand(4, 3, 1, 1), **_bn_inits(4)}
    m = model(
        [node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), _bn("c", "n"), node("Add", ["c", "n"], ["y"])],
        {"x": [1, 3, 5, 5]},
        ["y"],
        inits,
    )
    net = check(m, {"x": rand(1, 3, 5, 5)})
    assert any(isinstance(s, ChannelAffine) for s in net.steps)


def test_batchnorm_standalone_2d_and_4d():
    m = model([node("Relu", ["x"], ["r"]), _bn("r", "y", eps=1e-5)], {"x": [3, 4, 5, 5]}, ["y"], _bn_inits(4))
    check(m, {"x": rand(3, 4, 5, 5)})
    m = model([_bn("x", "y", eps=2e-5)], {"x": [3, 4]}, ["y"], _bn_inits(4))
    check(m, {"x": rand(3, 4)})


@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (1,), (6,)])
def test_prelu_broadcasts_like_numpy(slope_shape):
    m = model([node("PRelu", ["x", "s"], ["y"])], {"x": [2, 4, 5, 6]}, ["y"], {"s": rand(*slope_shape)})
    check(m, {"x": rand(2, 4, 5, 6)})


def test_prelu_with_runtime_slope():
    m = model([node("PRelu", ["x", "s"], ["y"])], {"x": [2, 3], "s": [3]}, ["y"])
    check(m, {"x": rand(2, 3), "s": rand(3)})


# ----------------------------------------------------------------------------------- elementwise

UNARY = {
    "Relu": {},
    "LeakyRelu": {"alpha": 0.1},
    "Sigmoid": {},
    "Tanh": {},
    "Elu": {"alpha": 0.7},
    "HardSigmoid": {"alpha": 0.3, "beta": 0.4},
    "HardSwish": {},
    "Erf": {},
    "Exp": {},
    "Neg": {},
    "Abs": {},
    "Floor": {},
    "Ceil": {},
    "Identity": {},
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op):
    m = model([node(op, ["x"], ["y"], **UNARY[op])], {"x": [2, 3, 4]}, ["y"])
    check(m, {"x": rand(2, 3, 4, lo=-3, hi=3)})


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_positive(op):
    m = model([node(op, ["x"], ["y"])], {"x": [2, 5]}, ["y"])
    check(m, {"x": rand(2, 5, lo=0.5, hi=3)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
def test_binary_with_constant_and_broadcast(op):
    m = model(
        [node(op, ["x", "c"], ["t"]), node(op, ["t", "z"], ["y"])],
        {"x": [2, 3, 4], "z": [4]},
        ["y"],
        {"c": rand(3, 1, lo=0.5, hi=2)},
    )
    check(m, {"x": rand(2, 3, 4, lo=0.5, hi=2), "z": rand(4, lo=0.5, hi=2)}, rtol=1e-4)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum"])
def test_variadic(op):
    m = model([node(op, ["a", "b", "c"], ["y"])], {"a": [2, 3], "b": [2, 3], "c": [3]}, ["y"])
    check(m, {"a": rand(2, 3), "b": rand(2, 3), "c": rand(3)})


def test_clip_opset11_inputs_and_opset6_attrs():
    m = model(
        [node("Clip", ["x", "lo", "hi"], ["y"])],
        {"x": [4, 5]},
        ["y"],
        {"lo": np.array(-0.2, np.float32), "hi": np.array(0.3, np.float32)},
        opset=13,
    )
    check(m, {"x": rand(4, 5)})
    m = model([node("Clip", ["x", "", "hi"], ["y"])], {"x": [4, 5]}, ["y"], {"hi": np.array(0.3, np.float32)}, opset=13)
    check(m, {"x": rand(4, 5)})
    m = model([node("Clip", ["x"], ["y"], min=-0.1, max=0.5)], {"x": [4, 5]}, ["y"], opset=6)
    check(m, {"x": rand(4, 5)})


# ----------------------------------------------------------------------------------- linear layers


@pytest.mark.parametrize(
    "attrs,bshape,cshape",
    [
        ({"transB": 1}, (7, 5), (7,)),
        ({"alpha": 0.5, "beta": 2.0}, (5, 7), (1, 7)),
        ({"transA": 1, "transB": 1}, (7, 5), None),
        ({"beta": 0.5}, (5, 7), (3, 7)),  # full (M, N) bias: generic Gemm
    ],
)
def test_gemm(attrs, bshape, cshape):
    a_shape = [5, 3] if attrs.get("transA") else [3, 5]
    inits = {"B": rand(*bshape)}
    ins = ["a", "B"]
    if cshape:
        inits["C"] = rand(*cshape)
        ins.append("C")
    m = model([node("Gemm", ins, ["y"], **attrs)], {"a": a_shape}, ["y"], inits)
    check(m, {"a": rand(*a_shape)})


def test_gemm_with_runtime_matrix_and_batchnorm_fold():
    m = model([node("Gemm", ["a", "b"], ["y"], transB=1)], {"a": [3, 5], "b": [4, 5]}, ["y"])
    check(m, {"a": rand(3, 5), "b": rand(4, 5)})
    m = model(
        [node("Gemm", ["a", "W", "c"], ["g"], transB=1), _bn("g", "y", eps=2e-5)],
        {"a": [3, 5]},
        ["y"],
        {"W": rand(4, 5), "c": rand(4), **_bn_inits(4)},
    )
    net = check(m, {"a": rand(3, 5)})
    assert [type(s).__name__ for s in net.steps] == ["Linear"]


def test_batchnorm_after_3d_matmul_is_not_folded_over_features():
    """BN normalises dim 1 (here: tokens), not MatMul's output features, even when both are 4."""
    m = model(
        [node("MatMul", ["a", "W"], ["t"]), _bn("t", "y")], {"a": [2, 4, 5]}, ["y"], {"W": rand(5, 4), **_bn_inits(4)}
    )
    check(m, {"a": rand(2, 4, 5)})


def test_matmul_constant_and_batched():
    m = model([node("MatMul", ["a", "W"], ["y"])], {"a": [2, 3, 5]}, ["y"], {"W": rand(5, 4)})
    net = check(m, {"a": rand(2, 3, 5)})
    assert isinstance(net.steps[0], Linear)
    m = model([node("MatMul", ["a", "b"], ["y"])], {"a": [2, 3, 5], "b": [2, 5, 4]}, ["y"])
    check(m, {"a": rand(2, 3, 5), "b": rand(2, 5, 4)})


# ----------------------------------------------------------------------------------- shapes


def test_flatten_reshape_transpose():
    m = model(
        [
            node("Flatten", ["x"], ["f2"], axis=2),
            node("Reshape", ["f2", "shape"], ["r"]),
            node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
            node("Flatten", ["x"], ["f1"]),
            node("Transpose", ["x"], ["t"]),
        ],
        {"x": [2, 3, 4, 5]},
        ["y", "f1", "t"],
        {"shape": np.array([0, -1, 4], np.int64)},
    )
    check(m, {"x": rand(2, 3, 4, 5)})


def test_dynamic_batch_shape_chain():
    """PyTorch-style flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, dynamic batch."""
    m = model(
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "zero"], ["n"], axis=0),
            node("Unsqueeze", ["n", "axes0"], ["n1"]),
            node("Concat", ["n1", "minus1"], ["shape"], axis=0),
            node("Reshape", ["x", "shape"], ["y"]),
            node("Shape", ["x"], ["s_tail"], start=-2),
        ],
        {"x": (["N", 3, 4, 4], F32)},
        {"y": F32, "s_tail": I64},
        {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
        opset=15,
    )
    net = check(m, {"x": rand(3, 3, 4, 4)})
    assert net.input_shapes == [(None, 3, 4, 4)]
    check(m, {"x": rand(1, 3, 4, 4)})


def test_batch1_graph_reshape_runs_any_batch():
    """A graph exported for batch 1 with Reshape [1, -1] still maps each image separately."""
    m = model(
        [node("Reshape", ["x", "shape"], ["r"]), node("Gemm", ["r", "W"], ["y"], transB=1)],
        {"x": [1, 2, 3, 3]},
        ["y"],
        {"shape": np.array([1, -1], np.int64), "W": rand(4, 18)},
    )
    x = rand(3, 2, 3, 3)
    ref = np.concatenate([run_ort(m, {"x": x[i : i + 1]})[0] for i in range(3)])
    out = OnnxModule(m)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_squeeze_unsqueeze_opsets():
    m = model(
        [node("Squeeze", ["x", "ax"], ["s"]), node("Unsqueeze", ["s", "ax2"], ["y"])],
        {"x": [2, 1, 3, 1]},
        ["y"],
        {"ax": np.array([1, -1], np.int64), "ax2": np.array([0, 3], np.int64)},
        opset=13,
    )
    check(m, {"x": rand(2, 1, 3, 1)})
    m = model(
        [node("Squeeze", ["x"], ["s"], axes=[3]), node("Unsqueeze", ["s"], ["y"], axes=[1])],
        {"x": [2, 1, 3, 1]},
        ["y"],
        opset=11,
    )
    check(m, {"x": rand(2, 1, 3, 1)})
    m = model([node("Squeeze", ["x"], ["y"])], {"x": [2, 1, 3, 1]}, ["y"], opset=13)
    check(m, {"x": rand(2, 1, 3, 1)})


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([1, 0], [3, 100], [0, 2], [1, 2]),
        ([-1], [-100], [1], [-1]),
        ([4, -3], [0, 10], [2, 1], [-2, 1]),
        ([0], [-1], None, None),
    ],
)
def test_slice(starts, ends, axes, steps):
    inits = {"st": np.array(starts, np.int64), "en": np.array(ends, np.int64)}
    ins = ["x", "st", "en"]
    if axes is not None:
        inits["ax"] = np.array(axes, np.int64)
        ins.append("ax")
    if steps is not None:
        inits["sp"] = np.array(steps, np.int64)
        ins.append("sp")
    m = model([node("Slice", ins, ["y"])], {"x": [4, 5, 6]}, ["y"], inits)
    check(m, {"x": rand(4, 5, 6)})


def test_concat_split_expand_gather():
    m = model(
        [
            node("Concat", ["a", "b"], ["c"], axis=1),
            node("Split", ["c", "sp"], ["s1", "s2"], axis=1),
            node("Expand", ["s1", "shape"], ["e"]),
            node("Gather", ["c", "idx"], ["g"], axis=1),
        ],
        {"a": [2, 3, 4], "b": [2, 2, 4]},
        ["s1", "s2", "e", "g"],
        {
            "sp": np.array([1, 4], np.int64),
            "shape": np.array([3, 2, 1, 4], np.int64),
            "idx": np.array([[0, -1], [2, 2]], np.int64),
        },
        opset=13,
    )
    check(m, {"a": rand(2, 3, 4), "b": rand(2, 2, 4)})
    m = model([node("Split", ["x"], ["p", "q", "r"], axis=0, num_outputs=3)], {"x": [7, 2]}, ["p", "q", "r"], opset=18)
    check(m, {"x": rand(7, 2)})


def test_cast_constant_of_shape_size():
    m = model(
        [
            node("Shape", ["x"], ["s"]),
            node("ConstantOfShape", ["s"], ["z"], value=helper.make_tensor("v", F32, [1], [0.5])),
            node("Add", ["x", "z"], ["y"]),
            node("Cast", ["s"], ["sf"], to=F32),
            node("Size", ["x"], ["n"]),
        ],
        {"x": [2, 3]},
        {"y": F32, "sf": F32, "n": I64},
    )
    check(m, {"x": rand(2, 3)})


# ----------------------------------------------------------------------------------- pooling

POOL_CASES = {
    "max-k3s2p1": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max-ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "max-asym": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])),
    "max-same": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "max-dilated": ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2])),
    "avg-include": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    "avg-exclude": ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    "avg-asym-exclude": ("AveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 2])),
    "avg-asym-include": (
        "AveragePool",
        dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 2], count_include_pad=1),
    ),
    "avg-2x2": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2])),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling(case):
    op, attrs = POOL_CASES[case]
    m = model([node(op, ["x"], ["y"], **attrs)], {"x": [2, 3, 9, 8]}, ["y"])
    check(m, {"x": rand(2, 3, 9, 8)})


def test_global_pools():
    m = model(
        [node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["m"])], {"x": [2, 3, 5, 4]}, ["a", "m"]
    )
    check(m, {"x": rand(2, 3, 5, 4)})


# ----------------------------------------------------------------------------------- reductions, heads


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare", "ReduceL1"])
@pytest.mark.parametrize("opset", [17, 18])
def test_reduce(op, opset):
    if opset >= 18:
        m = model(
            [node(op, ["x", "ax"], ["y"], keepdims=0)],
            {"x": [2, 3, 4]},
            ["y"],
            {"ax": np.array([1, -1], np.int64)},
            opset=opset,
        )
    else:
        m = model([node(op, ["x"], ["y"], axes=[1, -1], keepdims=0)], {"x": [2, 3, 4]}, ["y"], opset=opset)
    check(m, {"x": rand(2, 3, 4)})


def test_reduce_sum_and_all_axes():
    m = model(
        [node("ReduceSum", ["x", "ax"], ["y"])], {"x": [2, 3, 4]}, ["y"], {"ax": np.array([2], np.int64)}, opset=13
    )
    check(m, {"x": rand(2, 3, 4)})
    m = model([node("ReduceMean", ["x"], ["y"], keepdims=1)], {"x": [2, 3, 4]}, ["y"], opset=17)
    check(m, {"x": rand(2, 3, 4)})


def test_l2_norm_head_with_pow_sqrt_div():
    m = model(
        [
            node("Pow", ["x", "two"], ["sq"]),
            node("ReduceSum", ["sq", "ax"], ["ss"], keepdims=1),
            node("Sqrt", ["ss"], ["n"]),
            node("Div", ["x", "n"], ["y"]),
            node("LpNormalization", ["x"], ["y2"], axis=1, p=2),
        ],
        {"x": [3, 8]},
        ["y", "y2"],
        {"two": np.array(2.0, np.float32), "ax": np.array([1], np.int64)},
        opset=13,
    )
    check(m, {"x": rand(3, 8)})


@pytest.mark.parametrize("opset,axis", [(13, 1), (13, -1), (11, 1)])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op, opset, axis):
    m = model([node(op, ["x"], ["y"], axis=axis)], {"x": [2, 3, 4]}, ["y"], opset=opset)
    check(m, {"x": rand(2, 3, 4, lo=-3, hi=3)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    m = model(
        [node("Pad", ["x", "pads", "v"], ["y"], mode=mode)],
        {"x": [2, 3, 5, 6]},
        ["y"],
        {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "v": np.array(0.25, np.float32)},
        opset=13,
    )
    check(m, {"x": rand(2, 3, 5, 6)})


def test_pad_axes_and_old_opset():
    m = model(
        [node("Pad", ["x", "pads", "", "axes"], ["y"])],
        {"x": [2, 3, 5]},
        ["y"],
        {"pads": np.array([1, 2, 0, 3], np.int64), "axes": np.array([1, 2], np.int64)},
        opset=18,
    )
    check(m, {"x": rand(2, 3, 5)})
    m = model([node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0, 2, 0], value=1.5)], {"x": [2, 3, 5]}, ["y"], opset=10)
    check(m, {"x": rand(2, 3, 5)})


def test_constant_dropout_identity():
    m = model(
        [
            node("Constant", [], ["c"], value=helper.make_tensor("c", F32, [3], [1.0, 2.0, 3.0])),
            node("Constant", [], ["ratio"], value_float=0.4),
            node("Mul", ["x", "c"], ["m"]),
            node("Dropout", ["m", "ratio"], ["d"]),
            node("Identity", ["d"], ["y"]),
        ],
        {"x": [2, 3]},
        ["y"],
        opset=13,
    )
    check(m, {"x": rand(2, 3)})


# ----------------------------------------------------------------------------------- quantisation


def _q(shape, dtype=np.int8):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, size=shape).astype(dtype)


@pytest.mark.parametrize(
    "case",
    ["per-tensor", "per-axis", "blocked-axis1", "blocked-trimmed-axis0", "blocked-uint8-no-zero"],
)
def test_dequantize_linear_folds_into_conv_weight(case):
    """A DequantizeLinear -> Reshape -> Conv weight path folds to an fp32 Conv that matches ORT."""
    cout, cin, k = 6, 4, 3
    n = cin * k * k  # 36 quantised values per output channel
    if case == "per-tensor":
        q, s, z, attrs = _q((cout, n)), np.array(0.01, np.float32), np.array(3, np.int8), {}
    elif case == "per-axis":
        q, s, z, attrs = _q((cout, n)), rand(cout, lo=0.001, hi=0.02), _q((cout,)), {"axis": 0}
    elif case == "blocked-axis1":
        q, s, z, attrs = _q((cout, n)), rand(cout, 3, lo=0.001, hi=0.02), _q((cout, 3)), {"axis": 1, "block_size": 12}
    elif case == "blocked-trimmed-axis0":  # 6 rows in blocks of 4: the last block is cut to 2
        q, s, z, attrs = _q((cout, n)), rand(2, n, lo=0.001, hi=0.02), _q((2, n)), {"axis": 0, "block_size": 4}
    else:
        q, s, z, attrs = _q((cout, n), np.uint8), rand(cout, 5, lo=0.001, hi=0.02), None, {"axis": 1, "block_size": 8}
    inits = {"q": q, "s": s, "shape": np.array([cout, cin, k, k], np.int64)}
    dq_in = ["q", "s"]
    if z is not None:
        inits["z"] = z
        dq_in.append("z")
    m = model(
        [
            node("DequantizeLinear", dq_in, ["wf"], **attrs),
            node("Reshape", ["wf", "shape"], ["w"]),
            node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[1, 1, 1, 1]),
        ],
        {"x": [2, cin, 7, 7]},
        ["y"],
        inits,
        opset=21,
    )
    net = check(m, {"x": rand(2, cin, 7, 7)}, atol=1e-5, rtol=1e-4)
    assert [type(s).__name__ for s in net.steps] == ["Conv"]
    assert net.steps[0].weight.dtype == torch.float32


def test_dequantize_linear_blocked_values():
    q = torch.tensor([[1, 2, 3, 4, 5]], dtype=torch.int8)
    s = torch.tensor([[0.5, 2.0]])
    z = torch.tensor([[1, -1]], dtype=torch.int8)
    out = dequantize_linear(q, s, z, axis=1, block_size=3)
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 1.0, 10.0, 12.0]]))


def test_dequantize_linear_at_runtime():
    m = model(
        [node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        {"q": ([2, 3], TensorProto.UINT8)},
        ["y"],
        {"s": np.array(0.1, np.float32), "z": np.array(128, np.uint8)},
        opset=13,
    )
    check(m, {"q": RNG.integers(0, 256, size=(2, 3)).astype(np.uint8)})


# ----------------------------------------------------------------------------------- module behaviour


def test_gradient_matches_equivalent_torch_network():
    """Translated Conv+BN+PRelu+Flatten+Gemm has the same input gradient as the same torch layers."""
    w, slope, W, c = rand(4, 3, 3, 3), rand(4, 1, 1, lo=0, hi=0.3), rand(5, 4 * 6 * 6), rand(5)
    bn = _bn_inits(4)
    m = model(
        [
            node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
            _bn("c", "n"),
            node("PRelu", ["n", "slope"], ["p"]),
            node("Flatten", ["p"], ["f"]),
            node("Gemm", ["f", "W", "b"], ["y"], transB=1),
        ],
        {"x": [2, 3, 6, 6]},
        ["y"],
        {"w": w, "slope": slope, "W": W, "b": c, **bn},
    )
    net = OnnxModule(m)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, 1, 1, bias=False),
        torch.nn.BatchNorm2d(4, eps=1e-3),
        torch.nn.PReLU(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 36, 5),
    ).eval()
    with torch.no_grad():
        ref[0].weight.copy_(torch.from_numpy(w))
        ref[1].weight.copy_(torch.from_numpy(bn["bn_g"]))
        ref[1].bias.copy_(torch.from_numpy(bn["bn_b"]))
        ref[1].running_mean.copy_(torch.from_numpy(bn["bn_m"]))
        ref[1].running_var.copy_(torch.from_numpy(bn["bn_v"]))
        ref[2].weight.copy_(torch.from_numpy(slope.reshape(-1)))
        ref[4].weight.copy_(torch.from_numpy(W))
        ref[4].bias.copy_(torch.from_numpy(c))
    x = torch.from_numpy(rand(2, 3, 6, 6))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (net(xa) ** 2).sum().backward()
    (ref(xb) ** 2).sum().backward()
    assert xa.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)


def test_state_dict_roundtrip_and_unused_inputs_dropped():
    """Initializer-backed and unused graph inputs are not runtime inputs; the state dict is complete."""
    w = rand(2, 3, 1, 1)
    m = model(
        [node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]), node("Add", ["c", "k"], ["y"])],
        {"x": [1, 3, 4, 4], "w": [2, 3, 1, 1], "stale": [5], "k": [1]},
        ["y"],
        {"w": w, "k": np.array([0.5], np.float32)},
    )
    net = OnnxModule(m)
    assert net.input_names == ["x"]
    clone = OnnxModule(m)
    for p in clone.parameters():
        p.data.zero_()
    for b in clone.buffers():
        b.zero_()
    clone.load_state_dict(net.state_dict())
    x = torch.from_numpy(rand(2, 3, 4, 4))
    torch.testing.assert_close(clone(x), net(x))


def test_unsupported_operators_are_named_with_the_file(tmp_path):
    m = model(
        [
            node("Relu", ["x"], ["r"]),
            node("NonMaxSuppression", ["r", "r"], ["n"]),
            helper.make_node("FusedConv", ["r"], ["y"], domain="com.microsoft"),
        ],
        {"x": [1, 3]},
        ["y"],
    )
    path = tmp_path / "weird.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOperatorError) as info:
        OnnxModule(path)
    msg = str(info.value)
    assert "NonMaxSuppression" in msg and "com.microsoft.FusedConv" in msg and "weird.onnx" in msg
    assert "Relu" not in info.value.ops
    assert isinstance(info.value, PufaceError)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(OnnxImportError, match="bad.onnx"):
        OnnxModule(bad)
    with pytest.raises(OnnxImportError, match="no such file"):
        OnnxModule(tmp_path / "missing.onnx")


def test_supported_ops_cover_the_face_model_set():
    needed = {
        "Conv", "BatchNormalization", "PRelu", "Relu", "LeakyRelu", "Sigmoid", "Add", "Mul", "Sub", "Div", "Gemm",
        "MatMul",
        "Flatten", "Reshape", "Transpose", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "DequantizeLinear",
        "Constant", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "ReduceMean", "Softmax",
        "Pad", "Clip", "Sqrt", "Pow",
    }  # fmt: skip
    assert needed <= SUPPORTED_OPS


@pytest.mark.parametrize(
    "op,ins,kw",
    [
        ("Reshape", ["x"], {}),  # the shape input left out
        ("Reshape", ["x", ""], {}),  # ... or given as the empty name
        ("Expand", ["x", ""], {}),
        ("Slice", ["x", "", "e"], {}),
        ("Pad", ["x", ""], {"mode": "constant"}),
    ],
)
def test_a_missing_required_integer_input_is_a_clear_error(op, ins, kw):
    """A node without a required shape / starts / pads input is an OnnxImportError naming the operator and the
    input, both when it runs and when it is folded into a constant (with the file and the node), not a TypeError
    or IndexError from inside the op."""
    inits = {"e": np.array([1], np.int64)}
    runtime = model([node(op, ins, ["y"], **kw)], {"x": [2, 3]}, ["y"], inits)
    net = OnnxModule(runtime)
    with pytest.raises(OnnxImportError, match=rf"{op}: required input 1 is missing"):
        net(torch.zeros(2, 3))
    folded = model([node(op, ins, ["y"], name="n1", **kw)], {}, ["y"], {**inits, "x": rand(2, 3)})
    with pytest.raises(OnnxImportError, match=rf"folded\.onnx: node 'n1': {op}: required input 1 is missing"):
        OnnxModule(folded, source="folded.onnx")
