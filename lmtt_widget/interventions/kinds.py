"""The kinds of ablation, one class each, registered by their kind: each parses and checks its
tuple form, makes the `tracing.Edit`s that carry it out, writes its lines of nnsight code and
describes itself.

To add a kind: subclass `Ablation` with `kind="name"`, set ARITY and FORM, and write the methods
marked "each kind" (from_args, as_tuple, describe, component, edits, code); `parse`, the checks
against repeats, `intervene`, `ablated_logits` and `code` then take it as they take the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..architectures import ffn_out_matrix, w_o
from ..errors import LmttError, check_index
from ..experts import n_experts
from ..tracing import Edit
from .edits import head_columns, head_mix, kv_head, put, rows, unread

MODES = ("zero", "mean")
ABLATIONS: dict[str, type[Ablation]] = {}  # kind -> its class, filled as each class is defined


def check_mode(mode) -> str:
    if mode not in MODES:
        raise LmttError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class Ablation:
    """One ablation, indices checked and non-negative; `positions` None: every position.

    Every kind has all these fields (those it does not use stay None), so that any ablation
    reads as the same dict (`dataclasses.asdict`). `Ablation(kind, ...)` makes the class
    registered for `kind`; `parse` makes one from its tuple form, checked against a run.
    """

    kind: str
    layer: int
    head: int | None = None
    neuron: int | None = None
    source: int | None = None
    target: int | None = None
    positions: tuple[int, ...] | None = None
    mode: str = "zero"
    expert: int | None = None

    KIND: ClassVar[str]  # the kind a class is registered for
    ARITY: ClassVar[tuple[int, int]]  # the fewest and most values after the kind in the tuple form
    FORM: ClassVar[str]  # the tuple form, for messages

    def __init_subclass__(cls, kind: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.KIND = kind
            ABLATIONS[kind] = cls

    def __new__(cls, *args, **kwargs):
        if cls is Ablation:  # Ablation("head", ...) is a HeadAblation
            kind = args[0] if args else kwargs.get("kind")
            cls = ablation_class(kind, (kind, *args[1:]))
        return super().__new__(cls)

    def __post_init__(self):
        if self.kind != self.KIND:
            raise LmttError(f"a {type(self).__name__} has kind {self.KIND!r}, got {self.kind!r}")
        check_mode(self.mode)

    # -- each kind ------------------------------------------------------------------------

    @classmethod
    def from_args(cls, run, layer: int, args: list, mode: str) -> Ablation:
        """The ablation from the values that follow the layer in its tuple form, checked against `run`."""
        raise NotImplementedError

    def as_tuple(self) -> tuple:
        """The tuple form that `parse` and `intervene` accept."""
        raise NotImplementedError

    def describe(self) -> str:
        """What it does, in words: "head 3 of layer 23, all positions, zeroed"."""
        raise NotImplementedError

    def label(self, token: Callable[[int], str]) -> str:
        """A short name for lists (the widget's): "head L23.3 at 5 ␣Mary (zero)"; `token(position)`
        writes a position."""
        where = "" if self.positions is None else " at " + ", ".join(map(token, self.positions))
        return f"{self.name(token)}{where} ({self.mode})"

    def name(self, token: Callable[[int], str]) -> str:
        """What it acts on, shortly: "head L23.3"."""
        raise NotImplementedError

    def component(self) -> tuple:
        """What it acts on, as a key: two ablations of one component may overlap (see `extent`)."""
        raise NotImplementedError

    def extent(self) -> tuple[int, ...] | None:
        """Which part of its component it covers: positions (an edge: heads); None: all."""
        return self.positions

    def edits(self, clean, everything: list[Ablation]) -> list[Edit]:
        """The edits that carry it out, with means from the `clean` run, applied together with
        `everything` (itself included)."""
        raise NotImplementedError

    def code(self, clean, script, name: str, everything: list[Ablation]) -> None:
        """Add its lines of nnsight code to `script` (codegen.Script); `name` is free for a variable."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def replaces_head(self, layer: int, head: int, target: int) -> bool:
        """Whether it replaces head `head`'s whole output at `target` in `layer` (so no edge
        ablation there takes a term out of it)."""
        return False

    def _set(self, site: str, index, value_of_clean) -> Edit:
        """Set tensor[index] at `site` to 0, or (mode "mean") to `value_of_clean()`."""
        return put(site, self.layer, index, value_of_clean() if self.mode == "mean" else 0.0)

    def _set_code(self, script, name: str, site: str, variable: str, columns: str = "") -> None:
        """Code that sets variable[positions{columns}] to 0, or to its mean over the clean run's positions."""
        value = "0"
        if self.mode == "mean":
            whole = f"{variable}[:{columns}]" if columns else variable
            script.mean(self.layer, site, f"{name} = nnsight.save({whole}.mean(0))")
            value = name
        where = ":" if self.positions is None else repr(list(self.positions))
        script.edit(self.layer, site, f"{variable}[{where}{columns}] = {value}  # {self.as_tuple()!r}")


def _positions(run, args: list) -> tuple[int, ...] | None:
    """The positions given as the last value of a tuple form (none given: None, every position)."""
    if not args:
        return None
    given = args[0]
    if not isinstance(given, (int, list, tuple, range)):
        raise LmttError(f"positions are a position or a list of them, got {given!r}")
    items = [given] if isinstance(given, int) else list(given)
    if not items:
        raise LmttError("positions is empty: give position indices, or leave them out for every position")
    return tuple(sorted({run.position(p) for p in items}))


def _where(positions) -> tuple:
    return () if positions is None else (list(positions),)


def _at(positions) -> str:
    if positions is None:
        return "all positions"
    return f"position{'s' if len(positions) > 1 else ''} {', '.join(map(str, positions))}"


_HOW = {"zero": "zeroed", "mean": "set to its mean"}


class HeadAblation(Ablation, kind="head"):
    """The head's slice of the output projection's input (mean: over the clean run's positions)."""

    ARITY = (2, 3)
    FORM = "('head', layer, head[, positions])"

    @classmethod
    def from_args(cls, run, layer, args, mode):
        return cls("head", layer, head=run.head(args[0]), positions=_positions(run, args[1:]), mode=mode)

    def as_tuple(self):
        return ("head", self.layer, self.head, *_where(self.positions))

    def describe(self):
        return f"head {self.head} of layer {self.layer}, {_at(self.positions)}, {_HOW[self.mode]}"

    def name(self, token):
        return f"head L{self.layer}.{self.head}"

    def component(self):
        return ("head", self.layer, self.head)

    def replaces_head(self, layer, head, target):
        return (layer, head) == (self.layer, self.head) and (self.positions is None or target in self.positions)

    def edits(self, clean, everything):
        at = rows(self.positions)
        return [self._set("out_proj_input", (at, head_columns(clean.shape, self.head)),
                          lambda: head_mix(clean, self.layer, self.head).mean(0)),
                unread(self.layer, (self.head, at))]

    def code(self, clean, script, name, everything):
        columns = head_columns(clean.shape, self.head)
        self._set_code(script, name, "out_proj_input", "heads_in", f", {columns.start}:{columns.stop}")


class NeuronAblation(Ablation, kind="neuron"):
    """The neuron's activation entering the FFN's output projection."""

    ARITY = (2, 3)
    FORM = "('neuron', layer, neuron[, positions])"

    @classmethod
    def from_args(cls, run, layer, args, mode):
        if run.has_experts(layer):
            raise LmttError(f"layer {layer}'s FFN is a mixture of experts: it has no layer-wide neurons to ablate; "
                            f"ablate an expert, ('expert', {layer}, expert[, positions]), or read its experts with "
                            "run.expert_contributions / run.expert_neuron_contributions")
        n_neurons = ffn_out_matrix(run.family.modules(run.hf_model, layer)["ffn_out_proj"]).shape[0]
        neuron = check_index("neuron", args[0], n_neurons)
        return cls("neuron", layer, neuron=neuron, positions=_positions(run, args[1:]), mode=mode)

    def as_tuple(self):
        return ("neuron", self.layer, self.neuron, *_where(self.positions))

    def describe(self):
        return f"neuron {self.neuron} of layer {self.layer}, {_at(self.positions)}, {_HOW[self.mode]}"

    def name(self, token):
        return f"neuron L{self.layer}.{self.neuron}"

    def component(self):
        return ("neuron", self.layer, self.neuron)

    def edits(self, clean, everything):
        return [self._set("ffn_out_proj_input", (rows(self.positions), self.neuron),
                          lambda: clean.neuron_activations(self.layer)[:, self.neuron].float().mean())]

    def code(self, clean, script, name, everything):
        self._set_code(script, name, "ffn_out_proj_input", "neurons", f", {self.neuron}")


class BlockAblation(Ablation):
    """A block's update (mean: over the clean run's positions)."""

    ARITY = (1, 2)
    SITE: ClassVar[str]  # the update's edit site (tracing.SITES)
    CAPTURED: ClassVar[str]  # the update in tracing.Capture
    VARIABLE: ClassVar[str]  # the update in the generated code
    WORDS: ClassVar[str]

    @classmethod
    def from_args(cls, run, layer, args, mode):
        return cls(cls.KIND, layer, positions=_positions(run, args), mode=mode)

    def as_tuple(self):
        return (self.kind, self.layer, *_where(self.positions))

    def describe(self):
        return f"the {self.WORDS} of layer {self.layer}, {_at(self.positions)}, {_HOW[self.mode]}"

    def name(self, token):
        return f"{self.WORDS} L{self.layer}"

    def component(self):
        return (self.kind, self.layer)

    def edits(self, clean, everything):
        return [self._set(self.SITE, rows(self.positions),
                          lambda: getattr(clean.capture, self.CAPTURED)[self.layer].float().mean(0))]

    def code(self, clean, script, name, everything):
        self._set_code(script, name, self.SITE, self.VARIABLE)


class AttentionAblation(BlockAblation, kind="attention"):
    FORM = "('attention', layer[, positions])"
    SITE, CAPTURED, VARIABLE, WORDS = "attention_output", "attn_out", "attn_update", "attention block"

    def replaces_head(self, layer, head, target):
        return layer == self.layer and (self.positions is None or target in self.positions)

    def edits(self, clean, everything):
        return super().edits(clean, everything) + [unread(self.layer, (slice(None), rows(self.positions)))]


class FfnAblation(BlockAblation, kind="ffn"):
    FORM = "('ffn', layer[, positions])"
    SITE, CAPTURED, VARIABLE, WORDS = "ffn_output", "ffn_out", "ffn_out", "FFN block"


class ExpertAblation(Ablation, kind="expert"):
    """An expert of a mixture-of-experts FFN, dropped where the router selected it: its routing
    weight set to 0 (its write w_e E_e(x) is gone; the other experts keep their weights). Zero
    mode only: an expert's output at a position where it was not selected has no clean value."""

    ARITY = (2, 3)
    FORM = "('expert', layer, expert[, positions])"

    def __post_init__(self):
        super().__post_init__()
        if self.mode != "zero":
            raise LmttError(f"an expert ablation zeroes the expert's routing weight: it has mode 'zero' only, got "
                            f"{self.mode!r} (a mean of an expert's write over positions that did not select it "
                            "is not something the model computes)")

    @classmethod
    def from_args(cls, run, layer, args, mode):
        if not run.has_experts(layer):
            raise LmttError(f"layer {layer}'s FFN is dense: it has no experts; ablate its neurons, "
                            f"('neuron', {layer}, neuron[, positions]), or the block, ('ffn', {layer})")
        block = run.family.modules(run.hf_model, layer)["block"]
        expert = check_index("expert", args[0], n_experts(run.family, block))
        return cls("expert", layer, expert=expert, positions=_positions(run, args[1:]), mode=mode)

    def as_tuple(self):
        return ("expert", self.layer, self.expert, *_where(self.positions))

    def describe(self):
        return f"expert {self.expert} of layer {self.layer}, {_at(self.positions)}, its routing weight zeroed"

    def name(self, token):
        return f"expert L{self.layer}.{self.expert}"

    def component(self):
        return ("expert", self.layer, self.expert)

    def edits(self, clean, everything):
        at, expert = rows(self.positions), self.expert

        def drop(weights, state):  # weights [T, k] of the experts state.experts [T, k] selected
            weights[at] = weights[at].masked_fill(state.experts[at] == expert, 0)
        return [Edit("routing_weights", self.layer, drop)]

    def code(self, clean, script, name, everything):
        at = ":" if self.positions is None else repr(list(self.positions))
        script.edit(self.layer, "routing_weights",
                    f"routing_weights[{at}] = routing_weights[{at}].masked_fill(selected[{at}] == {self.expert}, 0)"
                    f"  # {self.as_tuple()!r}")


class EdgeAblation(Ablation, kind="edge"):
    """z^h_{target<-source} = A^h_ts v^h_s W_O^h, taken out of the attention block's update at
    `target` only, for one head or all. Mean: v^h_s is replaced by the clean run's mean value
    vector, so the term left is A^h_ts * mean_j(v^h_j) W_O^h.

    A head's term is taken out once: not where a head or attention ablation already replaces
    the head's output at the target, nor again where an earlier edge ablation of the same edge
    took it out."""

    ARITY = (3, 4)
    FORM = "('edge', layer, source, target[, head])"

    @classmethod
    def from_args(cls, run, layer, args, mode):
        source, target = check_index("source", args[0], run.n_tokens), check_index("target", args[1], run.n_tokens)
        if source > target:
            raise LmttError(f"edge source {source} is after its target {target}: a token reads only itself and "
                            "earlier tokens (source <= target)")
        head = run.head(args[2]) if len(args) > 2 else None
        return cls("edge", layer, head=head, source=source, target=target, mode=mode)

    def as_tuple(self):
        return ("edge", self.layer, self.source, self.target) + (() if self.head is None else (self.head,))

    def describe(self):
        heads = "all heads" if self.head is None else f"head {self.head}"
        how = "zeroed" if self.mode == "zero" else "its value vector set to the mean"
        return f"edge {self.source} -> {self.target} of layer {self.layer}, {heads}, {how}"

    def name(self, token):
        heads = "all heads" if self.head is None else f"head {self.head}"
        return f"edge L{self.layer} {token(self.source)} → {token(self.target)}, {heads}"

    def component(self):
        return ("edge", self.layer, self.source, self.target)

    def extent(self):
        return None if self.head is None else (self.head,)

    def heads(self, shape, everything: list[Ablation]) -> list[int]:
        """The heads whose term this ablation takes out, applied with `everything`."""
        earlier = everything[:everything.index(self)]
        mine = range(shape.n_heads) if self.head is None else [self.head]
        return [h for h in mine
                if not any(other.replaces_head(self.layer, h, self.target) for other in everything)  # type: ignore[arg-type]
                and not any(isinstance(other, EdgeAblation) and other.component() == self.component()
                            and other.head in (None, h) for other in earlier)]

    def edits(self, clean, everything):
        heads = self.heads(clean.shape, everything)
        if not heads:
            return []
        w = w_o(clean.hf_model, clean.family, clean.shape, self.layer).float()[heads]  # [h, hd, d]
        kvs = [kv_head(clean.shape, h) for h in heads]
        mean_values = clean.capture.values[self.layer].float().mean(0)[kvs] if self.mode == "mean" else 0.0  # [h, hd]
        s, t = self.source, self.target

        def take_out(x, state):  # x [T, d]: remove sum_h A^h_ts (v^h_s - mean) W_O^h at the target
            values = state.values[s, kvs].float() - mean_values  # [h, hd]
            weights = state.probs[heads, t, s].float()  # [h]
            term = torch.einsum("h,hk,hkd->d", weights, values, w.to(values.device))
            if state.attn_scale is not None:  # a post-norm: its frozen scale at the target (w folds its weight)
                term = term * state.attn_scale[t].to(term.device)
            x[t] -= term.to(x)
        return [Edit("attention_output", self.layer, take_out), unread(self.layer, (heads, t, s))]

    def code(self, clean, script, name, everything):
        heads = self.heads(clean.shape, everything)
        if not heads:
            script.edit(self.layer, "attention_output", f"# {self.as_tuple()!r}: another ablation covers it")
            return
        shape, family, w_o_name = clean.shape, clean.family, f"w_o_{self.layer}"
        script.setup(_w_o_code(clean, self.layer, w_o_name))
        value = f"values[{self.source}, {{kv}}]"
        if self.mode == "mean":
            script.mean(self.layer, "values", f"{name} = nnsight.save(values.mean(0))")
            value = f"(values[{self.source}, {{kv}}] - {name}[{{kv}}])"
        script.edit(self.layer, "values")
        probs = "attn[1][0]"
        if family.probs_from_inputs is not None:  # Falcon: under sdpa its attention gives none (attn[1] is None)
            script.setup("family = lmtt_widget.architectures.family_of(hf)",
                         "shape = lmtt_widget.architectures.shape_of(hf, family)")
            script.edit(self.layer, "attention_inputs")
            probs = "lmtt_widget.tracing.block_probs(family, shape, attn, attn_inputs, value_out)"
        term = " + ".join(f"probs[{h}, {self.target}, {self.source}] * "
                          f"({value.format(kv=kv_head(shape, h))} @ {w_o_name}[{h}])" for h in heads)
        if family.attn_post_norm is not None:
            term = f"({term}) * attn_scale[{self.target}]"
        script.edit(self.layer, "attention_output", f"probs = {probs}  # [H, T, T]",
                    f"attn_update[{self.target}] -= {term}  # {self.as_tuple()!r}")


def _w_o_code(clean, layer: int, name: str) -> str:
    """A line of code binding `name` to what each head of `layer` writes per unit of its value
    mix, [H, head_dim, d]: W_O per head, times a post-norm's weight (architectures.w_o)."""
    family, shape = clean.family, clean.shape
    modules = family.modules(clean.hf_model, layer)
    block = f"hf.{family.blocks}[{layer}]"
    conv1d = type(modules["out_proj"]).__name__ == "Conv1D"  # [in, out]
    line = (f"{name} = {block}.{family.out_proj}.weight{'' if conv1d else '.T'}.reshape({shape.n_heads}, "
            f"{shape.head_dim}, -1)")
    post_norm = modules["attn_post_norm"]
    if post_norm is None:
        return line + "  # W_O per head [H, head_dim, d]"
    if family.norm.kind != "rms":
        raise LmttError(f"code for a {family.norm.kind} norm after the attention block is not written yet")
    offset = f" + {family.norm.weight_offset!r}" if family.norm.weight_offset else ""
    return (line + f" * ({block}.{family.attn_post_norm}.weight{offset})"
            "  # W_O per head, then the post-norm's weight [H, head_dim, d]")


# -- parsing and checking ----------------------------------------------------------------------

def ablation_class(kind, spec=None) -> type[Ablation]:
    """The class registered for `kind`, or an LmttError listing the kinds."""
    if not isinstance(kind, str) or kind not in ABLATIONS:
        forms = ", ".join(cls.FORM for cls in ABLATIONS.values())
        raise LmttError(f"an ablation is a tuple starting with one of {tuple(ABLATIONS)}, got {spec!r}; "
                        f"the forms are {forms}")
    return ABLATIONS[kind]


def parse(run, spec, mode: str = "zero") -> Ablation:
    """An `Ablation` from its tuple form, checked against `run`'s model; an `Ablation` is
    checked again (it keeps its own mode)."""
    if isinstance(spec, Ablation):
        spec, mode = spec.as_tuple(), spec.mode
    check_mode(mode)
    cls = ablation_class(spec[0] if isinstance(spec, (tuple, list)) and spec else None, spec)
    fewest, most = cls.ARITY
    if not fewest <= len(spec) - 1 <= most:
        raise LmttError(f"the {spec[0]!r} ablation takes {fewest} or {most} values after the kind, got {spec!r}; "
                        f"its form is {cls.FORM}")
    return cls.from_args(run, run.layer(spec[1]), list(spec[2:]), mode)


def parse_all(run, ablations, mode: str = "zero", alongside: Sequence[Ablation] = ()) -> list[Ablation]:
    """Checked ablations from one ablation or a list of them, to be applied `alongside` others
    (see `check_together`)."""
    one = isinstance(ablations, Ablation) or (
        isinstance(ablations, tuple) and ablations and isinstance(ablations[0], str))
    if not one and not isinstance(ablations, (list, tuple)):
        raise LmttError(f"give an ablation such as ('head', 3, 1), or a list of them; got {ablations!r}")
    parsed = [parse(run, spec, mode) for spec in ([ablations] if one else ablations)]
    if not parsed:
        raise LmttError("no ablations given")
    check_together(list(alongside) + parsed)
    return parsed


def check_together(ablations: list[Ablation]) -> None:
    """Refuse an ablation given twice, and two that overlap (see `Ablation.extent`) in different
    modes: where they meet, one would undo the other. Overlaps in one mode act once."""
    by_component: dict[tuple, list[Ablation]] = {}
    for ab in ablations:
        for other in by_component.setdefault(ab.component(), []):
            if ab == other:
                raise LmttError(f"{ab.as_tuple()!r} in mode {ab.mode!r} is already ablated")
            if ab.mode != other.mode and (ab.extent() is None or other.extent() is None
                                          or set(ab.extent()) & set(other.extent())):  # type: ignore[arg-type]
                raise LmttError(f"{ab.as_tuple()!r} in mode {ab.mode!r} overlaps {other.as_tuple()!r}, already ablated "
                                f"in mode {other.mode!r}: where they meet one would undo the other; give both the "
                                "same mode, or parts that do not overlap")
        by_component[ab.component()].append(ab)


def edits_for(clean, ablations: list[Ablation], alongside: Sequence[Ablation] = ()) -> list[Edit]:
    """The `tracing.Edit`s that carry out `ablations`, applied `alongside` others; means come
    from the `clean` run."""
    everything = list(alongside) + list(ablations)
    return [edit for ab in ablations for edit in ab.edits(clean, everything)]
