"""The one protocol between Python and the page: what the traits hold and what the commands take
and give back, declared once here as typed dicts.

- The state lives in typed traits (`Widget`): their values are checked against these types when set.
- Everything the page asks of Python is a *command*: a request `{kind: "lmtt-command", protocol,
  id, name, request}` answered by exactly one reply `{kind: "lmtt-reply", id, ok, result}` or
  `{kind: "lmtt-reply", id, ok: false, error: {kind, message}}`, with arrays as binary buffers.
  A malformed message gets a "malformed" error reply, never silence.
- `PROTOCOL_VERSION` travels with the widget state (trait `protocol`) and in every exported page.

`make protocol` (protocol.write_typescript) writes js/protocol.generated.ts, the TypeScript the page
imports; tests/test_protocol.py checks that the committed file is what this module generates.
"""


import pathlib
import types
import typing
from typing import Any, Literal, NotRequired, TypedDict, Union

PROTOCOL_VERSION = 1

# -- shared pieces --------------------------------------------------------------------------------

Dtype = Literal["float32", "int32", "uint32", "int16", "uint16", "uint8"]


class Encoded(TypedDict):
    """An array: little-endian bytes (a binary buffer on the wire) with its dtype and shape."""

    dtype: Dtype
    shape: list[int]
    data: bytes


Stage = Literal["embed", "mid", "ffn", "post"]
ResidualStage = Literal["embed", "mid", "post"]
EdgeKind = Literal["attention", "residual", "ffn"]
Mode = Literal["zero", "mean"]
Spec = list[Union[str, int, list[int]]]  # an intervention's tuple form, e.g. ["head", 3, 1] or ["ffn", 2, [5]]
Node = list[Union[str, int]]  # a patchable node: [stage, layer, position] or ["head", layer, head, position]
GraphNode = tuple[Stage, int, int]  # a node of the routes graph: (stage, layer, position)
TokenValue = tuple[str, float]


class Effect(TypedDict):
    """Tokens an update promotes and suppresses through the unembedding (direct logit effect)."""

    promoted: list[TokenValue]
    suppressed: list[TokenValue]


# -- traits ---------------------------------------------------------------------------------------

class Predictions(TypedDict):
    tokens: list[list[str]]  # [T][k]
    probs: Encoded  # [T, k]
    ids: Encoded  # [T, k] int32: the token ids (what the contrast picker sets)


class SelectionKindInfo(TypedDict):
    """How the page keys a selection kind's panel: its fields, then view options, in this order."""

    key: list[str]
    title: str


class Info(TypedDict):
    model: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_vocab: int
    n_ctx: int | None
    parallel: bool
    n_params: int
    distance: str
    prompt: str
    tokens: list[str]
    predictions: Predictions
    selection_kinds: dict[str, SelectionKindInfo]
    generated: list[int] | None  # [start, stop): the positions the model wrote itself (lw.generate)
    aggregate: int | None  # the number of prompts, where the routes shown are an aggregate's (lw.aggregate)


class PayloadNodes(TypedDict):
    stage: Encoded
    layer: Encoded
    token: Encoded


class PayloadEdges(TypedDict):
    source: Encoded
    target: Encoded
    kind: Encoded
    weight: Encoded  # the share
    effect: Encoded  # float32: the change of the metric when the part is removed; NaN where none (residual edges)
    head_row: Encoded


class Payload(TypedDict):
    """The routes graph as flat arrays (serialize.graph_payload)."""

    target: int
    threshold: float
    renormalize: bool
    by: Literal["share", "effect"]  # what the edges were kept by
    nodes: PayloadNodes
    edges: PayloadEdges
    heads: Encoded  # [E_attention, H]: per-head shares
    head_effects: Encoded  # [E_attention, H]: per-head effects (NaN without effects)


class ResidualSelection(TypedDict):
    kind: Literal["residual"]
    stage: ResidualStage
    layer: int  # -1 for the embedding
    token: int


