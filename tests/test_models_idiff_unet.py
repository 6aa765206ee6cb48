"""IDiff-Face ConditionalUNet: layout and function against the ADMIS fixtures, conditioning
behaviour, and the `ema_averaged_model_*.ckpt` format (specs/generative.md §3, §4.1, §7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from reference_weights import fill_state_dict, load_fixture, manifest
from torch import nn

from synface.models import build_model
from synface.models.admis_checkpoint import (
    SCHEDULE_BUFFER_NAMES,
    UNET_PREFIX,
    admis_ddpm_scheduler,
    load_admis_checkpoint,
    save_admis_checkpoint,
    schedule_buffers,
)
from synface.models.idiff_unet import ConditionalUNet

# A few hundred thousand parameters: behaviour tests that need no reference output.
SMALL_CA = {
    "initial_channels": 32,
    "channel_multipliers": [1, 2],
    "is_attention": [False, True],
    "context_input_channels": 16,
    "context_channels": 32,
    "context_dropout_probability": 0.25,
}
SMALL_ADAGN = {**SMALL_CA, "condition_type": "AdaGN"}


def filled(args: dict, seed: int = 1) -> ConditionalUNet:
    """A model with every weight non-zero (the fixture fill rule), so every path is live."""
    model = build_model("idiff_unet", **args)
    model.load_state_dict(fill_state_dict(manifest(model), seed), strict=True)
    return model.eval()


def small_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    context = torch.nn.functional.normalize(torch.randn(batch, 16, generator=generator), dim=1)
    return x, t, context


def run(model: nn.Module, *args: torch.Tensor | None, **kwargs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(*args, **kwargs)


def assert_within_fixture_tolerance(actual: torch.Tensor, meta: dict, arrays: dict) -> None:
    tolerance = meta["tolerance"]
    expected = arrays["eps"]
    assert actual.shape == expected.shape
    assert np.allclose(actual.numpy(), expected, atol=tolerance["atol"], rtol=tolerance["rtol"])


# ---------------------------------------------------------------- full CA-CPD25 model (216 M)


@pytest.fixture(scope="module")
def full_fixture():
    return load_fixture("admis_unet_ca_cpd25")


@pytest.fixture(scope="module")
def full_unet(full_fixture) -> nn.Module:
    """Built once on the meta device and given the filled tensors directly: default init of
    216 M parameters would only be overwritten (the fill alone takes ~25 s on one core)."""
    meta, shapes, _ = full_fixture
    with torch.device("meta"):
        model = build_model("idiff_unet", **meta["constructor"])
    filled_state = fill_state_dict(shapes, meta["seed"], meta["gain"])
    model.load_state_dict(filled_state, strict=True, assign=True)
    return model.eval()


def test_full_layout_equals_admis(full_unet, full_fixture):
    meta, shapes, _ = full_fixture
    # Same keys, shapes and order, so the released checkpoint loads strictly (specs §3.3, §7).
    assert list(manifest(full_unet).items()) == list(shapes.items())
    assert len(shapes) == meta["state_dict_keys"] == 842
    assert sum(p.numel() for p in full_unet.parameters()) == meta["param_count"] == 216_341_187


def test_full_model_computes_the_reference_function(full_unet, full_fixture):
    meta, _, arrays = full_fixture
    x, t, context = (torch.from_numpy(arrays[k]) for k in ("x", "t", "context"))
    assert_within_fixture_tolerance(run(full_unet, x, t, context), meta, arrays)


def test_schedule_buffers_equal_the_reference_wrapper(full_fixture):
    meta, _, arrays = full_fixture
    assert list(SCHEDULE_BUFFER_NAMES) == meta["schedule_buffers"]["names_in_state_dict_order"]
    scheduler = admis_ddpm_scheduler()
    # diffusers' linear schedule is the reference's betas bit for bit (specs §4.1).
    assert torch.equal(scheduler.betas, torch.from_numpy(arrays["buf_betas"]))
    buffers = schedule_buffers(scheduler.betas)
    assert list(buffers) == list(SCHEDULE_BUFFER_NAMES)
    for name, value in buffers.items():
        expected = torch.from_numpy(arrays[f"buf_{name}"])
        assert value.dtype == torch.float32
        # A few float32 ulps: the fixture machine's sqrt/exp kernels round differently.
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=0.0, msg=name)


def test_reference_schedule_rescales_betas_with_t():
    # specs §4.1: ddpm_2000.yaml is the same schedule at T=2000, betas 5e-5 … 0.01.
    betas = admis_ddpm_scheduler(2000).betas
    assert betas.shape == (2000,)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([5e-5, 0.01]))


# ---------------------------------------------------------------- tiny CA model (29 M)


@pytest.fixture(scope="module")
def tiny_fixture():
    return load_fixture("admis_unet_tiny")


@pytest.fixture(scope="module")
def tiny_unet(tiny_fixture) -> ConditionalUNet:
    meta, shapes, _ = tiny_fixture
    model = build_model("idiff_unet", **meta["constructor"])
    model.load_state_dict(fill_state_dict(shapes, meta["seed"], meta["gain"]), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_inputs(tiny_fixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, _, arrays = tiny_fixture
    return tuple(torch.from_numpy(arrays[k]) for k in ("x", "t", "context"))


def test_tiny_layout_equals_admis(tiny_unet, tiny_fixture):
    meta, shapes, _ = tiny_fixture
    assert list(manifest(tiny_unet).items()) == list(shapes.items())
    assert len(shapes) == meta["state_dict_keys"]
    assert sum(p.numel() for p in tiny_unet.parameters()) == meta["param_count"]


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_tiny_model_computes_the_reference_function(tiny_unet, tiny_fixture, tiny_inputs, backend):
    meta, _, arrays = tiny_fixture
    tiny_unet.set_attention_backend(backend)
    try:
        assert_within_fixture_tolerance(run(tiny_unet, *tiny_inputs), meta, arrays)
    finally:
        tiny_unet.set_attention_backend("sdpa")


def test_sdpa_and_matmul_attention_agree(tiny_unet, tiny_inputs):
    fused = run(tiny_unet, *tiny_inputs)
    tiny_unet.set_attention_backend("matmul")
    try:
        reference_path = run(tiny_unet, *tiny_inputs)
    finally:
        tiny_unet.set_attention_backend("sdpa")
    torch.testing.assert_close(fused, reference_path, rtol=1e-5, atol=1e-5)


def test_attention_backend_is_a_constructor_argument(tiny_fixture):
    meta, _, _ = tiny_fixture
    with torch.device("meta"):
        model = build_model("idiff_unet", **meta["constructor"], attention_backend="matmul")
    backends = {m.backend for m in model.modules() if hasattr(m, "backend")}
    assert backends == {"matmul"}
    with pytest.raises(ValueError, match="attention_backend"):
        model.set_attention_backend("flash")


def test_dropout_mask_rows_equal_the_empty_context(tiny_unet, tiny_inputs):
    x, t, context = tiny_inputs
    mask = torch.tensor([True, False])
    masked = run(tiny_unet, x, t, context, dropout_mask=mask)
    unconditional = run(tiny_unet, x, t, None)
    conditional = run(tiny_unet, x, t, context)
    torch.testing.assert_close(masked[0], unconditional[0])
    torch.testing.assert_close(masked[1], conditional[1])
    # The context matters, so the equalities above are not vacuous.
    assert not torch.allclose(unconditional[1], conditional[1], atol=1e-3)


def test_dropout_mask_is_validated(tiny_unet, tiny_inputs):
    x, t, context = tiny_inputs
    with pytest.raises(ValueError, match="dropout_mask"):
        tiny_unet(x, t, context, dropout_mask=torch.tensor([1, 0]))


# ---------------------------------------------------------------- ADMIS checkpoint format


def test_admis_checkpoint_round_trip_reproduces_the_fixture(
    tiny_unet, tiny_fixture, tiny_inputs, tmp_path
):
    meta, shapes, arrays = tiny_fixture
    path = tmp_path / "ema_averaged_model_200000.ckpt"
    save_admis_checkpoint(path, tiny_unet, admis_ddpm_scheduler())

    stored = torch.load(path, weights_only=True)
    expected_keys = [*SCHEDULE_BUFFER_NAMES, *(UNET_PREFIX + key for key in shapes)]
    assert list(stored) == expected_keys
    assert all(stored[name].shape == (1000,) for name in SCHEDULE_BUFFER_NAMES)

    fresh = build_model("idiff_unet", **meta["constructor"])
    load_admis_checkpoint(path, fresh)
    eps = run(fresh.eval(), *tiny_inputs)
    assert_within_fixture_tolerance(eps, meta, arrays)
    assert torch.equal(eps, run(tiny_unet, *tiny_inputs))


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    path = tmp_path / "ema_averaged_model_10.ckpt"
    save_admis_checkpoint(path, filled(SMALL_ADAGN), admis_ddpm_scheduler())
    return path


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.012),
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        admis_ddpm_scheduler(2000),
    ],
    ids=["beta_end", "cosine", "T2000"],
)
def test_checkpoint_with_another_schedule_is_refused(small_checkpoint, scheduler):
    model = build_model("idiff_unet", **SMALL_ADAGN)
    with pytest.raises(ValueError, match=r"ema_averaged_model_10\.ckpt.*schedule buffer 'betas'"):
        load_admis_checkpoint(small_checkpoint, model, scheduler)


def test_checkpoint_with_one_altered_buffer_names_it(small_checkpoint):
    state = torch.load(small_checkpoint, weights_only=True)
    state["sigmas"] = state["sigmas"] * 1.01
    torch.save(state, small_checkpoint)
    with pytest.raises(ValueError, match="schedule buffer 'sigmas'"):
        load_admis_checkpoint(small_checkpoint, build_model("idiff_unet", **SMALL_ADAGN))


def test_checkpoint_for_another_architecture_is_refused(small_checkpoint):
    with pytest.raises(ValueError, match=r"missing keys.*model yaml"):
        load_admis_checkpoint(small_checkpoint, build_model("idiff_unet", **SMALL_CA))


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADMIS_FRCSyn_ckpt"):
        load_admis_checkpoint(tmp_path / "absent.ckpt", build_model("idiff_unet", **SMALL_CA))


# ---------------------------------------------------------------- behaviour without a fixture


def test_adagn_layout_matches_the_reference_counts():
    # unet_cond_adagn.yaml: 134,595,939 parameters (specs §3.1); the context enters every
    # residual block (`res.context_emb.1`) and attention is self-attention (`attn.attention`).
    args = {
        "initial_channels": 96,
        "channel_multipliers": [1, 2, 2, 2],
        "is_attention": [False, True, True, True],
        "condition_type": "AdaGN",
        "context_dropout_probability": 0.25,
    }
    with torch.device("meta"):
        model = build_model("idiff_unet", **args)
    keys = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 134_595_939
    assert keys["down.0.res.context_emb.1.weight"].shape == (96, 256)
    assert keys["middle.attn.attention.to_q.weight"].shape == (768, 768, 1)
    assert keys["middle.attn.norm.weight"].shape == (768,)
    assert not any("c_proj_in" in key for key in keys)


def test_adagn_output_depends_on_the_context():
    model = filled(SMALL_ADAGN)
    x, t, context = small_inputs()
    eps = run(model, x, t, context)
    swapped = run(model, x, t, context.flip(0))
    assert eps.shape == x.shape
    assert (eps - swapped).norm() > 1e-2 * eps.norm()
    # Whole-context dropout gives the unconditional prediction in AdaGN too.
    masked = run(model, x, t, context, dropout_mask=torch.tensor([True, True]))
    torch.testing.assert_close(masked, run(model, x, t, None))


def test_masked_rows_stay_empty_under_context_dropout_in_train_mode():
    # CPD (element dropout) runs after the row replacement and leaves zeros at zero (specs §4.3).
    model = filled(SMALL_CA).train()
    x, t, context = small_inputs()
    torch.manual_seed(0)
    masked = run(model, x, t, context, dropout_mask=torch.tensor([True, True]))
    torch.testing.assert_close(masked, run(model, x, t, None))


def test_fresh_model_predicts_zero():
    # Zero-initialised final conv, residual conv2 and attention x_proj_out (specs §3.2).
    model = build_model("idiff_unet", **SMALL_CA).eval()
    x, t, context = small_inputs()
    assert torch.count_nonzero(run(model, x, t, context)) == 0
    assert all(
        torch.count_nonzero(m.conv2.weight) == 0 for m in model.modules() if hasattr(m, "conv2")
    )


def test_scalar_step_is_broadcast_over_the_batch():
    model = filled(SMALL_CA)
    x, _, context = small_inputs()
    torch.testing.assert_close(
        run(model, x, torch.tensor(7), context), run(model, x, torch.tensor([7, 7]), context)
    )


def test_gradients_reach_the_context_projection():
    model = filled(SMALL_CA).train()
    x, t, context = small_inputs()
    model(x, t, context).square().mean().backward()
    assert model.context_emb.weight.grad is not None
    assert model.context_emb.weight.grad.abs().sum() > 0


def test_unconditional_model_refuses_a_context():
    model = build_model("idiff_unet", **SMALL_ADAGN, is_context_conditional=False).eval()
    x, t, context = small_inputs()
    assert run(model, x, t).shape == x.shape
    assert not any(key.startswith("context_emb") for key in model.state_dict())
    with pytest.raises(ValueError, match="is_context_conditional=False"):
        model(x, t, context)


def test_learned_empty_context_is_a_state_dict_entry():
    model = filled({**SMALL_CA, "learn_empty_context": True})
    assert model.state_dict()["empty_context_embedding"].shape == (32,)
    x, t, context = small_inputs()
    masked = run(model, x, t, context, dropout_mask=torch.tensor([True, True]))
    torch.testing.assert_close(masked, run(model, x, t, None))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"condition_type": "DiffAE"}, "condition_type"),
        ({"is_attention": [False]}, "is_attention"),
        ({"initial_channels": 48}, "multiple of 32"),
    ],
)
def test_invalid_constructor_arguments_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        build_model("idiff_unet", **{**SMALL_CA, **change})
