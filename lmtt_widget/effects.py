"""Effects: a causal measure beside the proximity shares (design.md §6).

A share says how much a part *looks like* the whole it feeds; an effect says what removing the
part does to the prediction. The metric is

    m = logit(answer) - logit(contrast)   at one position (default: the top prediction against the runner-up)

and the effect of a part is m(clean) - m(without the part): positive when the part supports the
answer over the contrast, negative when it opposes it. Parts are those of the analysis: the
attention edge terms z^h_{i<-j} = A^h[i,j] v^h_j W_O^h (the edge ablation ("edge", l, j, i, h) of
lmtt_widget.interventions removes exactly that term), FFN updates, and neurons' writes a_n W_out[n].

- method "gradient" (attribution patching): one forward and one backward pass give g_{l,i}, the
  gradient of m with respect to layer l's attention update at position i (and likewise for the
  FFN update); the effect of an edge is the first-order change, g_{l,i} . z^h_{i<-j}
  = A^h[i,j] <W_O^h g_{l,i}, v^h_j>: one [T, T, H] contraction per layer, made a chunk of targets
  at a time within the run's memory budget.
- method "integrated" (EAP-IG): the same contraction with g averaged over `steps` points
  alpha = (k - 1/2) / steps on a path that scales every attention block's edge terms by alpha
  (alpha -> 0: all removed; 1: clean; the output projection's bias stays). It costs `steps`
  forward and backward passes, and follows the model where it is not linear in the parts.

Which to use: "gradient" for ranking parts by what removing each one does (the routes by effect,
faithfulness): on the demo model's benchmark (bench/README.md) it recovers 0.92 of the best 10
edges' drop (Spearman 0.95 with the exact single-edge drops), "integrated" 0.69 (Spearman 0.34) at
8x the cost; paths kept nearer the clean run (only the target's edges scaled, only one layer's,
alpha in (1/2, 1)) did better than the full path and still worse than the plain gradient. A single
edge's removal is a small step from the clean run, which the gradient there describes; the
integrated path averages over models with far more removed. Use "integrated" where the question is
a large removal: its effects of the edges into a position add up to removing them all (exactly,
as steps grow, within one block).

`refine=k` (either method) screens by the estimate and measures the largest exactly: the k edge
terms into the position and the k FFN updates at it with the largest |estimate| are each removed
alone by a one-token rerun from the cached keys and values (lmtt_widget.interventions.removals),
and their exact effects replace the estimates (`Effects.refined` lists both). A first-order
estimate is wrong where m is far from linear in a part: on the demo model's facts prompts a head
reading the country with A > 0.9 is past m's peak along its write, and its gradient effect has the
wrong sign (bench/README.md). Entries not refined stay estimates.

Norms after a sub-block (Gemma 2/3's sandwich norms, OLMo 2/3's post-norms): a part is defined as
the shares define it (lmtt_widget.architectures' design notes), with the norm's per-position scale
frozen at its real value: the residual receives s_i M(attn_out_i), so an edge's term is
s_i A^h[i,j] v^h_j (W_O^h M), and removing it (the edge ablation) subtracts exactly that from the
norm's output, the scale left as it was. Its effect is g_{l,i} . (that term), with g_{l,i} the
gradient with respect to the update the residual receives (the norm's output), equivalently the
gradient at the norm's input through the norm's Jacobian with the scale held fixed (s_i M, not the
full Jacobian, whose extra term moves the scale). FFN updates, neurons' and experts' writes alike.

Mixtures of experts: the FFN update is one part, as a dense FFN's; `experts` splits its effect
into the selected experts' writes w_e E_e(x) (and the shared expert's), `expert_neurons` an
expert's into its neurons' writes. Removing a write leaves the routing as it was; what the router
would choose instead is a jump that no gradient sees (and the integrated path crosses such jumps
without counting them): measure it with `exact`.

`Effects.exact` measures any set of ablations exactly, by rerunning the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import graph as G
from . import interventions as I
from .architectures import post_norm_map, w_o
from .errors import LmttError, check_count, check_positive, check_threshold
from .interventions.removals import EdgeRemovals, Part
from .tracing import Edit, exclusive, trace

METHODS = ("gradient", "integrated")
FLOOR = 1e-3  # of |m|: the edges kept when not all of them fit the memory budget (see LayerEffects)


class NeuronEffect(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index
    effect: float
    activation: float


class Refined(NamedTuple):
    """A part whose first-order estimate `refine` replaced by its exact effect."""

    part: Part  # (layer, source, head) of an edge into the position; source None: the FFN update at it
    estimate: float  # the gradient's (or integrated) estimate it replaced
    exact: float  # m(clean) - m(without the part), by a rerun: what eff.attention / eff.ffn now hold


class ExpertEffect(NamedTuple):
    expert: int | None  # the expert's index; None for the shared expert
    weight: float  # its routing weight (the shared expert: its gate)
    effect: float  # of removing its write


def _top_neurons(effects: torch.Tensor, acts: torch.Tensor, k: int) -> list[NeuronEffect]:
    """The k largest |effects| [d_ff], with their neurons' activations [d_ff]."""
    ids = effects.abs().topk(min(k, effects.numel())).indices
    return [NeuronEffect(int(i), float(effects[i]), float(acts[i])) for i in ids]