class AttentionSelection(TypedDict):
    kind: Literal["attention"]
    layer: int
    source: int
    target: int
    head: int | None  # None: the head with the largest share (Python fills it in)


class FfnSelection(TypedDict):
    kind: Literal["ffn"]
    layer: int
    token: int
    neuron: NotRequired[int | None]


class NeuronSelection(TypedDict):
    kind: Literal["neuron"]
    layer: int
    token: int
    neuron: int


class ExpertSelection(TypedDict):
    """One expert of a mixture-of-experts FFN at a position where it writes (expert null: the
    shared expert)."""

    kind: Literal["expert"]
    layer: int
    token: int
    expert: int | None


# What is selected: one typed dict per registered selection kind (lmtt_widget.widget.selections).
Selection = Union[ResidualSelection, AttentionSelection, FfnSelection, NeuronSelection, ExpertSelection]


class Offer(TypedDict):
    """An intervention the selection offers: its label and the spec `ablate` takes; `at` is the
    position it can be limited to (null: it has no positions)."""

    label: str
    spec: Spec
    at: int | None


class PatchOffer(TypedDict):
    label: str
    node: Node


class SelectionInfo(TypedDict):
    """What Python derives from the selection: the panel's key and title, what can be done with it."""

    key: str
    title: str
    ablations: list[Offer]
    patches: list[PatchOffer]


class Notice(TypedDict):
    """A line shown above the graph: an error (a refusal or a failure) or information."""

    level: Literal["error", "info"]
    text: str


class ActiveIntervention(TypedDict):
    kind: str
    label: str
    spec: Spec
    mode: Mode


class Readout(TypedDict):
    probability: float
    logit: float
    logit_diff: float


class Comparison(TypedDict):
    position: int
    token: str
    token_id: int
    against: str
    against_id: int
    before: Readout
    after: Readout
    top_before: list[TokenValue]
    top_after: list[TokenValue]
    prob_change: float
    logit_change: float
    logit_diff_change: float


class EdgeChange(TypedDict):
    source: GraphNode
    target: GraphNode
    kind: EdgeKind
    weight_a: float | None
    weight_b: float | None


class ChangeCounts(TypedDict):
    attention: int
    residual: int
    ffn: int


class DiffCounts(TypedDict):
    appeared: ChangeCounts
    vanished: ChangeCounts
    changed: ChangeCounts


class GraphDiff(TypedDict):
    appeared: list[EdgeChange]
    vanished: list[EdgeChange]
    changed: list[EdgeChange]
    counts: DiffCounts
    unchanged: int
    tolerance: float
    against: Literal["clean", "other"]


class RouteEdge(TypedDict):
    layer: int
    source: int
    target: int
    score: float | None


class FaithfulnessRow(TypedDict):
    """One ranking ("share" or "effect") at one k: its top k edges removed together."""

    by: str
    k: int
    edges: list[RouteEdge]
    drop: Readout  # clean minus ablated
    random_edges: list[list[RouteEdge]]
    random: list[Readout]
    random_mean: Readout
    random_sd: Readout
    best: float  # the drop of the metric when the best k edges found are removed together
    fraction: float | None  # drop.logit_diff / best: the headline


class Faithfulness(TypedDict):
    """lmtt_widget.faithfulness.FaithfulnessTable.to_dict()."""

    position: int
    token: str
    token_id: int
    contrast: str
    contrast_id: int
    metric: str
    mode: str
    clean: Readout
    candidates: int
    best_edges: list[RouteEdge]
    rows: list[FaithfulnessRow]
    sampling: str
    reading: str
    notes: list[str]


class MissedEdge(TypedDict):
    """An edge of the routes by effect that the routes by share leave out."""

    source: GraphNode
    target: GraphNode
    kind: EdgeKind
    effect: float


class EffectsInfo(TypedDict):
    """The effects of the run shown (lmtt_widget.effects) at the target: the metric they measure,
    and the edges with a large |effect| that the share routes miss (drawn dashed)."""

    metric: str
    value: float  # the metric in the run shown
    answer: str
    answer_id: int
    contrast: str
    contrast_id: int
    method: str
    missed: list[MissedEdge]


