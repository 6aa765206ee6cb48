"""ArcFace head: TFace's margin maths (specs §5.2) checked against hand computations in 2-D."""

from __future__ import annotations

import math

import pytest
import torch

from synface.models.arcface import ArcFaceHead

SCALE, MARGIN = 64.0, 0.5


def unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def planar_head() -> ArcFaceHead:
    """Three classes whose directions lie at 0, 90 and 180 degrees in a 2-D embedding space."""
    head = ArcFaceHead(embedding_size=2, num_classes=3, scale=SCALE, margin=MARGIN)
    with torch.no_grad():
        # Column norms other than 1 check that the kernel is normalised per class.
        head.kernel.copy_(torch.tensor([unit(0.0), unit(math.pi / 2), unit(math.pi)]).T * 3.0)
    return head


def test_margin_above_and_below_the_fallback_threshold():
    head = planar_head()
    above, below = math.pi / 3, 2.9  # cos(pi - m) threshold sits at theta = pi - m ~ 2.64
    embeddings = torch.tensor([unit(above), unit(below)], dtype=torch.float64) * 5.0
    labels = torch.tensor([0, 0])

    out = head(embeddings, labels)

    expected_above = SCALE * math.cos(above + MARGIN)
    expected_below = SCALE * (math.cos(below) - math.sin(math.pi - MARGIN) * MARGIN)
    assert out.logits[0, 0].item() == pytest.approx(expected_above, abs=1e-4)
    assert out.logits[1, 0].item() == pytest.approx(expected_below, abs=1e-4)


def test_non_target_logits_are_scaled_cosines():
    head = planar_head()
    angles = [0.3, 2.0]
    out = head(torch.tensor([unit(a) for a in angles]), torch.tensor([1, 2]))

    class_angles = torch.tensor([0.0, math.pi / 2, math.pi])
    cosines = torch.cos(torch.tensor(angles)[:, None] - class_angles[None, :]) * SCALE
    assert torch.allclose(out.cosine_logits, cosines, atol=1e-4)
    assert torch.allclose(out.logits[0, [0, 2]], cosines[0, [0, 2]], atol=1e-4)
    assert torch.allclose(out.logits[1, [0, 1]], cosines[1, [0, 1]], atol=1e-4)


def test_head_runs_in_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    head = ArcFaceHead(embedding_size=16, num_classes=10)
    embeddings = torch.randn(4, 16).bfloat16()
    labels = torch.tensor([0, 3, 5, 9])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = head(embeddings, labels)
    plain = head(embeddings.float(), labels)

    assert under_autocast.logits.dtype == torch.float32
    assert under_autocast.cosine_logits.dtype == torch.float32
    # Bit-identical to a plain fp32 run: no bf16 matmul happened inside.
    assert torch.equal(under_autocast.logits, plain.logits)


def test_gradient_flows_through_the_margin():
    head = planar_head()
    angle = 1.0
    embedding = torch.tensor([unit(angle)], requires_grad=True)

    head(embedding, torch.tensor([0])).logits[0, 0].backward()

    # d/dphi of s*cos(phi + m) on the unit circle; a straight-through margin (insightface,
    # specs §10) would give -s*sin(phi) instead.
    tangent = torch.tensor([-math.sin(angle), math.cos(angle)])
    directional = (embedding.grad[0] @ tangent).item()
    assert directional == pytest.approx(-SCALE * math.sin(angle + MARGIN), rel=1e-4)
    assert head.kernel.grad is not None
    assert torch.count_nonzero(head.kernel.grad[:, 0]) > 0


def test_gradients_stay_finite_when_an_embedding_equals_its_class_direction():
    head = planar_head()
    embedding = torch.tensor([unit(0.0)], requires_grad=True)

    head(embedding, torch.tensor([0])).logits.sum().backward()

    assert torch.isfinite(embedding.grad).all()
    assert torch.isfinite(head.kernel.grad).all()


def test_kernel_layout_and_init_match_tface():
    torch.manual_seed(0)
    head = ArcFaceHead(embedding_size=512, num_classes=1000)
    assert list(head.state_dict()) == ["kernel"]
    assert head.kernel.shape == (512, 1000)
    assert head.kernel.std().item() == pytest.approx(0.01, rel=0.02)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        ArcFaceHead(embedding_size=512, num_classes=0)
    head = ArcFaceHead(embedding_size=4, num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
