"""`analyze(model, prompt)` -> `Run`: one forward pass, the importances of every block's parts,
and everything else (routes, neurons, vocabulary readouts) derived from it on demand."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import contributions as C
from . import graph as G
from . import interventions as I
from . import vocab as V
from .architectures import Shape, family_of, ffn_out_matrix, shape_of, w_o
from .attention import AttentionProbs, check_gives_probs, dense
from .contributions import head_outputs
from .errors import LmttError, check_floor, check_index, check_positive, check_threshold
from .progress import progress_steps
from .tracing import Capture, attention_probs, neuron_activations, trace


class NeuronShare(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index
    share: float
    activation: float


DEFAULT_FLOOR = 1e-3  # for prompts whose shares do not fit the budget whole; the widget's lowest threshold is 0.005


@dataclass
class LayerShares:
    """Shares of one layer's parts, float32 (on the CPU in a Run).

    Attention edges are kept sparse: the (target, source) pairs whose share, summed over heads,
    is above the analysis' floor, with their per-head shares z^h_{i<-j}. A dropped edge's share is
    at most the floor, so routes at any threshold >= floor are exact: thresholding (and
    renormalising, which drops the same parts) would have removed it anyway.
    """

    edges: torch.Tensor  # [n, 2] long: (target, source), sorted by target, then source
    heads: torch.Tensor  # [n, H]: the per-head shares of each kept edge
    attn_residual: torch.Tensor  # [T]: the residual's share of the attention block's whole
    ffn: torch.Tensor  # [T]: the FFN update's share of the FFN block's whole
    ffn_residual: torch.Tensor  # [T]: the residual's share of the FFN block's whole

    def dense(self) -> torch.Tensor:
        """[T_target, T_source, H]: every head's share of every edge (0 where dropped)."""
        return self._scatter(self.heads)

    def head(self, head: int) -> torch.Tensor:
        """[T_target, T_source]: head `head`'s share of every edge (0 where dropped)."""
        return self._scatter(self.heads[:, head])

    def _scatter(self, values: torch.Tensor) -> torch.Tensor:  # [n, ...] -> [T, T, ...]
        n_tokens = self.attn_residual.shape[0]
        out = values.new_zeros(n_tokens, n_tokens, *values.shape[1:])
        out[self.edges[:, 0], self.edges[:, 1]] = values
        return out

    def edge(self, target: int, source: int) -> torch.Tensor:
        """[H]: every head's share of the edge source -> target (0 where dropped)."""
        n_tokens, keys = self.attn_residual.shape[0], self.edge_keys
        at = int(torch.searchsorted(keys, target * n_tokens + source))
        if at < len(keys) and int(keys[at]) == target * n_tokens + source:
            return self.heads[at]
        return self.heads.new_zeros(self.heads.shape[1])

    @functools.cached_property
    def edge_keys(self) -> torch.Tensor:
        """[n]: target * T + source of each kept edge, ascending (edges are sorted by target, then source)."""
        return self.edges[:, 0] * self.attn_residual.shape[0] + self.edges[:, 1]

    @functools.cached_property
    def edge_targets(self) -> torch.Tensor:
        """[n]: each kept edge's target, ascending (contiguous, for searchsorted)."""
        return self.edges[:, 0].contiguous()

    @functools.cached_property
    def edge_shares(self) -> torch.Tensor:
        """[n]: each kept edge's share, summed over heads (what the graph's edges weigh)."""
        return self.heads.sum(-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def cpu(self) -> LayerShares:
        return LayerShares(**{name: t.cpu() for name, t in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def analyze(model, prompt: str, *, distance: str = "l1", prepend_bos: bool | None = None,
            budget_bytes: int = C.DEFAULT_BUDGET_BYTES, floor: float | None = None,
            progress: bool | None = None) -> Run:
    """Run `model` once on `prompt` and compute the importances of every block's parts.

    `model` comes from `load_model`. `distance` is "l1" (the papers' default) or "l2".
    `prepend_bos`: None keeps what the tokenizer does by default; True/False force a BOS
    token at the start or none.

    Memory beyond the model and the captured residuals ([L, T, d] each) follows `budget_bytes`:
    it bounds the importances' temporaries (but for one layer's head outputs [T, H, d] float32
    at a time, see lmtt_widget.contributions), and what grows with T^2 or d_ff is kept only if it
    fits: every layer's attention probabilities (else the queries and keys they come from,
    [L, T, (H + KV) * head_dim]; under eager attention `attention_pattern` traces again for the
    layer asked for), FFN activations (else traced again), and every attention edge's shares.
    When the shares do not fit, only edges whose share is above `floor` are kept (None: 0 when
    they fit, else 1e-3); routes at thresholds >= floor stay exact (see LayerShares).
    `progress`: None shows a progress bar once the analysis takes over a second, True always,
    False never.
    """
    input_ids = tokenize(model.tokenizer, prompt, prepend_bos, shape_of(model._module, family_of(model._module)).n_ctx)
    return analyze_ids(model, input_ids, prompt=prompt, distance=distance, budget_bytes=budget_bytes, floor=floor,
                       progress=progress)


def analyze_ids(model, input_ids: torch.Tensor, *, prompt: str | None = None, distance: str = "l1",
                budget_bytes: int = C.DEFAULT_BUDGET_BYTES, floor: float | None = None, edits=None,
                progress: bool | None = None) -> Run:
    """`analyze` on token ids [T]; `edits` (see tracing.trace) change the forward pass."""
    p = C.distance_order(distance)
    budget_bytes = check_positive("budget_bytes", budget_bytes)
    hf_model = model._module
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    check_gives_probs(hf_model)
    n_tokens = len(input_ids)
    floor = _floor(floor, shape, n_tokens, budget_bytes)
    neurons = n_tokens * _d_ff(hf_model, family) * shape.n_layers * 4 <= budget_bytes
    probs = shape.n_layers * shape.n_heads * n_tokens ** 2 * 4 <= budget_bytes  # kept as float32
    layers: list[LayerShares] = []
    with progress_steps(shape.n_layers, enabled=progress, desc="importances", unit="layer") as advance:

        def on_layer(layer: int, t) -> None:  # inside the trace: each layer's probabilities are used as they come
            layers.append(block_shares(t.resid_in, t.attn_out, t.ffn_out, t.resid_out, t.probs, t.values,
                                       w_o(hf_model, family, shape, layer), shape.parallel, p, budget_bytes,
                                       floor).cpu())
            advance()

        capture = trace(model, family, shape, input_ids.to(hf_model.device), edits, neurons=neurons, probs=probs,
                        on_layer=on_layer)
    text = prompt if prompt is not None else model.tokenizer.decode(input_ids)
    return Run(model, text, input_ids, capture, layers, distance, budget_bytes, floor, edits=edits)


def _floor(floor: float | None, shape: Shape, n_tokens: int, budget_bytes: int) -> float:
    if floor is None:  # every causal edge, each with H float32 shares and a (target, source) index
        every_edge = shape.n_layers * n_tokens * (n_tokens + 1) // 2 * (shape.n_heads * 4 + 16)
        return 0.0 if every_edge <= budget_bytes else DEFAULT_FLOOR
    return check_floor(floor)


def _d_ff(hf_model, family) -> int:
    return ffn_out_matrix(family.modules(hf_model, 0)["ffn_out_proj"]).shape[0]


def tokenize(tokenizer, prompt: str, prepend_bos: bool | None, n_ctx: int | None) -> torch.Tensor:
    if not isinstance(prompt, str):
        raise LmttError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise LmttError("prompt is empty: give some text to analyse")
    _check_unicode(prompt)
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if prepend_bos and (not ids or ids[0] != bos):
        if bos is None:
            raise LmttError("prepend_bos=True, but this tokenizer has no BOS token")
        ids = [bos] + ids
    elif prepend_bos is False and ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    if not ids:
        raise LmttError("prompt tokenizes to no tokens")
    if n_ctx is not None and len(ids) > n_ctx:
        raise LmttError(f"prompt is {len(ids)} tokens long; this model reads at most {n_ctx}")
    return torch.tensor(ids, dtype=torch.long)


def _check_unicode(prompt: str) -> None:
    """A lone surrogate (from bytes decoded with errors='surrogateescape', or a broken escape) is
    no text a tokenizer can read: say where it is."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LmttError(f"prompt contains a lone surrogate (U+{ord(prompt[error.start]):04X}) at index {error.start}: "
                        "it is not valid Unicode text; remove it, or decode the bytes it came from with "
                        "errors='replace'") from None


@torch.no_grad()
def block_shares(x: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor, post: torch.Tensor, probs: torch.Tensor,
                 values: torch.Tensor, w_o: torch.Tensor, parallel: bool, p: int, budget: int,
                 floor: float = 0.0) -> LayerShares:
    """The shares of one block's parts from its tensors alone (so it can run inside a trace,
    remotely too): residual in x, updates attn and ffn, residual out `post` (all [T, d]),
    probabilities [H, T, T] (a tensor or an attention.AttentionProbs), value vectors
    [T, KV, hd] and W_O [H, hd, d] (the head dimension keeps the importances' dot products
    small). Attention edges above `floor` are kept; the shares are made a chunk of targets at a
    time, so no [T, T, H] tensor is ever whole."""
    # on several devices a block's input x is still on the previous block's device
    x, attn, ffn, post = (t.float().to(post.device) for t in (x, attn, ffn, post))
    whole = post if parallel else x + attn
    res_prox = C.proximity(x[:, None], whole, p)[:, 0]  # [T]
    others = (C.proximity(ffn[:, None], post, p),) if parallel else ()  # a parallel block's FFN shares its whole
    edges, heads, residual, ffn_parts = [], [], [], []
    for start, stop, prox in C.head_source_proximity_chunks(whole, probs, None, p, budget, values=values, w_o=w_o):
        (prox, *other), res = C.shares(prox, *(o[start:stop] for o in others), residual=res_prox[start:stop])
        kept = prox.sum(-1) > floor  # [c, stop]: graph edges sum their heads, so whole edges are kept or dropped
        index = kept.nonzero()
        index[:, 0] += start
        edges.append(index)
        heads.append(prox[kept])
        residual.append(res)
        ffn_parts += other
    edges, heads, attn_res = torch.cat(edges), torch.cat(heads), torch.cat(residual)  # type: ignore[assignment]
    if parallel:
        return LayerShares(edges, heads, attn_res, torch.cat(ffn_parts)[:, 0], attn_res)  # type: ignore[arg-type]
    prox = C.proximity(torch.stack([whole, ffn], dim=1), post, p)  # [T, 2]: mid and the FFN update in post
    (ffn_share,), ffn_res = C.shares(prox[:, 1:], residual=prox[:, 0])
    return LayerShares(edges, heads, attn_res, ffn_share[:, 0], ffn_res)  # type: ignore[arg-type]


class Shares:
    """Tokens and the shares of every block's parts: all that routes, at any target token and
    threshold, need. `Run` adds the captured activations; `lmtt_widget.remote.analyze_compact`
    returns a bare `Shares` computed where the model runs."""

    def __init__(self, tokens: list[str], input_ids: torch.Tensor, shape: Shape, layers: list[LayerShares],
                 distance: str, floor: float = 0.0, top: tuple[torch.Tensor, torch.Tensor] | None = None, decode=None):
        self.tokens = tokens
        self.input_ids = input_ids
        self.shape = shape
        self.layers = layers
        self.distance = distance
        self.floor = floor  # attention edges with shares at or below it were not kept (see LayerShares)
        self._top = top  # (probabilities [T, k], token ids [T, k]) where no logits are kept
        self._decode = decode

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def position(self, position: int) -> int:
        return check_index("position", position, self.n_tokens)

    def layer(self, layer: int) -> int:
        return check_index("layer", layer, self.shape.n_layers)

    def head(self, head: int) -> int:
        return check_index("head", head, self.shape.n_heads)

    def decode(self, token_id) -> str:
        return self._decode([int(token_id)])

    def top_tokens(self, position: int = -1, k: int = 10) -> list[tuple[str, float]]:
        """The model's top-k next tokens after `position`, with probabilities."""
        probs, ids = self._top  # type: ignore[misc]  # set where no logits are kept
        k = check_positive("k", k)
        if k > probs.shape[1]:
            raise LmttError(f"only the top {probs.shape[1]} tokens were kept; k={k} is too large")
        position = self.position(position)
        return [(self.decode(i), float(v)) for v, i in zip(probs[position, :k], ids[position, :k])]

    def attention_contributions(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares [T_target, T_source, H] of each head reading each source, residual's share [T]);
        edges at or below the run's `floor` read 0."""
        shares = self.layers[self.layer(layer)]
        return shares.dense(), shares.attn_residual

    def head_contributions(self, layer: int, head: int) -> torch.Tensor:
        """[T_target, T_source]: one head's shares, `attention_contributions(layer)[0][..., head]`
        without the other heads."""
        return self.layers[self.layer(layer)].head(self.head(head))

    def head_contribution_rows(self, layer: int, head: int, targets) -> torch.Tensor:
        """[len(targets), T_source]: `head_contributions(layer, head)[targets]`, read from the kept
        edges of those targets alone (they are sorted by target) without forming the [T, T] map."""
        shares, head = self.layers[self.layer(layer)], self.head(head)
        rows = torch.tensor([self.position(t) for t in targets], dtype=torch.long)
        starts = torch.searchsorted(shares.edge_targets, rows).tolist()
        stops = torch.searchsorted(shares.edge_targets, rows, right=True).tolist()
        out = shares.heads.new_zeros(len(rows), self.n_tokens)
        for i, (start, stop) in enumerate(zip(starts, stops)):
            out[i, shares.edges[start:stop, 1]] = shares.heads[start:stop, head]
        return out

    def edge_contributions(self, layer: int, target: int, source: int) -> torch.Tensor:
        """[H]: every head's share of one edge, `attention_contributions(layer)[0][target, source]`."""
        return self.layers[self.layer(layer)].edge(self.position(target), self.position(source))

    def ffn_contributions(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the FFN update's share [T], the residual's share [T]). For parallel blocks these are
        shares of the block's one whole, as are the attention shares."""
        shares = self.layers[self.layer(layer)]
        return shares.ffn, shares.ffn_residual

    def graph(self, token: int = -1, threshold: float = 0.04, renormalize: bool = True):
        """The routes to the prediction at `token`: a networkx.MultiDiGraph keyed by edge kind
        (see lmtt_widget.graph)."""
        return G.routes(self, self.position(token), self.valid_threshold(threshold), renormalize)

    def full_graph(self, threshold: float = 0.04, renormalize: bool = True):
        """Every edge above `threshold`, for all tokens."""
        return G.full_graph(self, self.valid_threshold(threshold), renormalize)

    def valid_threshold(self, threshold: float) -> float:
        """`threshold` if routes can be drawn at it from these shares; else an LmttError that says why."""
        threshold = check_threshold(threshold)
        if threshold < self.floor:
            raise LmttError(f"threshold {threshold:g} is below this analysis' floor {self.floor:g}: attention edges "
                            f"with smaller shares were not kept; analyse with floor={threshold:g} (or lower) to "
                            "route at this threshold")
        return threshold


class Run(Shares):
    """One analysed prompt: tokens, the importances of every block's parts, and readouts.

    Shares are computed once by `analyze`; graphs for other tokens or thresholds, neurons and
    vocabulary readouts are derived from them (and from the captured activations) on demand.
    """

    def __init__(self, model, prompt: str, input_ids: torch.Tensor, capture: Capture,
                 layers: list[LayerShares], distance: str, budget_bytes: int, floor: float = 0.0, edits=None):
        hf_model = model._module
        self.family = family_of(hf_model)
        tokens = [model.tokenizer.decode([int(i)]) for i in input_ids]
        super().__init__(tokens, input_ids, shape_of(hf_model, self.family), layers, distance, floor,
                         decode=model.tokenizer.decode)
        self.model = model
        self.prompt = prompt
        self.capture = capture
        self.budget_bytes = budget_bytes
        self.edits = edits  # how the forward pass was changed; later traces of this run repeat them
        self.clean: Run | None = None  # for an intervened run: the run it was made from
        self.interventions: tuple = ()  # the ablations (lmtt_widget.interventions.Ablation) applied
        self.patches: tuple = ()  # the activations patched in from other prompts: (interventions.PatchNode, prompt)
        self.patch_ids: tuple = ()  # the token ids of each patch's source prompt
        self.patch_edits: tuple = ()  # the edits that put the patches in place (after the ablations')
        self._neuron_cache: dict[int, torch.Tensor] = dict(capture.neurons)
        self._probs_traced: dict[int, torch.Tensor] = {}  # traced again (eager attention), least recent first

    def __repr__(self) -> str:
        changed = f", {len(self.interventions)} ablations, {len(self.patches)} patches" if self.clean else ""
        return (f"Run({self.model_name!r}, {len(self.tokens)} tokens, {self.shape.n_layers} layers, "
                f"distance={self.distance!r}, prediction={self.top_tokens(k=1)[0][0]!r}{changed})")

    # -- basics ---------------------------------------------------------------------------

    @property
    def hf_model(self):
        return self.model._module

    @property
    def model_name(self) -> str:
        name = getattr(self.hf_model.config, "name_or_path", "") or type(self.hf_model).__name__
        return name.rstrip("/").rsplit("/", 1)[-1] if name.startswith(("/", ".", "~")) else name

    @functools.cached_property
    def logits(self) -> torch.Tensor:
        """[T, V] float32: the model's output logits."""
        return V.unembed(self.hf_model, self.family, self.capture.final_normed).float().cpu()  # type: ignore[arg-type]

    def top_tokens(self, position: int = -1, k: int = 10) -> list[tuple[str, float]]:
        """The model's top-k next tokens after `position`, with probabilities."""
        probs = self.logits[self.position(position)].softmax(-1)
        values, ids = probs.topk(min(check_positive("k", k), probs.numel()))
        return [(self.decode(i), float(v)) for v, i in zip(values, ids)]

    # -- importances ----------------------------------------------------------------------

    def attention_pattern(self, layer: int) -> torch.Tensor:
        """[H, T_target, T_source]: the attention probabilities of `layer`, on the layer's device
        (float32; the model's dtype under eager attention). `analyze` keeps every layer's when
        they fit the run's memory budget, and otherwise (sdpa, see lmtt_widget.attention) the
        queries and keys they are computed from. Under eager attention, a run that did not keep
        them traces the model once more, up to this layer; the layers most recently asked for
        stay cached, as many as fit the budget (the last one always)."""
        return dense(self._probs(layer))

    def attention_rows(self, layer: int, targets, head: int | None = None) -> torch.Tensor:
        """`attention_pattern(layer)[:, targets]` ([H, len(targets), T_source]), or of one head
        ([len(targets), T_source]), float32 on the CPU, computing only those rows (and that head)
        where the run kept queries and keys (long prompts)."""
        probs = self._probs(layer)
        if head is not None:
            probs = probs[self.head(head)]
        rows = torch.tensor([self.position(t) for t in targets], dtype=torch.long)
        if isinstance(probs, AttentionProbs):
            return probs.at(rows).float().cpu()
        return probs[..., rows.to(probs.device), :].float().cpu()

    def _probs(self, layer: int) -> torch.Tensor | AttentionProbs:
        """A layer's probabilities as kept (indexing an AttentionProbs computes only the rows read)."""
        layer = self.layer(layer)
        if layer in self.capture.probs:
            return self.capture.probs[layer]
        traced = self._probs_traced
        if layer in traced:
            traced[layer] = traced.pop(layer)  # now the most recent
            return traced[layer]
        probs = attention_probs(self.model, self.family, self.shape, self.input_ids.to(self.hf_model.device),
                                [layer], self.edits)[layer]
        cached = sum(p.numel() * p.element_size() for p in traced.values())
        while traced and cached + probs.numel() * probs.element_size() > self.budget_bytes:
            oldest = traced.pop(next(iter(traced)))
            cached -= oldest.numel() * oldest.element_size()
        traced[layer] = probs
        return probs

    def neuron_activations(self, layer: int) -> torch.Tensor:
        """[T, d_ff]: the activations entering the FFN's output projection. `analyze` keeps every
        layer's when they fit the run's memory budget; otherwise the first request traces the
        model once more for this layer; later ones are cached."""
        layer = self.layer(layer)
        if layer not in self._neuron_cache:
            self._neuron_cache.update(neuron_activations(
                self.model, self.family, self.shape, self.input_ids.to(self.hf_model.device), [layer], self.edits))
        return self._neuron_cache[layer]

    @torch.no_grad()
    def neuron_writes(self, layer: int, position: int) -> torch.Tensor:
        """[d_ff, d] float32: a_n * W_out[n], what each neuron writes at `position`."""
        acts = self.neuron_activations(layer)[self.position(position)].float()
        w_out = ffn_out_matrix(self.family.modules(self.hf_model, self.layer(layer))["ffn_out_proj"]).float()
        return acts[:, None] * w_out.to(acts.device)

    def neuron_shares(self, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares [d_ff] of each neuron's write, the residual's share) in the whole after the block."""
        layer, position = self.layer(layer), self.position(position)
        whole = self.capture.resid[layer + 1][position].float()
        residual = whole - self.capture.ffn_out[layer][position].float()
        writes = self.neuron_writes(layer, position)
        p = C.distance_order(self.distance)
        chunk = max(1, self.budget_bytes // (2 * whole.numel() * 4))
        prox = torch.cat([C.proximity(writes[i:i + chunk], whole, p) for i in range(0, len(writes), chunk)])
        res_prox = C.proximity(residual[None], whole, p)
        (shares,), res = C.shares(prox[None].cpu(), residual=res_prox.cpu())
        return shares[0], res[0]

    def neuron_contributions(self, layer: int, position: int, k: int = 20) -> list[NeuronShare]:
        """The k neurons with the largest share at (layer, position), with their activations."""
        k = check_positive("k", k)
        shares, _ = self.neuron_shares(layer, position)
        acts = self.neuron_activations(layer)[self.position(position)]
        values, ids = shares.topk(min(k, shares.numel()))
        return [NeuronShare(int(i), float(v), float(acts[i])) for v, i in zip(values, ids)]

    # -- vocabulary -----------------------------------------------------------------------

    def residual(self, layer: int, position: int, stage: str = "post") -> torch.Tensor:
        """[d]: the residual stream at a node: stage "embed" (layer -1), "mid" or "post"."""
        position = self.position(position)
        if stage == "embed":
            return self.capture.resid[0][position]
        layer = self.layer(layer)
        if stage == "post":
            return self.capture.resid[layer + 1][position]
        if stage == "mid":
            if self.shape.parallel:
                raise LmttError("parallel blocks (GPT-NeoX/Pythia) have no 'mid' residual")
            attn = self.capture.attn_out[layer][position]
            return self.capture.resid[layer][position].to(attn.device) + attn
        raise LmttError(f"stage must be 'embed', 'mid' or 'post', got {stage!r}")

    def logit_lens(self, layer: int, position: int, stage: str = "post", k: int = 10,
                   normalize: bool = True) -> list[V.LensToken]:
        """Top-k tokens of a residual node read through the unembedding (after the final norm if
        `normalize`), each with its rank change since the previous node on the stream."""
        current = self.residual(layer, position, stage)
        previous = self._previous_node(layer, stage)
        before = None if previous is None else self.residual(previous[1], position, previous[0])
        return V.logit_lens(self.hf_model, self.family, current, before, check_positive("k", k), normalize, self.decode)

    def _previous_node(self, layer: int, stage: str) -> tuple[str, int] | None:
        if stage == "embed":
            return None
        layer = self.layer(layer)
        if stage == "post" and not self.shape.parallel:
            return ("mid", layer)
        return ("embed", -1) if layer == 0 else ("post", layer - 1)

    def direct_logits(self, updates: torch.Tensor, position: int) -> torch.Tensor:
        """[..., V] float32: the direct effect on the logits at `position` of updates [..., d]
        written into its residual stream, through the final norm linearised at its real scale."""
        final = self.capture.resid[-1][self.position(position)]
        return V.direct_logits(self.hf_model, self.family, updates, final)

    def _direct(self, update: torch.Tensor, position: int, k: int) -> V.LogitEffect:
        final = self.capture.resid[-1][self.position(position)]
        return V.direct_effect(self.hf_model, self.family, update, final, check_positive("k", k), self.decode)

    def block_logits(self, layer: int, position: int, block: str = "ffn", k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of a block's update ("attention" or "ffn") at `position`."""
        updates = {"attention": self.capture.attn_out, "ffn": self.capture.ffn_out}
        if block not in updates:
            raise LmttError(f"block must be 'attention' or 'ffn', got {block!r}")
        return self._direct(updates[block][self.layer(layer)][self.position(position)], position, k)

    @torch.no_grad()
    def head_output(self, layer: int, head: int, target: int, source: int | None = None) -> torch.Tensor:
        """[d]: head `head`'s write at `target`, from one `source` or summed over all sources."""
        layer, head, target = self.layer(layer), self.head(head), self.position(target)
        values = self._head_values(layer, head).float()  # [T, 1, hd]
        weights = self._probs(layer)[head, target].float()  # type: ignore[union-attr]  # [T]: rows are tensors
        # the output projection is linear: mix the values first, project one vector
        if source is None:
            mixed = (weights.to(values.device) @ values[:, 0])[None, None]  # [1, 1, hd]
        else:
            source = self.position(source)
            mixed = weights[source].to(values.device) * values[source:source + 1]
        return head_outputs(w_o(self.hf_model, self.family, self.shape, layer)[head:head + 1], mixed, 1)[0, 0]

    def head_logits(self, layer: int, head: int, target: int, source: int | None = None,
                    k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of a head's output at `target` (from `source`, or all)."""
        return self._direct(self.head_output(layer, head, target, source), target, k)

    def neuron_logits(self, layer: int, neuron: int, position: int, k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of neuron `neuron`'s write, scaled by its activation."""
        acts = self.neuron_activations(layer)
        neuron = check_index("neuron", neuron, acts.shape[1])
        return self._direct(self.neuron_writes(layer, position)[neuron], position, k)


    def _head_values(self, layer: int, head: int) -> torch.Tensor:
        kv = head // (self.shape.n_heads // self.shape.n_kv_heads)
        return self.capture.values[layer][:, kv:kv + 1]

    # -- interventions (lmtt_widget.interventions) ----------------------------------------

    def intervene(self, ablations, mode: str = "zero", *, position: int = -1, against=None):
        """Rerun with components ablated; returns (the intervened Run, a comparison of the
        prediction at `position`, and its logit difference to `against` or the runner-up). See
        lmtt_widget.interventions.intervene."""
        return I.intervene(self, ablations, mode=mode, position=position, against=against)

    def faithfulness(self, token: int = -1, threshold: float = 0.04, k: int = 5, draws: int = 10, seed: int = 0,
                     *, against=None, mode: str = "zero"):
        """Ablate the route's k strongest attention edges vs k random edges; see
        lmtt_widget.interventions.faithfulness."""
        return I.faithfulness(self, token=token, threshold=threshold, k=k, draws=draws, seed=seed,
                              against=against, mode=mode)

    def reanalyze(self, edits) -> Run:
        """This prompt analysed again as this run was (distance, memory budget, floor), with
        `edits` (tracing.Edit) changing the forward pass: how lmtt_widget.interventions reruns."""
        return analyze_ids(self.model, self.input_ids, prompt=self.prompt, distance=self.distance,
                           budget_bytes=self.budget_bytes, floor=self.floor, edits=edits)