class Pair(TypedDict):
    """The other prompt of a pair, and its prediction at the target shown."""

    prompt: str
    tokens: list[str]
    top: list[TokenValue]


class AggregateInfo(TypedDict):
    """The aggregate a widget came from (lw.aggregate): its prompts are the prompt list's first ones."""

    n_prompts: int
    positions: list[str]
    shown: bool  # the aggregate is shown (else one of its prompts, or another prompt)


class PromptList(TypedDict):
    """The prompts a widget switches between (w.prompts); the text box adds to them."""

    prompts: list[str]
    current: int | None  # the prompt shown (null: the aggregate, or a prompt not in the list)
    analysed: list[int]  # the prompts whose runs are at hand: switching to them is instant
    aggregate: AggregateInfo | None


class ActivePatch(TypedDict):
    node: Node
    label: str
    source: str  # the prompt it was patched from


# -- panels: one reply type per selection kind -----------------------------------------------------

class LensToken(TypedDict):
    token: str
    probability: float
    rank: int
    rank_change: int | None


class BlockEffect(Effect):
    block: str


class Intervened(TypedDict):
    """The selected component is ablated or patched in the run shown: the panel shows its values
    in the clean run instead (in the run shown they are zeros, or the other prompt's)."""

    how: Literal["ablated", "patched"]
    label: str  # the ablation or patch, as the page lists it


class ResidualPanel(TypedDict):
    selection: ResidualSelection
    intervened: Intervened | None
    lens: list[LensToken]
    normalized: bool
    blocks: list[BlockEffect]


class AttentionPanel(TypedDict):
    """The head's maps over `positions` (rows: targets, columns: sources; every position up to
    selections.MAP_FULL tokens, else the tokens that matter), the target's whole rows, and every
    head's attention at the target (the all-heads view)."""

    selection: AttentionSelection
    intervened: Intervened | None
    shares: Encoded  # [H]
    effects: NotRequired[Encoded]  # [H]: each head's effect on the metric through this edge
    metric: NotRequired[str]  # what the effects change: "logit(' Mary') - logit(' John') after token 13 ' to'"
    positions: Encoded  # [n] int32, ascending: the maps' rows and columns
    focus: list[int]  # the tokens that matter (the routes', the edge's neighbourhood): the maps' default crop
    pattern: Encoded  # [n, n]
    importance: Encoded  # [n, n]
    row_pattern: Encoded  # [T]: the target's row
    row_importance: Encoded  # [T]
    heads_row: Encoded  # [H, T]: each head's attention from the target
    from_source: Effect
    total: Effect


class NeuronRow(Effect):
    index: int
    share: float
    effect: NotRequired[float]  # on the metric, when the neuron's write is removed
    activation: float


class ExpertRow(Effect):
    """An expert writing at the position: its routing weight (the shared expert: its gate), its
    write's share of the block's output, and the tokens the write promotes and suppresses."""

    expert: int | None  # null: the shared expert
    weight: float
    share: float
    effect: NotRequired[float]  # on the metric, when the expert's write is removed


class FfnPanel(TypedDict):
    """A dense FFN lists its top neurons; a mixture of experts lists the experts writing at the
    token instead (the routed ones by routing weight, the shared expert last), and no neurons."""

    selection: FfnSelection
    intervened: Intervened | None
    ffn_share: float
    ffn_effect: NotRequired[float]  # on the metric, when the FFN update is removed
    metric: NotRequired[str]
    block: Effect
    neurons: list[NeuronRow]
    experts: NotRequired[list[ExpertRow]]


class PromptRow(TypedDict):
    """One prompt of an aggregate behind a selection (aggregate.Aggregate.rows)."""

    index: int
    prompt: str
    token: str  # its token(s) there: "source → target" for an edge
    share: float | None  # its own share of what is selected (null for the embedding)
    in_routes: bool  # whether its own routes hold what is selected


