"""Routes computed where the model runs, for models no single machine here holds.

`analyze_compact` runs one nnsight trace whose body computes every block's shares next to the
model and sends back only compact results: the attention edges whose share is above a `floor` (sparse,
with their per-head shares), the residual and FFN shares, and the top tokens, never the activations.
With NDIF:

    from nnsight import TransformersModel
    model = TransformersModel("meta-llama/Llama-3.1-70B", attn_implementation="eager")  # weights stay there
    shares = lmtt_widget.analyze_compact(model, prompt, remote=True)
    shares.graph(threshold=0.04)                              # routes, computed here

The same code runs locally (`remote=False`), and `remote="local"` makes nnsight simulate the
remote path here (the trace is serialised, local modules hidden, and run), as the tests do.
Routes from compact shares are exact for thresholds at or above `floor`: a dropped edge's share
is at most `floor`, so thresholding (and renormalising, which drops the same parts) would have
removed it anyway, and nothing else changes.
"""

from __future__ import annotations

import nnsight
import torch

from . import contributions as C
from . import vocab as V
from .architectures import check_attention, family_of, post_norm_map, shape_of, text_config
from .errors import check_floor, check_positive
from .many import (
    BatchLayer,
    batch_layer,
    batch_size_for,
    check_padding,
    in_batches,
    padded,
    shares_of,
)
from .models import check_model
from .run import LayerShares, Shares, floor_for, prompt_ids
from .tracing import exclusive


def analyze_compact(model, prompt, *, remote: bool | str = False, floor: float = 0.01, k: int = 10,
                    distance: str = "l1", prepend_bos: bool | None = None,
                    budget_bytes: int = C.DEFAULT_BUDGET_BYTES) -> Shares:
    """Shares of every block's parts, computed inside the trace (remotely with `remote=True`);
    `prompt` is a string or one prompt's token ids, as for `analyze`."""
    check_model(model, "lw.analyze_compact")
    options = _checked(model, floor, k, distance, budget_bytes)
    return _compact_batch(model, [prompt_ids(model, prompt, prepend_bos)], remote, "right", *options)[0]


def analyze_compact_many(model, prompts, *, remote: bool | str = False, batch_size: int = 8, padding: str = "right",
                         progress: bool | None = None, floor: float = 0.01, k: int = 10, distance: str = "l1",
                         prepend_bos: bool | None = None, budget_bytes: int = C.DEFAULT_BUDGET_BYTES) -> list[Shares]:
    """`analyze_compact` of every prompt in `prompts` (as for `lw.analyze_many`), `batch_size` prompts
    per trace (per request with `remote=True`), padded on the `padding` side; the results in order,
    each what `analyze_compact` gives that prompt alone."""
    check_model(model, "lw.analyze_compact_many")
    options = _checked(model, floor, k, distance, budget_bytes)
    check_padding(padding)
    batch_size = batch_size_for(family_of(model._module), check_positive("batch_size", batch_size))
    return in_batches(model, prompts, batch_size, progress, prepend_bos,
                      lambda batch: _compact_batch(model, batch, remote, padding, *options))


def _checked(model, floor, k, distance, budget_bytes) -> tuple:
    hf_model = model._module  # on a remote model: the module tree on the meta device
    check_attention(hf_model, family_of(hf_model))
    return check_floor(floor), check_positive("k", k), distance, C.distance_order(distance), \
        check_positive("budget_bytes", budget_bytes)


def _compact_batch(model, prompts: list[tuple[torch.Tensor, str]], remote: bool | str, padding: str, floor: float,
                   k: int, distance: str, p: int, budget_bytes: int) -> list[Shares]:
    hf_model = model._module
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    conv1d = type(family.modules(hf_model, 0)["out_proj"]).__name__ == "Conv1D"
    clamp = family.value_clamp(text_config(hf_model))
    batch = padded([ids for ids, _ in prompts], model.tokenizer.pad_token_id or 0, padding)
    spans = batch.spans
    floors = [floor_for(floor, shape, length, budget_bytes) for _, _, length in spans]
    if remote:  # the server has no lmtt_widget: send the code this trace calls with it, by value
        nnsight.register(__name__.split(".")[0])
    with exclusive(model), model.trace(batch.ids, attention_mask=batch.mask, position_ids=batch.positions,
                                       remote=remote):
        kept = nnsight.save([])
        for layer in range(shape.n_layers):
            tensors = batch_layer(model, family, shape, layer, clamp)
            modules = family.modules(model, layer)
            weight = modules["out_proj"].weight.detach()
            w_o = post_norm_map(family, modules["attn_post_norm"],
                                (weight if conv1d else weight.T).reshape(shape.n_heads, shape.head_dim, -1))
            kept.append(_compact_layer(tensors, w_o, shape.parallel, p, budget_bytes, spans, floors))
        top = nnsight.save(top_k(model.output.logits, spans, k))
    results = []
    for i, (ids, _) in enumerate(prompts):
        payloads = [layer[i] for layer in kept]
        layers = [LayerShares(**{**payload, "edges": payload["edges"].long()}) for payload in payloads]
        tokens = [model.tokenizer.decode([int(t)]) for t in ids]
        result = Shares(tokens, ids, shape, layers, distance, floors[i], top=top[i], decode=model.tokenizer.decode)
        # what came back from the trace
        result.payload_bytes = _bytes(payloads) + _bytes([dict(enumerate(top[i]))])  # type: ignore[attr-defined]
        results.append(result)
    return results


@torch.no_grad()
def _compact_layer(tensors: BatchLayer, w_o: torch.Tensor, parallel: bool, p: int, budget: int, spans,
                   floors) -> list[dict[str, torch.Tensor]]:
    """Each prompt's shares of one block (LayerShares' fields: a plain dict of tensors is what
    comes back from a remote trace), from the batch's tensors and W_O [H, hd, d] (through any
    post-norm, as architectures.w_o gives it); attention edges whose share, summed over heads, is
    above the prompt's floor are kept."""
    payloads = []
    for shares in shares_of(tensors, w_o, parallel, p, budget, spans, floors):
        payload = {name: tensor.cpu() for name, tensor in shares.tensors().items()}
        payload["edges"] = payload["edges"].to(torch.int32)  # half the bytes on the wire; long again on arrival
        payloads.append(payload)
    return payloads


@torch.no_grad()
def top_k(logits: torch.Tensor, spans: list[tuple[int, int, int]], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each prompt's top-k next tokens at every position (probabilities [T, k], ids [T, k]), from
    the batch's logits [B, T, V] (the model's own: soft-capped or scaled where the family is)."""
    out = []
    for row, start, length in spans:
        probs, ids = V.top_of_logits(logits[row, start:start + length].float(), k)
        out.append((probs.cpu(), ids.cpu()))
    return out


def _bytes(dicts: list[dict]) -> int:
    return sum(t.numel() * t.element_size() for d in dicts for t in d.values())
