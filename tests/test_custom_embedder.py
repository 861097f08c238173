"""Users' own face models (ONNX / TorchScript files) through `load_embedder(path, ...)`."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")

from puface.utils.errors import ConfigError, PufaceError  # noqa: E402
from puface.models import InputNormalization, load_embedder  # noqa: E402
from puface.models.custom import CustomModelError  # noqa: E402
from puface.models.onnx_import import UnsupportedOperatorError  # noqa: E402

ARCFACE = {"scale": 255, "mean": 127.5, "std": 127.5}


class TinyFace(nn.Module):
    """Conv-BN-PReLU-pool-fc: (N, 3, 24, 20) -> (N, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU()
        )
        self.fc = nn.Linear(8 * 12 * 10, 16)
        with torch.no_grad():
            bn = self.body[1]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


class BatchOneOnly(TinyFace):
    def forward(self, x):
        return self.fc(self.body(x).reshape(1, -1))


def export_onnx(net, path, size=(24, 20), dynamic=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.rand(1, 3, *size),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=dynamic,
            dynamo=False,
        )
    return path


def trace(net, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(net, example)


def reference(net, images, size, norm: InputNormalization):
    x = (
        F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        if images.shape[-2:] != size
        else images
    )
    if norm.order == "BGR":
        x = x.flip(1)
    x = (x * norm.scale - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(net(x), dim=1)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(3, 3, 30, 26)


def test_onnx_size_from_graph_normalisation_from_option(tmp_path, images):
    net = TinyFace()
    path = export_onnx(net, tmp_path / "tiny.onnx", dynamic={"x": {0: "N"}})
    emb = load_embedder(str(path), normalization=ARCFACE)
    assert emb.input_size == (24, 20) and emb.embedding_dim == 16 and emb.name == "tiny"
    assert emb.normalization == InputNormalization(255.0, (127.5,) * 3, (127.5,) * 3, "RGB")
    out = emb(images)
    torch.testing.assert_close(out, reference(net, images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)
    x = images.clone().requires_grad_(True)
    emb(x)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_onnx_exported_with_fixed_batch_one_runs_any_batch(tmp_path, images):
    net = TinyFace()
    path = export_onnx(net, tmp_path / "fixed.onnx")  # static (1, 3, 24, 20), Flatten inside
    emb = load_embedder(path, normalization=ARCFACE)
    torch.testing.assert_close(emb(images), reference(net, images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)
    with pytest.raises(CustomModelError, match="24x20 images but input_size is 112x112"):
        load_embedder(path, normalization=ARCFACE, input_size=112)


class ChannelsLast(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("dynamic", [None, {"x": {0: "n", 1: "h", 2: "w"}}])
def test_onnx_with_channels_last_input(tmp_path, images, dynamic):
    """A graph taking (N, H, W, 3), as TensorFlow exports do, is fed channels last; its size is read from the
    right dims."""
    net = TinyFace()
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ChannelsLast(net).eval(),
            (torch.rand(1, 24, 20, 3),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=dynamic,
            dynamo=False,
        )
    emb = load_embedder(str(path), normalization=ARCFACE, input_size=None if dynamic is None else (24, 20))
    assert emb.input_size == (24, 20)
    torch.testing.assert_close(emb(images), reference(net, images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)


def test_sidecar_json_gives_size_normalisation_and_name(tmp_path, images):
    net = TinyFace()
    path = export_onnx(net, tmp_path / "model.onnx", size=(24, 20), dynamic={"x": {0: "N", 2: "H", 3: "W"}})
    side = {
        "input_size": [24, 20],
        "scale": 1.0,
        "mean": [0.5, 0.4, 0.3],
        "std": 0.25,
        "order": "bgr",
        "name": "my-arcface",
        "licence": "mine",
    }
    (tmp_path / "model.json").write_text(json.dumps(side))
    emb = load_embedder(str(path))
    assert emb.name == "my-arcface" and emb.licence == "mine" and emb.input_size == (24, 20)
    assert emb.normalization == InputNormalization(1.0, (0.5, 0.4, 0.3), (0.25,) * 3, "BGR")
    torch.testing.assert_close(emb(images), reference(net, images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)
    # keyword options win over the sidecar
    emb2 = load_embedder(str(path), normalization=ARCFACE, name="override")
    assert emb2.name == "override" and emb2.normalization.scale == 255.0


def test_missing_normalisation_names_options_and_sidecar_keys(tmp_path):
    path = export_onnx(TinyFace(), tmp_path / "model.onnx")
    with pytest.raises(CustomModelError) as info:
        load_embedder(str(path))
    msg = str(info.value)
    assert "scale, mean, std" in msg and "model.json" in msg and "normalization=" in msg
    (tmp_path / "model.json").write_text(json.dumps({"scale": 255, "mean": 127.5}))
    with pytest.raises(CustomModelError, match="missing std"):
        load_embedder(str(path))


def test_dynamic_size_without_input_size_is_an_error(tmp_path):
    path = export_onnx(TinyFace(), tmp_path / "dyn.onnx", dynamic={"x": {0: "N", 2: "H", 3: "W"}})
    with pytest.raises(CustomModelError, match=r"input_size.*dyn\.json"):
        load_embedder(str(path), normalization=ARCFACE)


def test_bad_sidecar(tmp_path):
    path = export_onnx(TinyFace(), tmp_path / "m.onnx")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError, match="m.json"):
        load_embedder(str(path))
    (tmp_path / "m.json").write_text(json.dumps({**ARCFACE, "mena": 1}))
    with pytest.raises(ConfigError, match="mena"):
        load_embedder(str(path))
    (tmp_path / "m.json").write_text(json.dumps({**ARCFACE, "mean": [1, 2]}))
    with pytest.raises(ConfigError, match="3 numbers"):
        load_embedder(str(path))


@pytest.mark.parametrize("entry, wrong", [
    ({"scale": None}, "scale must be a positive number"),
    ({"scale": 0}, "scale must be a positive number"),
    ({"mean": [127.5, None, 127.5]}, "mean must be a number or 3 numbers"),
    ({"input_size": 0}, "input_size must be"),
    ({"input_size": [23.5, 20]}, "input_size must be"),
    ({"input_size": True}, "input_size must be"),
    ({"embedding_dim": "sixteen"}, "embedding_dim must be a positive whole number"),
    ({"embedding_dim": 16.5}, "embedding_dim must be a positive whole number"),
])
def test_sidecar_values_of_the_wrong_type_name_the_sidecar(tmp_path, entry, wrong):
    """A sidecar value that is no number (null, a string) or not a valid one is a ConfigError naming the
    sidecar and the key, not a bare TypeError / ValueError, nor silently truncated (23.5 -> 23, 16.5 -> 16)."""
    path = export_onnx(TinyFace(), tmp_path / "m.onnx", dynamic={"x": {2: "h", 3: "w"}})
    (tmp_path / "m.json").write_text(json.dumps({"input_size": [24, 20], **ARCFACE, **entry}))
    with pytest.raises(ConfigError, match=f"m.json: {wrong}"):
        load_embedder(str(path))


def test_torchscript(tmp_path, images):
    net = TinyFace()
    path = tmp_path / "tiny.pt"
    trace(net, torch.rand(2, 3, 24, 20)).save(str(path))
    norm = InputNormalization(scale=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    emb = load_embedder(str(path), input_size=(24, 20), normalization=norm, embedding_dim=16)
    torch.testing.assert_close(emb(images), reference(net, images, (24, 20), norm), atol=1e-5, rtol=1e-4)
    x = images.clone().requires_grad_(True)
    emb(x).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(CustomModelError, match="input_size"):
        load_embedder(str(path), normalization=norm)
    with pytest.raises(CustomModelError, match="embedding_dim 128"):
        load_embedder(str(path), input_size=(24, 20), normalization=norm, embedding_dim=128)


def test_torch_export_program(tmp_path, images):
    net = TinyFace()
    ep = torch.export.export(net, (torch.rand(2, 3, 24, 20),), dynamic_shapes={"x": {0: torch.export.Dim("N")}})
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, str(path))
    (tmp_path / "tiny.json").write_text(json.dumps({"input_size": [24, 20], **ARCFACE}))
    emb = load_embedder(str(path))
    torch.testing.assert_close(emb(images), reference(net, images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)


def test_torch_export_program_with_static_shapes(tmp_path, images):
    """A program exported without dynamic_shapes fixes batch and size: the size comes from it (a sidecar
    that contradicts it is refused) and any batch runs."""
    net = TinyFace()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 24, 20),)), str(path))
    (tmp_path / "static.json").write_text(json.dumps(ARCFACE))
    emb = load_embedder(str(path))
    assert emb.input_size == (24, 20)
    x = torch.cat([images, images[:2]])  # 5 images: not a multiple of the exported batch
    torch.testing.assert_close(emb(x), reference(net, x, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4)
    (tmp_path / "static.json").write_text(json.dumps({**ARCFACE, "input_size": [32, 32]}))
    with pytest.raises(CustomModelError, match="static.pt2: the graph takes 24x20 images but input_size is 32x32"):
        load_embedder(str(path))


def test_batch_one_only_model_runs_image_by_image(tmp_path, images):
    net = BatchOneOnly()
    path = tmp_path / "b1.pt"
    trace(net, torch.rand(1, 3, 24, 20)).save(str(path))
    with pytest.warns(UserWarning, match="batch 1"):
        emb = load_embedder(str(path), input_size=(24, 20), normalization=ARCFACE)
    torch.testing.assert_close(
        emb(images), reference(TinyFace(), images, (24, 20), emb.normalization), atol=1e-5, rtol=1e-4
    )


class IntegerOutput(TinyFace):
    def forward(self, x):
        return (super().forward(x) * 100).round().to(torch.int64)


def test_a_model_with_integer_output_is_refused_at_load(tmp_path):
    """Integer 'embeddings' cannot be normalised or differentiated: refused when the file is loaded, not
    later by every image an attack or evaluation feeds it."""
    path = tmp_path / "int.pt"
    trace(IntegerOutput(), torch.rand(2, 3, 24, 20)).save(str(path))
    with pytest.raises(CustomModelError, match="int.pt: the model outputs int64 values; expected float embeddings"):
        load_embedder(str(path), input_size=(24, 20), normalization=ARCFACE)


def test_a_scripted_model_that_fails_on_the_input_says_why(tmp_path):
    """A TorchScript error's first line is only 'The following operation failed in the TorchScript
    interpreter.'; the load error gives the cause (here: a channels-last model fed (N, 3, H, W))."""
    path = tmp_path / "nhwc.pt"
    torch.jit.script(ChannelsLast(TinyFace()).eval()).save(str(path))
    with pytest.raises(
        CustomModelError, match=r"nhwc.pt: the model fails on a \(N, 3, 24, 20\) input: RuntimeError: .*channels"
    ):
        load_embedder(str(path), input_size=(24, 20), normalization=ARCFACE)


def test_a_model_traced_in_training_mode_is_refused(tmp_path):
    """Traced in training mode, a BatchNorm normalises with the batch's statistics for good (eval() does not
    change a trace): an image's embedding would depend on the images batched with it."""
    net = TinyFace().train()
    path = tmp_path / "train_mode.pt"
    trace(net, torch.rand(2, 3, 24, 20)).save(str(path))
    with pytest.raises(
        CustomModelError, match="train_mode.pt: .*changes with the other images in its batch.*model.eval"
    ):
        load_embedder(str(path), input_size=(24, 20), normalization=ARCFACE)
    trace(net.eval(), torch.rand(2, 3, 24, 20)).save(str(path))
    assert load_embedder(str(path), input_size=(24, 20), normalization=ARCFACE).embedding_dim == 16


def test_state_dict_is_not_torchscript(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(TinyFace().state_dict(), path)
    with pytest.raises(CustomModelError, match="torch.jit"):
        load_embedder(str(path), input_size=24, normalization=ARCFACE)
    txt = tmp_path / "model.pt"
    txt.write_text("hello")
    with pytest.raises(CustomModelError, match="not a TorchScript file"):
        load_embedder(str(txt), input_size=24, normalization=ARCFACE)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CustomModelError, match="no such model file"):
        load_embedder(str(tmp_path / "nothere.onnx"), normalization=ARCFACE)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe garbage " * 50)
    with pytest.raises(CustomModelError, match="junk.onnx.*ONNX"):
        load_embedder(str(junk), normalization=ARCFACE)


def test_unsupported_operator_names_op_and_file(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("GridSample", ["x", "grid"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 8, 8, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "gs.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedOperatorError, match=r"gs\.onnx.*GridSample"):
        load_embedder(str(path), normalization=ARCFACE)
    assert issubclass(UnsupportedOperatorError, PufaceError)


def test_evaluation_embeddings_follow_the_sidecars_normalisation_and_size(tmp_path):
    """The evaluation caches a victim's embeddings by its name and weights: a model whose sidecar was corrected
    (normalisation, input size) kept being served the embeddings the wrong settings gave. They are recomputed."""
    from evaluation_helpers import write_colour_faces
    from puface.defenses import create_defense
    from puface.evaluation.cache import ContentCache
    from puface.evaluation.data import EvaluationData
    from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec

    data = EvaluationData.prepare(write_colour_faces(tmp_path / "faces", per_identity=4), seed=0, image_size=32)
    path = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 16)
    ).eval()
    torch.jit.script(net).save(str(path))  # any input size
    cache = ContentCache(":memory:")

    def embeddings(sidecar: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the protocol's embeddings of the training images, the model's own) with this sidecar."""
        path.with_suffix(".json").write_text(json.dumps(sidecar))
        emb = load_embedder(str(path))
        proto = Protocol(
            data,
            [data.train.labels[0]],
            [AttackSpec("clean", None)],
            {"tiny": emb},
            [TrainerSpec("nn", "nn")],
            {"none": create_defense("none")},
            cache=cache,
            cloak_cache=None,
            progress=False,
        )
        return proto.embed("tiny", data.train.images, data.train.hashes), emb.embed(data.train.images.float() / 255)

    first, own = embeddings({"input_size": [24, 20], "scale": 1, "mean": 0, "std": 1})
    torch.testing.assert_close(first, own)
    for sidecar in ({"input_size": [24, 20], **ARCFACE}, {"input_size": [26, 20], "scale": 1, "mean": 0, "std": 1}):
        got, own = embeddings(sidecar)
        assert not torch.allclose(own, first, atol=1e-3)
        torch.testing.assert_close(got, own)


class Detached(TinyFace):
    """Cuts the graph: embeddings without gradients to the input (useless as an attack surrogate)."""

    def forward(self, x):
        return self.fc(self.body(x.detach()).flatten(1))


def test_models_info_checks_a_model_and_measures_it_on_a_folder(tmp_path, johns_dir, capsys):
    """`puface models info`: a user's model is described and checked (exit 0); one whose graph cuts the gradient
    fails the gradient check (exit 1); with --images a real model identifies the johns far above chance and a
    random one does not."""
    from puface.cli import main

    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyFace()).save(str(path))
    (tmp_path / "tiny.json").write_text(json.dumps({"input_size": [24, 20], "scale": 1, "mean": 0.5, "std": 0.5}))
    assert main(["models", "info", str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "embedding_dim   16" in out and "ok   gradients: reach the input" in out and "FAIL" not in out
    cut = tmp_path / "cut.pt"
    torch.jit.script(Detached()).save(str(cut))
    (tmp_path / "cut.json").write_text((tmp_path / "tiny.json").read_text())
    assert main(["models", "info", str(cut), "--device", "cpu"]) == 1
    assert "FAIL gradients" in capsys.readouterr().out

    from puface.models.checks import identification
    from puface.models import create_embedder

    real = identification(create_embedder("dlib-resnet29"), johns_dir, per_identity=4)
    rand = identification(load_embedder(str(path)), johns_dir, per_identity=4)
    assert real["images"] == 20 and real["identities"] == 5 and real["chance"] == pytest.approx(3 / 19)
    assert real["accuracy"] >= 0.9 and real["same"] > real["other"] + 0.1
    assert rand["accuracy"] < real["accuracy"]
    assert main(["models", "info", "dlib-resnet29", "--images", str(johns_dir), "--per-identity", "3"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["models", "info", str(path), "--images", str(johns_dir), "--per-identity", "3"]) == 0
    assert "warning: the model barely tells these people apart" in capsys.readouterr().out


def test_a_cut_pt2_file_is_named_as_a_torch_export_program(tmp_path):
    """A .pt2 file that is not a zip (cut short) was reported as 'not a readable ONNX model'."""
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CustomModelError, match="model.pt2: not a torch.export program"):
        load_embedder(str(bad), input_size=(24, 20), normalization=ARCFACE)


def test_the_help_says_a_torchscript_or_pt2_model_file_runs_code():
    """A TorchScript or torch.export file is a program, and torch.export.load unpickles a .pt2 file (any Python code
    runs): `puface models --help`, where own model files are explained, did not say so."""
    from click.testing import CliRunner

    from puface.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["models", "--help"]).output.split())
    assert "TorchScript or .pt2 file is a program that puface runs" in text
    assert "(any Python code can run): load only such files you trust" in text


def test_a_missing_model_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """`reproduce lfw-unseen-faceres` without faceres.pt said only "faceres.pt: no such model file", though a bare
    file name is also looked for in $PUFACE_MODELS: the user was not told that, nor whether it was set. Now the one
    line names the current folder and $PUFACE_MODELS (its value, or that it is not set) and says what to do."""
    from puface.models.custom import MissingModelFileError
    from puface.utils.errors import MissingFileError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUFACE_MODELS", raising=False)
    with pytest.raises(MissingModelFileError) as e:
        load_embedder("faceres.pt")
    msg = str(e.value)
    assert msg.startswith("faceres.pt: no such model file, neither in the current folder") and "\n" not in msg
    assert f"({tmp_path})" in msg and "$PUFACE_MODELS (not set)" in msg and "set PUFACE_MODELS" in msg
    assert isinstance(e.value, MissingFileError) and e.value.named == "faceres.pt"
    monkeypatch.setenv("PUFACE_MODELS", str(tmp_path / "models"))
    with pytest.raises(MissingModelFileError, match=re.escape(f"$PUFACE_MODELS ({tmp_path / 'models'})")):
        load_embedder("faceres.pt")