class PromptsPanel(TypedDict):
    """What an aggregate shows for a selection: the prompts behind it, each openable on its own."""

    selection: Selection
    rows: list[PromptRow]
    mean: float | None  # the mean of the prompts' shares
    std: float | None
    support: float  # the fraction of the prompts whose own routes hold it


PositionValue = tuple[int, float]


class NeuronPanel(TypedDict):
    """One FFN neuron: its activation here and at every position, the positions where it fires
    most (by size), and the tokens its write promotes and suppresses (the write is the activation
    times its output row, so a negative activation flips them)."""

    selection: NeuronSelection
    intervened: Intervened | None
    activation: float
    share: float  # of its write in the block's output at the token
    activations: Encoded  # [T]
    strongest: list[PositionValue]
    effect: Effect
    neuron_effect: NotRequired[float]  # on the metric, when its write at the token is removed
    metric: NotRequired[str]


class ExpertPanel(TypedDict):
    """One expert of a mixture of experts at a token: its routing weight, its write's share and
    effect, the tokens its write promotes and suppresses, and its top neurons by share (each
    neuron's write a_n w W_down[:, n], w the routing weight)."""

    selection: ExpertSelection
    intervened: Intervened | None
    weight: float
    share: float
    effect: NotRequired[float]  # on the metric, when the expert's write is removed
    metric: NotRequired[str]
    write: Effect
    neurons: list[NeuronRow]


PanelData = Union[ResidualPanel, AttentionPanel, FfnPanel, NeuronPanel, ExpertPanel, PromptsPanel]

# The typed traits: name -> type (None where a trait may be empty).
TRAITS: dict[str, Any] = {
    "protocol": int,
    "info": Info,
    "payload": Payload,
    "target": int,
    "threshold": float,
    "renormalize": bool,
    "normalize_lens": bool,
    "selection": Union[Selection, None],
    "selection_info": Union[SelectionInfo, None],
    "notice": Union[Notice, None],
    "busy": str,
    "preloaded": dict[str, PanelData],
    "interventions": list[ActiveIntervention],
    "comparison": Union[Comparison, None],
    "graph_diff": Union[GraphDiff, None],
    "faithfulness": Union[Faithfulness, None],
    "intervention_code": str,
    "show_reference": bool,
    "pair": Union[Pair, None],
    "patches": list[ActivePatch],
    "diff_against": Literal["other", "clean"],
    "prompt_list": Union[PromptList, None],

    "contrast": Union[int, None],  # the metric's contrast token id; None: the runner-up
    "rank_by": Literal["share", "effect"],  # the routes drawn: kept by share, or by |effect|
    "show_missed": bool,  # draw, dashed, the edges with a large |effect| that the share routes miss
    "with_effects": bool,  # compute effects (off: the routes by share only, no backward pass per view)
    "effects": Union[EffectsInfo, None],
}

# -- commands: name -> (request type, result type) -------------------------------------------------

class PanelOptions(TypedDict):
    """How much a panel lists; each within 1..selections.OPTION_MAX (absent: the defaults)."""

    tokens: NotRequired[int]  # logit lens rows (default 10)
    logits: NotRequired[int]  # promoted and suppressed tokens, each (default 8)
    neurons: NotRequired[int]  # an FFN panel's neurons (default 10)


class PanelRequest(TypedDict):
    selection: Selection
    options: NotRequired[PanelOptions]


class AnalyzeRequest(TypedDict):
    prompt: str


class Analyzed(TypedDict):
    n_tokens: int
    seconds: float


class AblateRequest(TypedDict):
    spec: Spec
    mode: Mode


class IndexRequest(TypedDict):
    index: int


class PatchRequest(TypedDict):
    node: Node


class NoRequest(TypedDict):
    pass


class FaithfulnessRequest(TypedDict):
    k: int
    mode: Mode


class GenerateRequest(TypedDict):
    prompt: str  # the text to continue
    max_new_tokens: int
    chat: bool  # put it into the tokenizer's chat template first


class Generated(TypedDict):
    n_tokens: int
    n_generated: int
    seconds: float