@dataclass
class LayerEffects:
    """One layer's attention edge effects, float32 on the CPU, kept sparse like run.LayerShares:
    every causal edge when they fit the run's memory budget, else the edges whose per-head effects
    add up in absolute value to more than `FLOOR` |m| (so an edge left out moves m by less)."""

    edges: torch.Tensor  # [n, 2] long: (target, source), sorted by target, then source
    heads: torch.Tensor  # [n, H]: the effect of each head's term of each kept edge
    ffn: torch.Tensor  # [T]: the effect of each position's FFN update

    def dense(self) -> torch.Tensor:
        """[T_target, T_source, H] (0 where not kept, and on future tokens)."""
        n_tokens = self.ffn.shape[0]
        out = self.heads.new_zeros(n_tokens, n_tokens, self.heads.shape[1])
        out[self.edges[:, 0], self.edges[:, 1]] = self.heads
        return out

    def at(self, targets: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """[k, H]: the per-head effects of the edges sources[k] -> targets[k] (0 where not kept)."""
        return G.lookup(self.edges, self.heads, targets, sources, self.ffn.shape[0])

    def into(self, target: int) -> torch.Tensor:
        """[n]: the rows (of `edges` and `heads`) of the kept edges into `target`."""
        return (self.edges[:, 0] == target).nonzero()[:, 0]


class Effects:
    """Effects of every part of `run` on the metric m = logit(answer) - logit(contrast) at
    `position` (see the module docstring). Made by `run.effects(...)`."""

    def __init__(self, run, position: int, answer: int, contrast: int, method: str, steps: int, value: float,
                 layers: list[LayerEffects], ffn_grads: torch.Tensor):
        self.run = run
        self.position = position
        self.answer = answer  # token ids
        self.contrast = contrast
        self.method = method
        self.steps = steps
        self.value = value  # m in the clean run
        self.layers = layers
        self._ffn_grads = ffn_grads  # [L, T, d] float32: dm/d(each FFN update), for the neurons
        self.refined: list[Refined] = []  # the parts measured exactly (see effects(refine=...))

    @property
    def metric(self) -> str:
        run = self.run
        return (f"logit({run.decode(self.answer)!r}) - logit({run.decode(self.contrast)!r}) after token "
                f"{self.position} {run.tokens[self.position]!r}")

    def __repr__(self) -> str:
        steps = f", {self.steps} steps" if self.method.startswith("integrated") else ""
        return f"Effects({self.method}{steps}: {self.metric} = {self.value:.3f})"

    def attention(self, layer: int) -> torch.Tensor:
        """[T_target, T_source, H] float32: the effect of removing each head's term of each edge
        (exactly 0 on future tokens)."""
        return self.layers[self.run.layer(layer)].dense()

    def edge(self, layer: int, target: int, source: int) -> torch.Tensor:
        """[H]: each head's effect on the edge source -> target of `layer`."""
        targets, sources = torch.tensor([self.run.position(target)]), torch.tensor([self.run.position(source)])
        return self.layers[self.run.layer(layer)].at(targets, sources)[0]  # not the layer's dense [T, T, H]

    def ffn(self, layer: int) -> torch.Tensor:
        """[T]: the effect of removing each position's FFN update of `layer`."""
        return self.layers[self.run.layer(layer)].ffn

    def neurons(self, layer: int, position: int, k: int = 20) -> list[NeuronEffect]:
        """The k neurons of a dense FFN at (`layer`, `position`) whose writes a_n W_out[n] have the
        largest |effect| (a mixture of experts' neurons belong to its experts: `expert_neurons`)."""
        k = check_positive("k", k)
        if self.run.has_experts(layer):
            raise LmttError(f"layer {layer}'s FFN is a mixture of experts: it has no layer-wide neurons; read each "
                            f"expert's effect with eff.experts({layer}, {position}) and its neurons' with "
                            f"eff.expert_neurons({layer}, {position}, expert)")
        acts = self.run.neuron_activations(layer)[self.run.position(position)]
        return _top_neurons(self.neuron_effects(layer, position), acts, k)

    def neuron_effects(self, layer: int, position: int) -> torch.Tensor:
        """[d_ff]: the effect of every neuron's write at (`layer`, `position`) of a dense FFN."""
        return self._of_writes(self.run.neuron_writes(layer, position), layer, position)

    def experts(self, layer: int, position: int) -> list[ExpertEffect]:
        """A mixture of experts at (`layer`, `position`): each selected expert's routing weight and
        the effect of removing its write w_e E_e(x) (the routing left as it is), the shared expert
        (None) last. They add up to the FFN update's effect (`ffn(layer)[position]`)."""
        writes = self.run.expert_writes(layer, position)
        effects = self._of_writes(writes.writes, layer, position)
        return [ExpertEffect(e, float(w), float(f)) for e, w, f in zip(writes.experts, writes.weights, effects)]

    def expert_neurons(self, layer: int, position: int, expert: int | None, k: int = 20) -> list[NeuronEffect]:
        """The k neurons of a selected `expert` (None: the shared expert) at (`layer`, `position`)
        whose writes a_n w W_down[:, n] have the largest |effect|."""
        k = check_positive("k", k)
        writes = self.run.expert_neuron_writes(layer, position, expert)
        acts = self.run.expert_neuron_activations(layer, position, expert)
        return _top_neurons(self._of_writes(writes, layer, position), acts, k)

    @torch.no_grad()
    def _of_writes(self, writes: torch.Tensor, layer: int, position: int) -> torch.Tensor:
        """[n]: the effects of writes [n, d] into the FFN update at (`layer`, `position`), as the
        residual receives them."""
        grad = self._ffn_grads[self.run.layer(layer), self.run.position(position)]
        return writes.float().cpu() @ grad

    def exact(self, ablations, mode: str = "zero") -> float:
        """m(clean) - m(with `ablations`), rerunning the model: any set of edges, heads, neurons and
        blocks at once, as lmtt_widget.interventions writes them (e.g. [("edge", 5, 2, 9),
        ("head", 7, 1)])."""
        logits = I.ablated_logits(self.run, ablations, mode)
        return self.value - self._metric(logits)

    def _metric(self, logits: torch.Tensor) -> float:
        row = logits[self.position]
        return float(row[self.answer] - row[self.contrast])

    def graph(self, threshold: float = 0.04):
        """The routes by effect (lmtt_widget.graph.effect_routes): edges whose |effect| exceeds
        `threshold` |m|, supporting and opposing."""
        return G.effect_routes(self.run, self, check_threshold(threshold))

    def scale(self) -> float:
        """|m|, at least 1e-3: what thresholds on effects are relative to."""
        return max(abs(self.value), 1e-3)


# -- computing them --------------------------------------------------------------------------------

def effects(run, answer=None, contrast=None, *, token: int = -1, method: str = "gradient", steps: int = 8,
            refine: int = 0) -> Effects:
    """The effects of every attention edge, FFN update and neuron on logit(answer) - logit(contrast)
    at position `token` (see Effects and the module docstring). `answer`: the top prediction by
    default; `contrast`: the runner-up (the best token other than the answer). Each is a one-token
    string (" Mary") or a token id. `method` "gradient" costs one forward and one backward pass;
    "integrated" `steps` of each (about `steps` times the cost). Rank single parts by "gradient"
    (more faithful on every benchmarked task, module docstring); "integrated" estimates large joint
    removals.

    `refine` k > 0: screen by the estimate, then measure the largest exactly. The k edge terms
    into `token` (layer, source, head) with the largest |estimate|, and the k FFN updates at
    `token` with the largest (at most one per layer), are each removed alone in a rerun; their
    exact effects replace the estimates in `attention` / `edge` / `ffn` (and so in the routes by
    effect and the faithfulness ranking), `refined` lists them with both values, and `method`
    reads e.g. "gradient+exact(10)". A first-order estimate is wrong where the model is far from
    linear in a part (on the demo model's facts prompts one saturated head reading the country
    gets the wrong sign: bench/README.md). Cost: up to 2k one-token passes from the cached keys and
    values of the earlier tokens, batched within the run's memory budget (an intervened run: up to
    2k whole forward passes). Every other entry stays the first-order estimate, and so do the
    neurons' and experts' effects (their sum is then no longer the refined FFN update's)."""
    I.check_run(run, "run", "effects")
    position = run.position(token)
    answer, contrast = metric_tokens(run, position, answer, contrast)
    if method not in METHODS:
        raise LmttError(f"method must be one of {METHODS}, got {method!r}")
    steps = check_positive("steps", steps) if method == "integrated" else 1
    refine = check_count("refine", refine)
    alphas = [1.0] if method == "gradient" else [(k + 0.5) / steps for k in range(steps)]
    attn_grads, ffn_grads = _mean_gradients(run, position, answer, contrast, alphas)
    value = float(run.logits[position, answer] - run.logits[position, contrast])
    floor = 0.0 if _all_fit(run) else FLOOR * max(abs(value), 1e-3)
    layers = [_layer_effects(run, layer, attn_grads[layer], ffn_grads[layer], floor)
              for layer in range(run.shape.n_layers)]
    result = Effects(run, position, answer, contrast, method, steps, value, layers, ffn_grads)
    if refine:
        _refine(result, refine)
        result.method = f"{method}+exact({refine})"
    return result


def _refine(effects: Effects, k: int) -> None:
    """Measure the k largest edge terms into the position and FFN updates at it exactly, and put
    the exact effects in place of the estimates (see `effects`)."""
    run, position = effects.run, effects.position
    covered = _removed_already(run, position)
    edges = [part for part in _largest_edge_terms(effects) if not covered(part)][:k]
    ffn = sorted((Part(layer, None) for layer in range(run.shape.n_layers) if not covered(Part(layer, None))),
                 key=lambda part: -abs(float(effects.layers[part.layer].ffn[position])))[:k]
    removals = EdgeRemovals(run, position, effects.answer, effects.contrast)
    drops = removals.drops([[part] for part in edges + ffn])
    for part, drop in zip(edges + ffn, drops):
        layer_effects = effects.layers[part.layer]
        if part.is_ffn:
            estimate = float(layer_effects.ffn[position])
            layer_effects.ffn[position] = drop.logit_diff
        else:
            rows = layer_effects.into(position)
            row = rows[layer_effects.edges[rows, 1] == part.source][0]
            estimate = float(layer_effects.heads[row, part.head])
            layer_effects.heads[row, part.head] = drop.logit_diff
        effects.refined.append(Refined(part, estimate, drop.logit_diff))


def _largest_edge_terms(effects: Effects) -> list[Part]:
    """The kept edge terms (layer, source, head) into the position, largest |effect| first (ties:
    earlier layer, source, head)."""
    parts, values = [], []
    for layer, layer_effects in enumerate(effects.layers):
        rows = layer_effects.into(effects.position)
        heads = layer_effects.heads[rows]  # [n, H]
        sources = layer_effects.edges[rows, 1].tolist()
        parts += [Part(layer, source, head) for source in sources for head in range(heads.shape[1])]
        values.append(heads.flatten())
    order = torch.cat(values).abs().argsort(descending=True, stable=True)
    return [parts[i] for i in order.tolist()]


def _removed_already(run, position: int):
    """Whether the run's own ablations already remove a part (measuring it again would ablate it twice)."""
    edges = {(ab.layer, ab.source, ab.head) for ab in run.interventions if ab.kind == "edge" and ab.target == position}
    ffn = {ab.layer for ab in run.interventions
           if ab.kind == "ffn" and (ab.positions is None or position in ab.positions)}

    def covered(part: Part) -> bool:
        if part.is_ffn:
            return part.layer in ffn
        return (part.layer, part.source, None) in edges or (part.layer, part.source, part.head) in edges
    return covered


def metric_tokens(run, position: int, answer, contrast) -> tuple[int, int]:
    """(answer, contrast) token ids, checked: defaults the top prediction at `position` and the
    best other token."""
    ranked = run.logits[position].topk(2).indices.tolist()
    answer = ranked[0] if answer is None else I.token_id(run, answer)
    if contrast is None:
        contrast = ranked[1] if ranked[0] == answer else ranked[0]
    else:
        contrast = I.token_id(run, contrast)
    if answer == contrast:
        raise LmttError(f"the answer and the contrast are the same token ({run.decode(answer)!r}): the metric "
                        "logit(answer) - logit(contrast) would be 0; give two different tokens")
    return answer, contrast


def _all_fit(run) -> bool:
    """Whether every causal edge's effects fit the run's memory budget (as the shares do, see run._floor)."""
    shape, n = run.shape, run.n_tokens
    return shape.n_layers * n * (n + 1) // 2 * (shape.n_heads * 4 + 16) <= run.budget_bytes


def _mean_gradients(run, position: int, answer: int, contrast: int, alphas: list[float]):
    """([L, T, d], [L, T, d]) float32 on the CPU: dm/d(attention update) and dm/d(FFN update) of
    every layer, averaged over the points `alphas` of the path that scales the edge terms."""
    attn, ffn = None, None
    for alpha in alphas:
        a, f = _gradients(run, position, answer, contrast, alpha)
        attn, ffn = (a, f) if attn is None or ffn is None else (attn + a, ffn + f)
    assert attn is not None and ffn is not None  # alphas is never empty
    return attn / len(alphas), ffn / len(alphas)


def _gradients(run, position: int, answer: int, contrast: int, alpha: float):
    """One forward and one backward pass, in one trace: zero tensors added to every attention and
    FFN update take the gradients (torch.autograd.grad: no parameter's .grad is touched), and the
    logits are computed at `position` only. With alpha < 1 every attention update is
    b_O + alpha * (its edge terms) first."""
    shape, hf_model = run.shape, run.hf_model
    device, dtype = hf_model.device, next(hf_model.parameters()).dtype
    n_tokens = run.n_tokens
    probes = [torch.zeros(n_tokens, shape.d_model, device=device, dtype=dtype, requires_grad=True)
              for _ in range(2 * shape.n_layers)]  # attention, FFN of layer 0, then of layer 1, ...
    edits = list(run.edits or ())
    for layer in range(shape.n_layers):
        if alpha != 1.0:
            edits.append(Edit("attention_output", layer, _scaling(run, layer, alpha)))
        edits.append(Edit("attention_output", layer, _adding(probes[2 * layer])))
        edits.append(Edit("ffn_output", layer, _adding(probes[2 * layer + 1])))
    grads: list[torch.Tensor] = []

    def backward(logits: torch.Tensor) -> None:  # inside the trace, on the live logits [T, V] (or [1, V]: position's)
        row = logits[-1] if logits.shape[0] == 1 else logits[position]
        grads.extend(torch.autograd.grad(row[answer] - row[contrast], probes, allow_unused=True))

    with exclusive(run.model), _frozen(hf_model), _saving_no_attention_output(run.edits):
        trace(run.model, run.family, shape, run.input_ids.to(device), edits, grad=True, on_output=backward,
              logits_at=position)
    grads = [torch.zeros(n_tokens, shape.d_model) if g is None else g.detach().float().cpu() for g in grads]
    return torch.stack(grads[0::2]), torch.stack(grads[1::2])


@contextlib.contextmanager
def _frozen(hf_model):
    """The parameters need no gradients (the backward pass then costs about one forward pass, not
    three); each gets its own requires_grad back afterwards, also on an error."""
    params = [p for p in hf_model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _saving_no_attention_output(edits):
    """Edits of the heads' outputs (the output projection's input) change, in place, what sdpa's
    fused kernels keep for the backward pass: where there are any, attention runs the plain math
    kernel, which keeps its inputs only."""
    if any(edit.site == "out_proj_input" for edit in edits or ()):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _adding(probe: torch.Tensor):
    def add(x: torch.Tensor, state) -> None:
        x.add_(probe)
    return add


def _scaling(run, layer: int, alpha: float):
    modules = run.family.modules(run.hf_model, layer)
    bias = modules["out_proj"].bias

    def scale(x: torch.Tensor, state) -> None:  # x = b + alpha (x - b): the edge terms scaled, the bias kept
        if bias is None:
            x.mul_(alpha)
            return
        kept = post_norm_map(run.family, modules["attn_post_norm"], bias.detach(),  # [d] or, after a norm, [T, d]
                             None if state.attn_scale is None else state.attn_scale[:, None])
        x.sub_(kept.to(x)).mul_(alpha).add_(kept.to(x))
    return scale


@torch.no_grad()
def _layer_effects(run, layer: int, attn_grad: torch.Tensor, ffn_grad: torch.Tensor, floor: float) -> LayerEffects:
    edges, heads = [], []
    scale = run.capture.attn_scale[layer] if run.capture.attn_scale else None  # a post-norm's, frozen
    for start, stop, block in edge_effect_chunks(attn_grad, run._probs(layer), run.capture.values[layer],
                                                 w_o(run.hf_model, run.family, run.shape, layer), run.budget_bytes,
                                                 target_scale=scale):
        kept = block.abs().sum(-1) > floor if floor > 0 else _causal(start, stop).to(block.device)
        index = kept.nonzero()
        heads.append(block[kept].cpu())
        index[:, 0] += start
        edges.append(index.cpu())
    ffn = (ffn_grad * run.capture.ffn_out[layer].float().cpu()).sum(-1)
    return LayerEffects(torch.cat(edges), torch.cat(heads), ffn)


def _causal(start: int, stop: int) -> torch.Tensor:
    return torch.arange(stop)[None, :] <= torch.arange(start, stop)[:, None]


def edge_effect_chunks(grad: torch.Tensor, probs, values: torch.Tensor, w_o: torch.Tensor, budget_bytes: int,
                       target_scale: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """g_i . z^h_{i<-j} = A^h[i,j] <W_O^h g_i, v^h_j> for targets start..stop-1 and sources
    0..stop-1, a chunk of targets at a time: (start, stop, [stop - start, stop, H]), 0 on future
    sources. grad [T, d], probs [H, T, T] (a tensor or an AttentionProbs), values [T, KV, hd],
    W_O [H, hd, d]; `target_scale` [T] multiplies every term at target i (a post-norm's frozen
    scale); temporaries stay under about `budget_bytes`."""
    values = values.float()
    device = values.device
    n_heads, n_kv, n_tokens = w_o.shape[0], values.shape[1], values.shape[0]
    grad = grad.float().to(device)
    if target_scale is not None:
        grad = grad * target_scale.float().to(device)[:, None]
    query = torch.einsum("hkd,td->htk", w_o.float().to(device), grad)  # [H, T, hd]
    values_t = values.permute(1, 2, 0)  # [KV, hd, T]
    group = n_heads // n_kv
    chunk = max(1, budget_bytes // (4 * n_tokens * n_heads * 4))
    for start in range(0, n_tokens, chunk):
        stop = min(start + chunk, n_tokens)
        q = query[:, start:stop].reshape(n_kv, group * (stop - start), -1)  # the query heads of a KV head side by side
        dot = torch.bmm(q, values_t[:, :, :stop]).reshape(n_heads, stop - start, stop)
        block = probs[:, start:stop, :stop].float().to(device) * dot
        future = ~_causal(start, stop).to(device)
        yield start, stop, block.masked_fill_(future, 0).permute(1, 2, 0)
