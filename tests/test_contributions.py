"""Proximity importances, shares and threshold-and-renormalise on hand-made vectors."""

import pytest
import torch

from lmtt_widget import contributions as C
from lmtt_widget.errors import LmttError


def test_proximity_reference_values():
    whole = torch.tensor([3.0, -4.0])
    parts = torch.tensor([[3.0, 0.0], [0.0, -4.0], [-1.0, 0.0]])
    assert C.proximity(parts, whole, 1).tolist() == [3.0, 4.0, 0.0]  # 7 - 4, 7 - 3, max(0, 7 - 8)
    assert C.proximity(parts, whole, 2).tolist() == pytest.approx([1.0, 2.0, 0.0])  # 5 - 4, 5 - 3


def test_distance_names():
    assert C.distance_order("l1") == 1 and C.distance_order("l2") == 2
    with pytest.raises(LmttError, match="distance"):
        C.distance_order("cosine")


def test_shares_sum_to_one_and_degenerate_rows_go_to_the_residual():
    heads = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # [T=2, S=1, H=2]
    (scaled,), residual = C.shares(heads, residual=torch.tensor([3.0, 0.0]))
    assert scaled[0].flatten().tolist() == [0.25, 0.0] and residual.tolist() == [0.75, 1.0]
    assert scaled[1].abs().sum() == 0 and not torch.isnan(scaled).any()


def test_threshold_renormalize():
    parts, residual = C.threshold_renormalize(torch.tensor([[0.3, 0.03]]), torch.tensor([0.67]), 0.04)
    assert parts.tolist()[0] == pytest.approx([0.3 / 0.97, 0.0]) and residual.tolist() == pytest.approx([0.67 / 0.97])


def test_l1_identity_behind_the_fast_path():
    """|y - x| = |y| - s x + 2 relu(s x - |y|), s = sign(y) with sign(0) = +1."""
    y = torch.tensor([2.0, -2.0, 0.0, 0.0, 1.0, -1.0], dtype=torch.float64)
    x = torch.tensor([3.0, 1.0, 1.0, -1.0, 0.5, -3.0], dtype=torch.float64)
    s = torch.where(y >= 0, 1.0, -1.0).double()
    assert torch.equal((y - x).abs(), y.abs() - s * x + 2 * (s * x - y.abs()).clamp_min(0))


def test_head_source_proximity_stays_within_a_tiny_budget():
    """Any budget works (chunks of one target at least) and gives the same result."""
    torch.manual_seed(0)
    whole, head_out = torch.randn(12, 16), torch.randn(12, 3, 16)
    probs = torch.randn(3, 12, 12).masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    for p in (1, 2):
        big = C.head_source_proximity(whole, probs, head_out, p, 2**30)
        torch.testing.assert_close(C.head_source_proximity(whole, probs, head_out, p, 1), big)