COMMANDS: dict[str, tuple[Any, Any]] = {
    "panel": (PanelRequest, PanelData),
    "analyze": (AnalyzeRequest, Analyzed),
    "ablate": (AblateRequest, Comparison),
    "undo": (IndexRequest, Union[Comparison, None]),
    "patch": (PatchRequest, Comparison),
    "unpatch": (IndexRequest, Union[Comparison, None]),
    "swap": (NoRequest, None),
    "pair": (AnalyzeRequest, None),
    "faithfulness": (FaithfulnessRequest, Faithfulness),
    "open_prompt": (IndexRequest, Analyzed),
    "open_aggregate": (NoRequest, None),
    "generate": (GenerateRequest, Generated),
}

ErrorKind = Literal["refused", "failed", "malformed"]
ALIASES = {"Selection": Selection, "PanelData": PanelData}  # unions with a name in TypeScript


class CommandError(TypedDict):
    """refused: the request was understood and declined (bad value, nothing to undo); failed:
    Python raised while doing it; malformed: the message itself is not a valid request."""

    kind: ErrorKind
    message: str


class Command(TypedDict):
    """A request from the page."""

    kind: Literal["lmtt-command"]
    protocol: int
    id: str
    name: str
    request: dict[str, Any]


class Reply(TypedDict):
    """Python's answer to one command: `result` when ok, else `error`."""

    kind: Literal["lmtt-reply"]
    id: str | None
    ok: bool
    result: NotRequired[Any]
    error: NotRequired[CommandError]


class ProtocolError(ValueError):
    """A value that does not have its declared type."""


# -- checking values against the declarations -----------------------------------------------------

def check(value: Any, tp: Any, where: str = "value") -> Any:
    """`value` if it has type `tp` (as declared above), else a ProtocolError naming where and why."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is None or tp is type(None):
        return _expect(value is None, value, "null", where)
    if origin in (Union, types.UnionType):
        chosen = _by_kind(value, args)
        if chosen is not None:  # a union told apart by "kind": the reason is that member's
            return check(value, chosen, where)
        for option in args:
            try:
                return check(value, option, where)
            except ProtocolError:
                pass
        raise ProtocolError(f"{where}: {_show(value)} is none of {' | '.join(_name(a) for a in args)}")
    if origin is Literal:
        return _expect(value in args and not isinstance(value, bool), value, " | ".join(map(repr, args)), where)
    if tp is bool:
        return _expect(isinstance(value, bool), value, "a boolean", where)
    if tp is int:
        return _expect(isinstance(value, int) and not isinstance(value, bool), value, "an integer", where)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return _expect(ok, value, "a number", where)
    if tp is str:
        return _expect(isinstance(value, str), value, "a string", where)
    if tp is bytes:
        return _expect(isinstance(value, (bytes, bytearray, memoryview)), value, "binary data", where)
    if origin is list:
        _expect(isinstance(value, (list, tuple)), value, "a list", where)
        for i, item in enumerate(value):
            check(item, args[0], f"{where}[{i}]")
        return value
    if origin is tuple:
        _expect(isinstance(value, (list, tuple)) and len(value) == len(args), value, f"a list of {len(args)}", where)
        for i, (item, item_tp) in enumerate(zip(value, args)):
            check(item, item_tp, f"{where}[{i}]")
        return value
    if origin is dict:
        _expect(isinstance(value, dict), value, "an object", where)
        for key, item in value.items():
            check(key, args[0], f"{where} key")
            check(item, args[1], f"{where}[{key!r}]")
        return value
    if typing.is_typeddict(tp):
        _expect(isinstance(value, dict), value, f"an object ({tp.__name__})", where)
        hints = typing.get_type_hints(tp)
        missing = [k for k in tp.__required_keys__ if k not in value]
        if missing:
            raise ProtocolError(f"{where}: missing {', '.join(map(repr, missing))}")
        unknown = [k for k in value if k not in hints]
        if unknown:
            raise ProtocolError(f"{where}: unknown {', '.join(map(repr, unknown))}")
        for key, item in value.items():
            check(item, _required(hints[key]), f"{where}.{key}")
        return value
    raise TypeError(f"protocol.check does not know the type {tp!r}")


def _by_kind(value: Any, options: tuple) -> Any:
    """The member of a union of typed dicts whose literal `kind` is the value's, if any."""
    if not isinstance(value, dict) or "kind" not in value:
        return None
    for option in options:
        kind = typing.get_type_hints(option).get("kind") if typing.is_typeddict(option) else None
        if typing.get_origin(kind) is Literal and value["kind"] in typing.get_args(kind):
            return option
    return None


