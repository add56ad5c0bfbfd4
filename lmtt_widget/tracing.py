"""The single nnsight trace: one forward pass that captures what the method needs, per layer."""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple

import nnsight
import torch

from .architectures import Family, Shape, norm_eps, text_config
from .attention import AttentionProbs, dense, output_probs, probabilities_inside
from .errors import LmttError

# Where an edit can change the forward pass, in the order a block runs them.
SITES = (
    "embed",  # layer 0's input, the embeddings [T, d]
    "out_proj_input",  # the attention output projection's input [T, H * head_dim]: heads side by side
    "attention_output",  # the attention block's update [T, d], as added to the residual (after any post-norm)
    "probs",  # the captured copy of the attention probabilities [H, T, T] (the model never sees it)
    "routing_weights",  # a mixture of experts' routing weights of the selected experts [T, k] (state.experts)
    "ffn_out_proj_input",  # the FFN output projection's input [T, d_ff]: the neurons' activations (dense FFNs)
    "ffn_output",  # the FFN block's update [T, d], as added to the residual (after any post-norm)
    "block_output",  # the residual after the block [T, d]
)


@dataclass
class Capture:
    """What one forward pass leaves behind (batch dimension dropped; model dtype and device)."""

    resid: list[torch.Tensor]  # L+1 x [T, d]: resid[0] the embeddings, resid[l+1] after block l
    attn_out: list[torch.Tensor]  # L x [T, d]: the attention block's update (output bias included)
    ffn_out: list[torch.Tensor]  # L x [T, d]: the FFN block's update
    # layer -> [H, T, T]: attention probabilities, target x source: tensors for the layers asked
    # for, AttentionProbs (computed when read) for the others where the model's attention gives them
    probs: dict[int, torch.Tensor | AttentionProbs]
    # L x [T, KV, head_dim]: value vectors of the KV heads (bias included; clamped where the model clamps them)
    values: list[torch.Tensor]
    final_normed: torch.Tensor | None  # [T, d]: the final norm's output, what the unembedding reads
    neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [T, d_ff], if asked for
    # L x [T] float32 for families with a norm after the attention (FFN) block, else empty: the
    # norm's per-position scale in this pass, frozen so that the update is linear in the block's
    # output (see lmtt_widget.architectures)
    attn_scale: list[torch.Tensor] = field(default_factory=list)
    ffn_scale: list[torch.Tensor] = field(default_factory=list)


class LayerTensors(NamedTuple):
    """One block's tensors, as `trace` hands them to `on_layer` while the model runs."""

    resid_in: torch.Tensor  # [T, d]
    attn_out: torch.Tensor  # [T, d]
    ffn_out: torch.Tensor  # [T, d]
    resid_out: torch.Tensor  # [T, d]
    probs: torch.Tensor | AttentionProbs  # [H, T, T] (an AttentionProbs computes the rows read)
    values: torch.Tensor  # [T, KV, head_dim]
    attn_scale: torch.Tensor | None = None  # [T]: the frozen scale of a norm after the attention block


class LayerState(NamedTuple):
    """What an edit may read: this layer's tensors of the current (edited) forward pass so far."""

    resid_in: torch.Tensor  # [T, d]: the residual entering the block
    values: torch.Tensor | None  # [T, KV, head_dim]; None at "embed"
    probs: torch.Tensor | AttentionProbs | None  # [H, T, T]: the probabilities, from "attention_output" on
    # [T] float32, from "attention_output" on, where a norm follows the attention block (else None):
    # its per-position scale in this pass. A head-source term's share of the update at target t is
    # attn_scale[t] * A^h_ts v^h_s (W_O^h M), architectures.w_o giving W_O^h M (see its design notes)
    attn_scale: torch.Tensor | None = None
    experts: torch.Tensor | None = None  # [T, k]: the selected experts, at "routing_weights"


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


_model_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(model):
    """Around every trace the package runs: one trace of a model at a time (nnsight's state is per
    model: two threads' traces of one model break each other), in eval mode, with the attention
    that gives probabilities (lmtt_widget.attention); afterwards the model is as it was."""
    hf_model = model._module
    with _model_locks_guard:
        lock = _model_locks.setdefault(hf_model, threading.RLock())
    with lock, _eval_mode(hf_model), probabilities_inside(hf_model):
        yield


@contextlib.contextmanager
def _eval_mode(hf_model):
    """No dropout in a trace; a model the user trains gets its own modes back."""
    if not hf_model.training:
        yield
        return
    modes = [(module, module.training) for module in hf_model.modules()]
    hf_model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


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


