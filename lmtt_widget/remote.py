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
from .architectures import _get, family_of, shape_of
from .attention import check_gives_probs, output_probs
from .errors import check_floor, check_positive
from .run import LayerShares, Shares, block_shares, prompt_ids
from .tracing import _first, exclusive


def analyze_compact(model, prompt, *, remote: bool | str = False, floor: float = 0.01, k: int = 10,
                    distance: str = "l1", prepend_bos: bool | None = None,
                    budget_bytes: int = C.DEFAULT_BUDGET_BYTES) -> Shares:
    """Shares of every block's parts, computed inside the trace (remotely with `remote=True`);
    `prompt` is a string or one prompt's token ids, as for `analyze`."""
    floor, k = check_floor(floor), check_positive("k", k)
    budget_bytes = check_positive("budget_bytes", budget_bytes)
    p = C.distance_order(distance)
    hf_model = model._module  # on a remote model: the module tree on the meta device
    check_gives_probs(hf_model)
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    input_ids, _ = prompt_ids(model, prompt, prepend_bos)
    conv1d = type(family.modules(hf_model, 0)["out_proj"]).__name__ == "Conv1D"
    unembed = next(name for name, module in hf_model.named_modules() if module is hf_model.get_output_embeddings())
    n_tokens = len(input_ids)
    if remote:  # the server has no lmtt_widget: send the code this trace calls with it, by value
        nnsight.register(__name__.split(".")[0])
    with exclusive(model), model.trace(input_ids[None], remote=remote):
        kept = nnsight.save([])
        for layer in range(shape.n_layers):
            modules = family.modules(model, layer)
            x = _first(modules["block"].input).reshape(n_tokens, -1)
            values = family.values(modules["value_proj"].output.reshape(n_tokens, -1),
                                   shape.n_heads, shape.n_kv_heads, shape.head_dim)
            attention = modules["attention"].output
            ffn = modules["ffn"].output.reshape(n_tokens, -1)
            post = _first(modules["block"].output).reshape(n_tokens, -1)
            attn = attention[0].reshape(n_tokens, -1)
            kept.append(_compact_layer(x, attn, ffn, post, output_probs(attention), values, modules["out_proj"].weight,
                                       conv1d, shape.n_heads, shape.head_dim, shape.parallel, p, budget_bytes, floor))
        top = nnsight.save(_top_k(_get(model, unembed).output.reshape(n_tokens, -1), k))
    layers = [LayerShares(**{**layer, "edges": layer["edges"].long()}) for layer in kept]
    tokens = [model.tokenizer.decode([int(i)]) for i in input_ids]
    result = Shares(tokens, input_ids, shape, layers, distance, floor, top=top, decode=model.tokenizer.decode)
    # what came back from the trace
    result.payload_bytes = _bytes(kept) + _bytes([dict(enumerate(top))])  # type: ignore[attr-defined]
    return result


@torch.no_grad()
def _compact_layer(x, attn, ffn, post, probs, values, weight, conv1d: bool, n_heads: int, head_dim: int,
                   parallel: bool, p: int, budget: int, floor: float) -> dict[str, torch.Tensor]:
    """One block's shares (LayerShares' fields: a plain dict of tensors is what comes back from
    a remote trace); attention edges whose share, summed over heads, is above `floor` are kept."""
    w_in_out = weight.detach() if conv1d else weight.detach().T
    w_o = w_in_out.reshape(n_heads, head_dim, -1)
    shares = block_shares(x, attn, ffn, post, probs, values, w_o, parallel, p, budget, floor)
    payload = {name: tensor.cpu() for name, tensor in shares.tensors().items()}
    payload["edges"] = payload["edges"].to(torch.int32)  # half the bytes on the wire; made long again on arrival
    return payload


@torch.no_grad()
def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs, ids = logits.float().softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return probs.cpu(), ids.cpu()


def _bytes(dicts: list[dict]) -> int:
    return sum(t.numel() * t.element_size() for d in dicts for t in d.values())
