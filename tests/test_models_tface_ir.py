"""TFace IR backbones: layout and function against the TFace IR_50 fixture; the demo variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_weights import fill_state_dict, load_fixture, manifest
from torch import nn

from synface.models import build_model
from synface.models.arcface import ArcFaceHead
from synface.models.tface_ir import TFaceIR

DEMO_ARGS = {"depth": 18, "input_size": 32, "channels": (16, 32, 64, 128)}


@pytest.fixture(scope="module")
def ir50_fixture():
    return load_fixture("tface_ir50")


@pytest.fixture(scope="module")
def ir50(ir50_fixture) -> nn.Module:
    meta, _, _ = ir50_fixture
    return build_model("tface_ir", depth=50, **meta["constructor"])


def test_ir50_state_dict_layout_equals_tface(ir50, ir50_fixture):
    meta, shapes, _ = ir50_fixture
    # Same keys, shapes and order, so TFace checkpoints load strictly (specs §4, §9).
    assert list(manifest(ir50).items()) == list(shapes.items())
    assert len(shapes) == meta["state_dict_keys"] == 467
    assert sum(p.numel() for p in ir50.parameters()) == meta["param_count"]


def test_ir50_computes_the_reference_function(ir50, ir50_fixture):
    meta, shapes, arrays = ir50_fixture
    ir50.load_state_dict(fill_state_dict(shapes, meta["seed"], meta["gain"]), strict=True)
    ir50.eval()
    with torch.no_grad():
        embedding = ir50(torch.from_numpy(arrays["x"])).numpy()
    tolerance = meta["tolerance"]
    assert embedding.shape == arrays["embedding"].shape
    assert np.allclose(
        embedding, arrays["embedding"], atol=tolerance["atol"], rtol=tolerance["rtol"]
    )


@pytest.mark.parametrize("depth", [100, 101])
def test_ir101_has_917_state_dict_entries(depth):
    # Shapes only: the meta device skips allocating and initialising 65 M parameters.
    with torch.device("meta"):
        model = build_model("tface_ir", depth=depth)
    assert len(model.state_dict()) == 917


def test_int_and_pair_input_size_build_the_same_layout():
    with torch.device("meta"):
        from_int = TFaceIR(depth=18, input_size=224)
        from_pair = TFaceIR(depth=18, input_size=[224, 224])
    assert manifest(from_int) == manifest(from_pair)
    assert manifest(from_int)["output_layer.3.weight"] == [512, 512 * 14 * 14]


def test_narrow_demo_variant_trains_one_step():
    torch.manual_seed(0)
    model = build_model("tface_ir", **DEMO_ARGS)
    head = ArcFaceHead(embedding_size=512, num_classes=5)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    embeddings = model(images)
    loss = F.cross_entropy(head(embeddings, labels).logits, labels)
    loss.backward()
    optimizer.step()

    assert embeddings.shape == (4, 512)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    changed = [not torch.equal(before[name], p) for name, p in model.named_parameters()]
    assert all(changed)


def test_init_follows_tface():
    torch.manual_seed(0)
    model = TFaceIR(**DEMO_ARGS)
    linear = model.output_layer[3]
    conv = model.body[0].res_layer[1]
    # kaiming_normal fan_out / relu: std = sqrt(2 / fan_out) (specs §4).
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert torch.count_nonzero(linear.bias) == 0
    assert torch.all(model.input_layer[1].weight == 1)
    assert torch.all(model.input_layer[1].bias == 0)
    assert torch.all(model.body[0].res_layer[3].weight == 0.25)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"depth": 152}, "depth"),
        ({"depth": 50, "input_size": 100}, "input_size"),
        ({"depth": 50, "input_size": (112, 96)}, "input_size"),
        ({"depth": 50, "input_size": (112, 112, 3)}, "input_size"),
        ({"depth": 50, "channels": (64, 128, 256)}, "channels"),
        ({"depth": 50, "embedding_size": 0}, "embedding_size"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument), torch.device("meta"):
        TFaceIR(**kwargs)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"known names: .*tface_ir"):
        build_model("ir_50")