def trace(model, family: Family, shape: Shape, input_ids: torch.Tensor, edits=None, *, neurons: bool = False,
          probs: bool = False, on_layer: Callable[[int, LayerTensors], None] | None = None,
          grad: bool = False, on_output: Callable[[torch.Tensor], None] | None = None,
          logits_at: int | None = None) -> Capture:
    """Run the model once on `input_ids` [T] and capture residuals, updates, values, with `probs`
    every layer's attention probabilities and with `neurons` every dense FFN's activations.

    `on_layer(layer, tensors)` is called inside the trace as soon as a block has run, so that
    what it computes from the block's probabilities needs none of them kept ([L, H, T, T] is the
    largest thing a trace could keep). `edits` (a list of `Edit`; None: the plain forward pass)
    change the forward pass where they say, in the same trace; everything captured is what the
    edited pass computed. lmtt_widget.interventions makes them from ablations and patches.

    With `grad`, autograd records the forward pass (lmtt_widget.effects adds zero tensors that
    require gradients through `edits`) and `on_output(logits)` gets the model's output logits
    [T, V], still in the graph, inside the trace: where the gradients are taken. With `logits_at`
    the model computes the logits of that position only, where it can (transformers'
    logits_to_keep): `on_output` then gets [1, V].
    """
    every = set(range(shape.n_layers))
    blocks = family.get(model._module, "blocks")
    dense_ffns = {layer for layer in every if not family.is_moe(blocks[layer])}
    return _forward(model, family, shape, input_ids, edits, neurons_of=dense_ffns if neurons else set(),
                    probs_of=every if probs else set(), on_layer=on_layer, grad=grad, on_output=on_output,
                    logits_at=logits_at)


def neuron_activations(model, family: Family, shape: Shape, input_ids: torch.Tensor, layers: Sequence[int],
                       edits=None) -> dict[int, torch.Tensor]:
    """{layer: [T, d_ff]}: the activations entering each of `layers`' FFN output projection in
    the forward pass with `edits` (after that layer's own neuron edits); the pass stops after
    the last of them."""
    return _forward(model, family, shape, input_ids, edits, neurons_of=set(layers), stop_after=max(layers)).neurons


def attention_probs(model, family: Family, shape: Shape, input_ids: torch.Tensor, layers: Sequence[int],
                    edits=None) -> dict[int, torch.Tensor]:
    """{layer: [H, T, T]}: the attention probabilities of `layers` in the forward pass with
    `edits`; the pass stops after the last of them."""
    capture = _forward(model, family, shape, input_ids, edits, probs_of=set(layers), stop_after=max(layers))
    return capture.probs  # type: ignore[return-value]  # the layers of probs_of are kept dense


