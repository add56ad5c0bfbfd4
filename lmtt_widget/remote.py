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
from .architectures import check_attention, family_of, post_norm_map, shape_of, text_config
from .errors import check_floor, check_positive
from .many import (
    BatchLayer,
    batch_layer,
    batchable,
    check_padding,
    group_shares,
    groups,
    in_batches,
    padded,
    top_k,
    unembedding,
)
from .run import LayerShares, Shares, block_shares, floor_for, prompt_ids
from .tracing import _first, attention_inputs_of, block_probs, block_update, exclusive


def analyze_compact(model, prompt, *, remote: bool | str = False, floor: float = 0.01, k: int = 10,
                    distance: str = "l1", prepend_bos: bool | None = None,
                    budget_bytes: int = C.DEFAULT_BUDGET_BYTES) -> Shares:
    """Shares of every block's parts, computed inside the trace (remotely with `remote=True`);
    `prompt` is a string or one prompt's token ids, as for `analyze`."""
    floor, k = check_floor(floor), check_positive("k", k)
    budget_bytes = check_positive("budget_bytes", budget_bytes)
    p = C.distance_order(distance)
    hf_model = model._module  # on a remote model: the module tree on the meta device
    family = family_of(hf_model)
    check_attention(hf_model, family)
    shape = shape_of(hf_model, family)
    clamp = family.value_clamp(text_config(hf_model))
    input_ids, _ = prompt_ids(model, prompt, prepend_bos)
    conv1d = type(family.modules(hf_model, 0)["out_proj"]).__name__ == "Conv1D"
    n_tokens = len(input_ids)
    if remote:  # the server has no lmtt_widget: send the code this trace calls with it, by value
        nnsight.register(__name__.split(".")[0])
    with exclusive(model), model.trace(input_ids[None], remote=remote):
        kept = nnsight.save([])
        for layer in range(shape.n_layers):
            modules = family.modules(model, layer)
            x = _first(modules["block"].input).reshape(n_tokens, -1)
            inputs = attention_inputs_of(family, modules)
            proj = modules["value_proj"].output.reshape(n_tokens, -1)
            values = family.value_vectors(proj, shape, clamp)
            attention = modules["attention"].output
            probs = block_probs(family, shape, attention, inputs, proj)
            attn, scale = block_update(family, modules, "attn", attention)
            attn = attn.reshape(n_tokens, -1).clone()  # copies: some blocks add to their sub-blocks' outputs in place
            ffn = block_update(family, modules, "ffn", modules["ffn"].output)[0].reshape(n_tokens, -1).clone()
            post = _first(modules["block"].output).reshape(n_tokens, -1)
            weight = modules["out_proj"].weight.detach()
            w_o = post_norm_map(family, modules["attn_post_norm"],
                                (weight if conv1d else weight.T).reshape(shape.n_heads, shape.head_dim, -1))
            kept.append(_compact_layer(x, attn, ffn, post, probs, values, w_o, scale,
                                       shape.parallel, p, budget_bytes, floor))
        top = nnsight.save(_top_k(model.output.logits.reshape(n_tokens, -1), k))
    layers = [LayerShares(**{**layer, "edges": layer["edges"].long()}) for layer in kept]
    tokens = [model.tokenizer.decode([int(i)]) for i in input_ids]
    result = Shares(tokens, input_ids, shape, layers, distance, floor, top=top, decode=model.tokenizer.decode)
    # what came back from the trace
    result.payload_bytes = _bytes(kept) + _bytes([dict(enumerate(top))])  # type: ignore[attr-defined]
    return result


