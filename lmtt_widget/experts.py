"""Mixtures of experts: what a drill-down into a sparse FFN block needs.

In a mixture-of-experts block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) the FFN update at a
position with FFN input x (the block's pre-FFN norm of the residual) is

    ffn_out = sum_{e selected} w_e E_e(x)  +  sigmoid(g . x) S(x)        (the shared expert, if any)

with the router's selected experts and routing weights w_e, E_e(x) = W_down_e act(x), act(x)
the expert's neuron activations, S the shared expert (a dense FFN) and g its gate. Each term is
one expert's *write*; they sum to the FFN update exactly (there is no bias). The method treats
the whole update as one part of the FFN block (as a dense FFN's); a drill-down replaces that
part by the experts' writes, and an expert's write by its neurons' writes a_n w_e W_down_e[:, n].

Everything is recomputed from the FFN input with the model's own router and expert weights
(the same functions on the same input as in the forward pass); the FFN input comes from the
captured residual after attention through the block's own norm, so nothing more is traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .architectures import Experts, Family, _get


class ExpertShare(NamedTuple):
    expert: int | None  # the expert's index; None for the shared expert
    weight: float  # its routing weight (the shared expert: its gate, sigmoid(g . x))
    share: float  # its write's share of the FFN block's whole (the residual after the block)


@dataclass
class ExpertWrites:
    """The writes of one position's experts: the selected ones by routing weight, the shared last."""

    experts: list[int | None]  # None: the shared expert
    weights: torch.Tensor  # [n] float32: routing weights (the shared expert's gate)
    writes: torch.Tensor  # [n, d] float32: w_e E_e(x), what each adds to the FFN update


def _spec(family: Family) -> Experts:
    if family.experts is None:
        raise ValueError(f"the {family.name} family has no experts")
    return family.experts


def ffn_input(family: Family, block: Any, mid: torch.Tensor) -> torch.Tensor:
    """[..., d]: the FFN block's input, its norm of the residual after attention `mid` [..., d]."""
    norm = _get(block, _spec(family).input_norm)
    with torch.no_grad():
        return norm(mid.to(norm.weight.device, norm.weight.dtype))


@torch.no_grad()
def routing(family: Family, block: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected experts [T, k] long, their routing weights [T, k]) for FFN inputs x [T, d], as the
    router gives them."""
    _, weights, selected = _get(block, _spec(family).router)(x)
    return selected, weights


@torch.no_grad()
def expert_activations(family: Family, block: Any, x: torch.Tensor, expert: int) -> torch.Tensor:
    """[..., d_ff]: expert `expert`'s neuron activations at FFN inputs x [..., d], as its forward computes them."""
    experts = _get(block, _spec(family).experts)
    return experts._apply_gate(torch.nn.functional.linear(x, experts.gate_up_proj[expert]))


def expert_out_matrix(family: Family, block: Any, expert: int) -> torch.Tensor:
    """[d_ff, d]: row n is what neuron n of `expert` writes per unit activation (before its routing weight)."""
    return _get(block, _spec(family).experts).down_proj[expert].detach().T


def n_experts(family: Family, block: Any) -> int:
    return _get(block, _spec(family).experts).gate_up_proj.shape[0]


@torch.no_grad()
def shared_expert(family: Family, block: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """(gate [...], output [..., d], neuron activations [..., d_ff]) of the shared expert at
    FFN inputs x, or None where the block has none. The activations are the input of the
    shared expert's output projection, read in its own forward pass."""
    spec = _spec(family)
    if spec.shared is None or spec.shared_gate is None:
        return None
    shared = _get(block, spec.shared)
    seen = []
    handle = shared.down_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        output = shared(x)
    finally:
        handle.remove()
    gate = torch.sigmoid(_get(block, spec.shared_gate)(x))[..., 0]
    return gate, output, seen[0]


def shared_out_matrix(family: Family, block: Any) -> torch.Tensor:
    """[d_ff, d]: the shared expert's output projection, a row per neuron."""
    spec = _spec(family)
    if spec.shared is None:
        raise ValueError(f"the {family.name} family has no shared expert")
    return _get(block, spec.shared).down_proj.weight.detach().T