def _forward(model, family: Family, shape: Shape, input_ids: torch.Tensor, edits=None, *,
             neurons_of: AbstractSet[int] = frozenset(), probs_of: AbstractSet[int] = frozenset(),
             stop_after: int | None = None,
             on_layer: Callable[[int, LayerTensors], None] | None = None, grad: bool = False,
             on_output: Callable[[torch.Tensor], None] | None = None, logits_at: int | None = None) -> Capture:
    n_tokens = input_ids.shape[0]
    clamp = family.value_clamp(text_config(model._module))

    def rows(tensor: torch.Tensor) -> torch.Tensor:  # [1, T, ...] or [T, ...] -> [T, ...]
        return tensor.reshape(n_tokens, *tensor.shape[-1:])

    def editable(tensor: torch.Tensor) -> torch.Tensor:  # rows() that is surely a view: edits reach the model
        return tensor.view(n_tokens, *tensor.shape[-1:])

    autograd = torch.enable_grad() if grad else torch.no_grad()
    kwargs = {}
    if logits_at is not None and "logits_to_keep" in inspect.signature(model._module.forward).parameters:
        kwargs["logits_to_keep"] = torch.tensor([logits_at], device=input_ids.device)
    with autograd, exclusive(model), model.trace(input_ids[None], **kwargs) as tracer:
        resid, attn_out, ffn_out = nnsight.save([]), nnsight.save([]), nnsight.save([])
        probs, values, neurons = nnsight.save({}), nnsight.save([]), nnsight.save({})
        attn_scale, ffn_scale = nnsight.save([]), nnsight.save([])
        for layer in range(shape.n_layers):
            modules = family.modules(model, layer)
            here = _at(edits, layer)
            if layer == 0:
                embeddings = _first(modules["block"].input)
                if "embed" in here:
                    x = editable(embeddings)
                    _apply(here["embed"], x, LayerState(x, None, None))
                resid.append(rows(embeddings))
            attention_inputs = attention_inputs_of(family, modules)
            value_proj = rows(modules["value_proj"].output)
            values.append(family.value_vectors(value_proj, shape, clamp))
            if "out_proj_input" in here:
                state = LayerState(resid[-1], values[-1], None)
                _apply(here["out_proj_input"], editable(_first(modules["out_proj"].input)), state)
            attention = modules["attention"].output
            layer_probs = block_probs(family, shape, attention, attention_inputs, value_proj)
            attn_update, scale = block_update(family, modules, "attn", attention)
            if "attention_output" in here or "probs" in here:
                state = LayerState(resid[-1], values[-1], layer_probs, scale)
                _apply(here.get("attention_output", []), editable(attn_update), state)
                if "probs" in here:  # a copy to edit: dense [H, T, T] only where an edit needs it
                    layer_probs = layer_probs.clone()
                    _apply(here["probs"], layer_probs, state)
            if layer in probs_of:  # kept whole: what on_layer reads need not be computed again
                probs[layer] = layer_probs = dense(layer_probs)
            elif isinstance(layer_probs, AttentionProbs):  # kept as queries and keys: O(T d), rows when read
                probs[layer] = layer_probs
            attn_out.append(rows(attn_update).clone())  # a copy: some blocks add to their sub-blocks' outputs in place
            if scale is not None:
                attn_scale.append(scale)
            state = LayerState(resid[-1], values[-1], layer_probs, scale)
            if "routing_weights" in here:
                router = _router_output(modules, layer)
                _apply(here["routing_weights"], editable(router[1]), state._replace(experts=editable(router[2])))
            if "ffn_out_proj_input" in here or layer in neurons_of:
                activations = editable(_first(_dense_ffn_out_proj(modules, layer).input))
                _apply(here.get("ffn_out_proj_input", []), activations, state)
                if layer in neurons_of:
                    neurons[layer] = activations.clone()
            if layer == stop_after:
                tracer.stop()
            ffn = modules["ffn"].output
            ffn_update, scale = block_update(family, modules, "ffn", ffn)
            if "ffn_output" in here:
                _apply(here["ffn_output"], editable(ffn_update), state)
            ffn_out.append(rows(ffn_update).clone())  # a copy: Falcon adds the attention output to it in place
            if scale is not None:
                ffn_scale.append(scale)
            block_output = _first(modules["block"].output)
            if "block_output" in here:
                _apply(here["block_output"], editable(block_output), state)
            resid.append(rows(block_output))
            if on_layer is not None:
                on_layer(layer, LayerTensors(resid[-2], attn_out[-1], ffn_out[-1], resid[-1], layer_probs, values[-1],
                                             state.attn_scale))
        final_normed = rows(family.get(model, "final_norm").output).save()  # type: ignore[attr-defined]  # nnsight's
        if on_output is not None:
            on_output(model.output.logits[0])
        else:  # no logits: Run.logits makes them from final_normed when asked ([T, V] is large at length)
            tracer.stop()

    def plain(tensors):
        return [t.detach() for t in tensors]

    neurons = {layer: acts.detach() for layer, acts in neurons.items()}
    probs = {layer: p if isinstance(p, AttentionProbs) else p.detach() for layer, p in probs.items()}
    if stop_after is not None:
        return Capture([], [], [], probs, [], None, neurons)
    return Capture(plain(resid), plain(attn_out), plain(ffn_out), probs, plain(values), final_normed.detach(), neurons,
                   list(attn_scale), list(ffn_scale))


def attention_inputs_of(family: Family, modules: dict) -> dict | None:
    """The attention module's keyword inputs where the family computes probabilities from them
    (read before the value projection's output: nnsight needs the forward pass's order)."""
    return None if family.probs_from_inputs is None else modules["attention"].inputs[1]


def block_probs(family: Family, shape: Shape, output, inputs: dict | None, value_proj: torch.Tensor):
    """[H, T, T] (a tensor or an AttentionProbs): the attention probabilities of a block, from its
    attention's output, or where that has none and the family can, from its inputs and the value
    projection's output [T, width] (see Family.probs_from_inputs)."""
    from_inputs = family.probs_from_inputs
    if inputs is not None and from_inputs is not None and output[1] is None:
        return from_inputs(inputs, value_proj, shape)[0]
    return output_probs(output)


def block_update(family: Family, modules: dict, which: str, output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the update of sub-block `which` ("attn" or "ffn") as the residual receives it, [1, T, d];
    the frozen scale [T] float32 of the norm after it, or None where there is none), from the
    sub-block's `output` in a trace: read it before anything later in the block."""
    post_norm = modules[f"{which}_post_norm"]
    if post_norm is None:
        return _first(output), None
    raw = _first(output)
    return _first(post_norm.output), family.norm.scale(raw.reshape(-1, raw.shape[-1]), norm_eps(post_norm))


def _dense_ffn_out_proj(modules: dict, layer: int):
    if modules["ffn_out_proj"] is None:
        raise LmttError(f"layer {layer}'s FFN is a mixture of experts: it has no layer-wide neurons (each expert "
                        "has its own; see lmtt_widget.experts)")
    return modules["ffn_out_proj"]


def _router_output(modules: dict, layer: int):
    if modules["router"] is None:
        raise LmttError(f"layer {layer}'s FFN is dense: it has no experts to route")
    return modules["router"].output
