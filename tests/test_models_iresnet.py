"""insightface / ElasticFace IResNet: layout and function against the r50 and r100 fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_weights import fill_state_dict, load_fixture, manifest

from synface.models import build_model
from synface.models.iresnet import IResNet
from synface.models.spec import load_backbone

DEMO_ARGS = {"depth": 18, "input_size": 32, "channels": (8, 16, 32, 64), "num_features": 32}
FIXTURES = [("iresnet50", 50, 475), ("iresnet100", 100, 925)]


@pytest.mark.parametrize(("fixture", "depth", "keys"), FIXTURES)
def test_state_dict_layout_equals_insightface(fixture, depth, keys):
    meta, shapes, _ = load_fixture(fixture)
    with torch.device("meta"):
        model = build_model("iresnet", depth=depth, **meta["constructor"])
    # Same keys, shapes and order, so insightface / ElasticFace checkpoints load strictly (§10).
    assert list(manifest(model).items()) == list(shapes.items())
    assert len(shapes) == meta["state_dict_keys"] == keys
    assert sum(p.numel() for p in model.parameters()) == meta["param_count"]


@pytest.mark.parametrize(("fixture", "depth", "keys"), FIXTURES)
def test_filled_weights_give_the_reference_embedding(fixture, depth, keys):
    meta, shapes, arrays = load_fixture(fixture)
    model = build_model("iresnet", depth=depth, **meta["constructor"])
    model.load_state_dict(fill_state_dict(shapes, meta["seed"], meta["gain"]), strict=True)
    model.eval()
    with torch.no_grad():
        embedding = model(torch.from_numpy(arrays["x"])).numpy()
    tolerance = meta["tolerance"]
    assert embedding.shape == arrays["embedding"].shape
    assert np.allclose(
        embedding, arrays["embedding"], atol=tolerance["atol"], rtol=tolerance["rtol"]
    )


def test_an_elasticface_checkpoint_loads_strictly_through_its_spec(tmp_path: Path):
    # ElasticFace saves backbone.module.state_dict() of iresnet100(num_features=512,
    # use_se=False) as 295672backbone.pth (recognition.md §11); filled values stand in for it.
    meta, shapes, _ = load_fixture("iresnet100")
    state = fill_state_dict(shapes, meta["seed"], meta["gain"])
    weights = tmp_path / "295672backbone.pth"
    torch.save(state, weights)
    spec = {"name": "iresnet", "args": {"depth": 100, "num_features": 512, "use_se": False}}
    weights.with_suffix(".json").write_text(json.dumps(spec))

    model, input_size = load_backbone(weights)

    assert input_size == 112
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_every_stage_opens_with_a_conv_shortcut():
    with torch.device("meta"):
        model = IResNet(**DEMO_ARGS)
    keys = manifest(model)
    # Including stage 1, where widths match and TFace would max-pool instead (§10, §13.3).
    widths = DEMO_ARGS["channels"]
    in_widths = (widths[0], *widths[:-1])
    for stage, (in_width, width) in enumerate(zip(in_widths, widths, strict=True), start=1):
        assert keys[f"layer{stage}.0.downsample.0.weight"] == [width, in_width, 1, 1]
        assert f"layer{stage}.1.downsample.0.weight" not in keys
    assert keys["fc.weight"] == [32, 64 * 2 * 2]


def test_init_follows_the_reference():
    torch.manual_seed(0)
    model = IResNet(**DEMO_ARGS)
    conv = model.layer3[0].conv1.weight
    assert conv.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.all(model.layer1[0].bn1.weight == 1)
    assert torch.all(model.layer1[0].bn1.bias == 0)
    assert torch.all(model.prelu.weight == 0.25)
    # The embedding BN's scale is fixed at 1: only its shift learns (§10).
    assert torch.all(model.features.weight == 1)
    assert not model.features.weight.requires_grad
    assert model.features.bias.requires_grad


def test_demo_variant_trains_and_keeps_the_frozen_scale():
    torch.manual_seed(0)
    model = build_model("iresnet", dropout=0.4, **DEMO_ARGS)
    # Every parameter, with momentum and weight decay, as the trainers build it: the frozen
    # scale stays at 1 only because it takes no gradient, not because the optimiser skips it.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = model.features.bias.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        embeddings = model(torch.rand(4, 3, 32, 32) * 2 - 1)
        (embeddings * torch.linspace(-1, 1, 32)).sum().backward()
        optimizer.step()
    assert embeddings.shape == (4, 32)
    assert not torch.equal(model.features.bias, before)
    assert torch.all(model.features.weight == 1)


def test_fp16_flag_changes_nothing_on_cpu():
    torch.manual_seed(0)
    plain = IResNet(**DEMO_ARGS).eval()
    half = IResNet(fp16=True, **DEMO_ARGS).eval()
    half.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        # The reference autocasts only CUDA work (torch.cuda.amp), as this implementation does.
        assert torch.equal(plain(x), half(x))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"depth": 101}, "depth"),
        ({"depth": 50, "input_size": 100}, "input_size"),
        ({"depth": 50, "channels": (64, 128, 256)}, "channels"),
        ({"depth": 50, "num_features": 0}, "num_features"),
        ({"depth": 50, "dropout": 1.0}, "dropout"),
        ({"depth": 50, "pretrained": True}, "pretrained"),
        ({"depth": 100, "use_se": True}, "use_se"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument), torch.device("meta"):
        build_model("iresnet", **kwargs)