def _required(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is NotRequired else tp


def _expect(ok: bool, value: Any, expected: str, where: str) -> Any:
    if not ok:
        raise ProtocolError(f"{where}: expected {expected}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


# -- TypeScript -----------------------------------------------------------------------------------

def _ts(tp: Any, alias: bool = True) -> str:
    """TypeScript for a declared type; the named unions (ALIASES) by their names unless `alias` is False."""
    for name, named in ALIASES.items():
        if alias and tp == named:
            return name
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "unknown"
    if tp is None or tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(_ts(a) for a in args)
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if tp in (int, float):
        return "number"
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if tp is bytes:
        return "DataView | ArrayBuffer | Uint8Array"
    if origin is list:
        inner = _ts(args[0])
        return f"({inner})[]" if "|" in inner else f"{inner}[]"
    if origin is tuple:
        return "[" + ", ".join(_ts(a) for a in args) + "]"
    if origin is dict:
        return f"Record<{_ts(args[0])}, {_ts(args[1])}>"
    if typing.is_typeddict(tp):
        return tp.__name__
    raise TypeError(f"no TypeScript for {tp!r}")


def _interfaces() -> list[Any]:
    """Every TypedDict reachable from the traits and commands, dependencies first."""
    seen: list[Any] = []

    def visit(tp: Any) -> None:
        if typing.is_typeddict(tp):
            if tp in seen:
                return
            for hint in typing.get_type_hints(tp).values():
                visit(hint)
            seen.append(tp)
        for arg in typing.get_args(tp):
            if not isinstance(arg, str):
                visit(arg)

    for tp in [*TRAITS.values(), *(t for pair in COMMANDS.values() for t in pair), Command, Reply]:
        visit(tp)
    return seen


def typescript() -> str:
    """js/protocol.generated.ts: the declarations above, as TypeScript."""
    lines = ["// Generated by `make protocol` from lmtt_widget/widget/protocol.py.",
             "// Do not edit: change the Python declarations and regenerate (tests/test_protocol.py checks).",
             "", f"export const PROTOCOL_VERSION = {PROTOCOL_VERSION};", ""]
    for tp in _interfaces():
        hints = typing.get_type_hints(tp)
        lines.append(f"export interface {tp.__name__} {{")
        for key, hint in hints.items():
            optional = "?" if key not in tp.__required_keys__ else ""
            lines.append(f"  {key}{optional}: {_ts(_required(hint))};")
        lines += ["}", ""]
    lines += [f"export type {name} = {_ts(tp, alias=False)};" for name, tp in ALIASES.items()]
    lines += ["", "export interface Traits {"]
    lines += [f"  {name}: {_ts(tp)};" for name, tp in TRAITS.items()]
    lines += ["}", "", "export interface Commands {"]
    lines += [f"  {name}: {{ request: {_ts(req)}; result: {_ts(res)} }};" for name, (req, res) in COMMANDS.items()]
    lines += ["}", "", "export type CommandName = keyof Commands;", ""]
    return "\n".join(lines)


TYPESCRIPT = pathlib.Path(__file__).resolve().parents[2] / "js" / "protocol.generated.ts"


def write_typescript() -> pathlib.Path:
    """Write js/protocol.generated.ts (`make protocol`)."""
    TYPESCRIPT.write_text(typescript(), encoding="utf-8")
    return TYPESCRIPT