def analyze_compact_many(model, prompts, *, remote: bool | str = False, batch_size: int = 8, padding: str = "right",
                         progress: bool | None = None, floor: float = 0.01, k: int = 10, distance: str = "l1",
                         prepend_bos: bool | None = None, budget_bytes: int = C.DEFAULT_BUDGET_BYTES) -> list[Shares]:
    """`analyze_compact` of every prompt in `prompts` (as for `lw.analyze_many`), `batch_size` prompts
    per trace (per request with `remote=True`), padded on the `padding` side; the results in order,
    each what `analyze_compact` gives that prompt alone."""
    check_padding(padding)
    hf_model = model._module
    family = family_of(hf_model)
    check_attention(hf_model, family)
    if not batchable(hf_model, family):  # the batched reader does not know its layers: one prompt at a time
        return in_batches(model, prompts, 1, progress, prepend_bos, lambda batch: [analyze_compact(
            model, batch[0][0], remote=remote, floor=floor, k=k, distance=distance, prepend_bos=None,
            budget_bytes=budget_bytes)])
    options = (check_floor(floor), check_positive("k", k), distance, C.distance_order(distance),
               check_positive("budget_bytes", budget_bytes))
    return in_batches(model, prompts, batch_size, progress, prepend_bos,
                      lambda batch: _compact_batch(model, batch, remote, padding, *options))


def _compact_batch(model, prompts: list[tuple[torch.Tensor, str]], remote: bool | str, padding: str, floor: float,
                   k: int, distance: str, p: int, budget_bytes: int) -> list[Shares]:
    hf_model = model._module
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    conv1d = type(family.modules(hf_model, 0)["out_proj"]).__name__ == "Conv1D"
    batch = padded([ids for ids, _ in prompts], model.tokenizer.pad_token_id or 0, padding)
    spans = batch.spans
    grouped = groups([length for _, _, length in spans])
    floors = [floor_for(floor, shape, length, budget_bytes) for _, _, length in spans]
    if remote:  # the server has no lmtt_widget: send the code this trace calls with it, by value
        nnsight.register(__name__.split(".")[0])
    with exclusive(model), model.trace(batch.ids, attention_mask=batch.mask, position_ids=batch.positions,
                                       remote=remote):
        kept = nnsight.save([])
        for layer in range(shape.n_layers):
            tensors = batch_layer(model, family, shape, layer)
            weight = family.modules(model, layer)["out_proj"].weight
            kept.append(_compact_group_layer(tensors, weight, conv1d, shape.n_heads, shape.head_dim, shape.parallel, p,
                                             budget_bytes, spans, grouped, floors))
        top = nnsight.save(top_k(unembedding(model, hf_model).output, spans, k))
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
def _compact_group_layer(tensors: BatchLayer, weight, conv1d: bool, n_heads: int, head_dim: int, parallel: bool,
                         p: int, budget: int, spans, grouped, floors) -> list[dict[str, torch.Tensor]]:
    """Each prompt's shares of one block (LayerShares' fields: a plain dict of tensors is what
    comes back from a remote trace), from the batch's tensors; attention edges whose share,
    summed over heads, is above the prompt's floor are kept."""
    w_in_out = weight.detach() if conv1d else weight.detach().T
    w_o = w_in_out.reshape(n_heads, head_dim, -1)
    payloads: dict[int, dict[str, torch.Tensor]] = {}
    for members in grouped:
        found = group_shares(tensors, w_o, parallel, p, budget, [spans[i] for i in members],
                             [floors[i] for i in members])
        for i, shares in zip(members, found):
            payload = {name: tensor.cpu() for name, tensor in shares.tensors().items()}
            payload["edges"] = payload["edges"].to(torch.int32)  # half the bytes on the wire; long again on arrival
            payloads[i] = payload
    return [payloads[i] for i in range(len(spans))]


@torch.no_grad()
def _compact_layer(x, attn, ffn, post, probs, values, w_o, scale, parallel: bool, p: int, budget: int,
                   floor: float) -> dict[str, torch.Tensor]:
    """One block's shares (LayerShares' fields: a plain dict of tensors is what comes back from
    a remote trace); attention edges whose share, summed over heads, is above `floor` are kept."""
    shares = block_shares(x, attn, ffn, post, probs, values, w_o, parallel, p, budget, floor, target_scale=scale)
    payload = {name: tensor.cpu() for name, tensor in shares.tensors().items()}
    payload["edges"] = payload["edges"].to(torch.int32)  # half the bytes on the wire; made long again on arrival
    return payload


@torch.no_grad()
def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs, ids = logits.float().softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return probs.cpu(), ids.cpu()


def _bytes(dicts: list[dict]) -> int:
    return sum(t.numel() * t.element_size() for d in dicts for t in d.values())
