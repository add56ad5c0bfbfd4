"""The single nnsight trace: one forward pass that captures what the method needs, per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import nnsight
import torch

from .architectures import Family, Shape

# Where an edit can change the forward pass, in the order a block runs them.
SITES = (
    "embed",  # layer 0's input, the embeddings [T, d]
    "out_proj_input",  # the attention output projection's input [T, H * head_dim]: heads side by side
    "attention_output",  # the attention block's update [T, d]
    "probs",  # the captured copy of the attention probabilities [H, T, T] (the model never sees it)
    "ffn_out_proj_input",  # the FFN output projection's input [T, d_ff]: the neurons' activations
    "ffn_output",  # the FFN block's update [T, d]
    "block_output",  # the residual after the block [T, d]
)


@dataclass
class Capture:
    """What one forward pass leaves behind (batch dimension dropped; model dtype and device)."""

    resid: list[torch.Tensor]  # L+1 x [T, d]: resid[0] the embeddings, resid[l+1] after block l
    attn_out: list[torch.Tensor]  # L x [T, d]: the attention block's update (output bias included)
    ffn_out: list[torch.Tensor]  # L x [T, d]: the FFN block's update
    probs: list[torch.Tensor]  # L x [H, T, T]: attention probabilities, target x source
    values: list[torch.Tensor]  # L x [T, KV, head_dim]: value vectors of the KV heads (bias included)
    final_normed: torch.Tensor  # [T, d]: the final norm's output, what the unembedding reads
    neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [T, d_ff], if asked for


class LayerState(NamedTuple):
    """What an edit may read: this layer's tensors of the current (edited) forward pass so far."""

    resid_in: torch.Tensor  # [T, d]: the residual entering the block
    values: torch.Tensor | None  # [T, KV, head_dim]; None at "embed"
    probs: torch.Tensor | None  # [H, T, T]: the model's probabilities, from "attention_output" on


@dataclass(frozen=True)
class Edit:
    """One change of the forward pass: `apply(tensor, state)` changes the tensor at `site` of
    `layer` in place (tensor without the batch dimension, shapes as in SITES)."""

    site: str
    layer: int
    apply: Callable[[torch.Tensor, LayerState], None]

    def __post_init__(self):
        if self.site not in SITES:
            raise ValueError(f"unknown edit site {self.site!r}; sites are {SITES}")


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _at(edits, layer: int) -> dict[str, list[Edit]]:
    by_site: dict[str, list[Edit]] = {}
    for edit in edits or ():
        if edit.layer == layer:
            by_site.setdefault(edit.site, []).append(edit)
    return by_site


def _apply(edits: list[Edit], tensor: torch.Tensor, state: LayerState) -> None:
    for edit in edits:
        edit.apply(tensor, state)


def trace(model, family: Family, shape: Shape, input_ids: torch.Tensor, edits=None,
          neurons: bool = False) -> Capture:
    """Run the model once on `input_ids` [T] and capture residuals, updates, probabilities, values
    (and, with `neurons`, every layer's FFN activations).

    `edits` (a list of `Edit`; None: the plain forward pass) change the forward pass where they
    say, in the same trace; everything captured is what the edited pass computed.
    lmtt_widget.interventions makes them from ablations and patches.
    """
    return _forward(model, family, shape, input_ids, edits, neurons_of=set(range(shape.n_layers)) if neurons else None,
                    stop_after_neurons=False)


def neuron_activations(model, family: Family, shape: Shape, input_ids: torch.Tensor, layers: Sequence[int],
                       edits=None) -> dict[int, torch.Tensor]:
    """{layer: [T, d_ff]}: the activations entering each of `layers`' FFN output projection in
    the forward pass with `edits` (after that layer's own neuron edits); the pass stops after
    the last of them."""
    return _forward(model, family, shape, input_ids, edits, neurons_of=set(layers))[1]


def _forward(model, family: Family, shape: Shape, input_ids: torch.Tensor, edits=None,
             neurons_of: set[int] | None = None, stop_after_neurons: bool = True):
    n_tokens = input_ids.shape[0]

    def rows(tensor: torch.Tensor) -> torch.Tensor:  # [1, T, ...] or [T, ...] -> [T, ...]
        return tensor.reshape(n_tokens, *tensor.shape[-1:])

    def editable(tensor: torch.Tensor) -> torch.Tensor:  # rows() that is surely a view: edits reach the model
        return tensor.view(n_tokens, *tensor.shape[-1:])

    with torch.no_grad(), model.trace(input_ids[None]) as tracer:
        resid, attn_out, ffn_out = nnsight.save([]), nnsight.save([]), nnsight.save([])
        probs, values, neurons = nnsight.save([]), nnsight.save([]), nnsight.save({})
        for layer in range(shape.n_layers):
            modules = family.modules(model, layer)
            here = _at(edits, layer)
            if layer == 0:
                embeddings = _first(modules["block"].input)
                if "embed" in here:
                    x = editable(embeddings)
                    _apply(here["embed"], x, LayerState(x, None, None))
                resid.append(rows(embeddings))
            value_proj = rows(modules["value_proj"].output)
            values.append(family.values(value_proj, shape.n_heads, shape.n_kv_heads, shape.head_dim))
            if "out_proj_input" in here:
                state = LayerState(resid[-1], values[-1], None)
                _apply(here["out_proj_input"], editable(_first(modules["out_proj"].input)), state)
            attention = modules["attention"].output
            if "attention_output" in here or "probs" in here:
                state = LayerState(resid[-1], values[-1], attention[1][0])
                _apply(here.get("attention_output", []), editable(attention[0]), state)
                captured_probs = attention[1][0].clone()
                _apply(here.get("probs", []), captured_probs, state)
                probs.append(captured_probs)
            else:
                probs.append(attention[1][0])
            attn_out.append(rows(attention[0]))
            if "ffn_out_proj_input" in here:
                state = LayerState(resid[-1], values[-1], probs[-1])
                _apply(here["ffn_out_proj_input"], editable(_first(modules["ffn_out_proj"].input)), state)
            if neurons_of and layer in neurons_of:
                neurons[layer] = editable(_first(modules["ffn_out_proj"].input)).clone()
                if stop_after_neurons and layer == max(neurons_of):
                    tracer.stop()
            ffn = modules["ffn"].output
            if "ffn_output" in here:
                _apply(here["ffn_output"], editable(_first(ffn)), LayerState(resid[-1], values[-1], probs[-1]))
            ffn_out.append(rows(ffn))
            block_output = _first(modules["block"].output)
            if "block_output" in here:
                _apply(here["block_output"], editable(block_output), LayerState(resid[-1], values[-1], probs[-1]))
            resid.append(rows(block_output))
        final_normed = rows(family.get(model, "final_norm").output).save()
    neurons = {layer: acts.detach() for layer, acts in neurons.items()}
    if neurons_of and stop_after_neurons:
        return None, neurons

    def plain(tensors):
        return [t.detach() for t in tensors]

    return Capture(plain(resid), plain(attn_out), plain(ffn_out), plain(probs), plain(values), final_normed.detach(),
                   neurons)
