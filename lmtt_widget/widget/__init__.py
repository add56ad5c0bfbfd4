"""The notebook widget: the routes graph and the drill-down panels, every selection back in Python.

    w = lmtt_widget.show(model, "When Mary and John went to the store, John gave a drink to")
    w.selection          # {"kind": "attention", "layer": 23, "source": 3, "target": 14, "head": 5}
    w.selected           # the tensors behind it (head output, attention row, shares, ...)
    w.on_select(print)   # called with the selection dict on every change
    w.graph              # the networkx graph being shown
    w.ablate(("head", 23, 5)), w.undo(), w.patch(...), w.measure_faithfulness(k=5), w.code()
    w.contrast = " John"; w.rank_by = "effect"; w.show_missed = True   # effects (lmtt_widget.effects)
    w.with_effects = False   # routes by share only: no backward pass per prompt and target (the default:
                             # effects for prompts up to 512 tokens)

The state lives in one immutable `View` (state.py); the widget copies each new snapshot into its
typed traits (protocol.TRAITS) and answers the page's commands (protocol.COMMANDS), each with one
typed reply or error. Selection kinds are registered in selections.py.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

from .. import interventions as I
from ..aggregate import Aggregate
from ..errors import LmttError
from ..faithfulness import FaithfulnessTable
from ..models import DEMO_PROMPT, load_model
from ..run import Run, analyze
from . import protocol as P
from . import serialize as S
from .prompts import names_a_file, naming_line, read_prompts
from .state import View

STATIC = pathlib.Path(__file__).parent.parent / "static"
# the traits the page may set; each goes through View.set
OPTIONS = ("target", "threshold", "renormalize", "normalize_lens", "selection", "show_reference", "diff_against",
           "contrast", "rank_by", "show_missed", "with_effects")


class Typed(traitlets.TraitType):
    """A synced trait whose value is checked against its protocol type."""

    def __init__(self, tp: Any, default: Any, **kwargs):
        super().__init__(default_value=default, **kwargs)
        self.tp = tp

    def validate(self, obj, value):
        if value is self.default_value:  # what a trait holds until the first snapshot is shown
            return value
        try:
            return P.check(value, self.tp, self.name)
        except P.ProtocolError as error:
            raise traitlets.TraitError(str(error)) from None


def _trait(name: str, default: Any) -> Typed:
    return Typed(P.TRAITS[name], default).tag(sync=True)


def _option(name: str, default: Any) -> traitlets.Any:
    """A trait the page may set: the view checks and completes its value (View.set), then the
    value it keeps has the declared type."""
    return traitlets.Any(default).tag(sync=True, protocol_type=P.TRAITS[name])


class _Refused(traitlets.TraitError):
    """An option the page set that the view refuses: shown as a notice, the old value restored."""


_HANDLERS: dict[str, Callable[[Widget, dict], Any]] = {}


def command(name: str):
    """Register a Widget method as the handler of the page's command `name` (protocol.COMMANDS)."""
    if name not in P.COMMANDS:
        raise ValueError(f"{name!r} is not declared in protocol.COMMANDS")

    def register(method):
        _HANDLERS[name] = method
        return method
    return register


class Widget(anywidget.AnyWidget):
    """The routes of one `Run`, drawn inline: `Widget(run)` or `lmtt_widget.show(model, prompt)`;
    `Widget(run, other=run_b)` or `lmtt_widget.show_pair(model, prompt, other)` for two prompts of
    the same length in tokens (the difference marked; patching from the other prompt)."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    protocol = _trait("protocol", P.PROTOCOL_VERSION)
    info = _trait("info", None)  # model facts, prompt, tokens, top predictions (set before display)
    payload = _trait("payload", None)  # the routes graph (serialize.graph_payload)
    target = _option("target", 0)  # whose prediction's routes are shown
    threshold = _option("threshold", 0.04)
    renormalize = _option("renormalize", True)
    normalize_lens = _option("normalize_lens", True)  # final norm before unembedding
    selection = _option("selection", None)
    selection_info = _trait("selection_info", None)  # the selection's panel key, title, what it offers
    notice = _trait("notice", None)  # a refusal of something the page set, or information
    busy = _trait("busy", "")  # what long work is under way ("" when idle)
    preloaded = _trait("preloaded", {})  # panel data carried without a kernel (the export)
    interventions = _trait("interventions", [])  # the active ablations
    comparison = _trait("comparison", None)  # clean vs the run shown, at the target
    graph_diff = _trait("graph_diff", None)  # the shown routes' edges against the clean run's or the other prompt's
    faithfulness = _trait("faithfulness", None)  # the last measure_faithfulness
    intervention_code = _trait("intervention_code", "")  # what `code()` returns ("" when clean)
    show_reference = _option("show_reference", False)  # draw the routes the diff compares with
    pair = _trait("pair", None)  # the other prompt, its tokens and prediction at the target
    patches = _trait("patches", [])  # the active patches
    diff_against = _option("diff_against", "other")  # in a pair with interventions: "other" or "clean"
    prompt_list = _trait("prompt_list", None)  # the prompts to switch between, and the aggregate if any
    contrast = _option("contrast", None)  # the effects' contrast token id at the target (None: the runner-up)
    rank_by = _option("rank_by", "share")  # the routes drawn: kept by "share" or by "effect"
    show_missed = _option("show_missed", False)  # mark, dashed, large-|effect| edges off the share routes
    effects = _trait("effects", None)  # the effects' metric and the missed edges (lmtt_widget.effects)
    with_effects = _option("with_effects", True)  # compute effects (off: no forward and backward per view)

    def __init__(self, run: Run | Aggregate, *, target: int = -1, threshold: float = 0.04, renormalize: bool = True,
                 normalize_lens: bool = True, selection: dict | None = None, other: Run | None = None,
                 prompts=None, contrast=None, rank_by: str = "share", with_effects: bool | None = None, **kwargs):
        unknown = set(kwargs) - {"layout"}
        if unknown:
            raise TypeError(f"Widget() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        view = View.of(run, other, target=target, threshold=threshold, renormalize=renormalize,
                       normalize_lens=normalize_lens, selection=selection, prompts=prompts, contrast=contrast,
                       rank_by=rank_by, with_effects=with_effects)
        self._view: View = None  # type: ignore[assignment]  # None only until _show(view) below
        self._pending: View | None = None  # a view an option change from the page or Python made, not shown yet
        self._from_page = False
        self._callbacks: list[Callable[[dict], Any]] = []
        super().__init__(**kwargs)
        self._show(view)
        self.on_msg(self._on_message)

    # -- the Python API ------------------------------------------------------------------------

    @property
    def view(self) -> View:
        """The current snapshot of the state (lmtt_widget.widget.state.View)."""
        return self._view

    @property
    def run(self) -> Run | Aggregate:
        """The `Run` being shown (or the `Aggregate`, before one of its prompts is opened)."""
        return self._view.run

    @property
    def other(self) -> Run | None:
        """The other prompt's clean `Run` (None when the widget shows one prompt)."""
        return self._view.other

    @property
    def graph(self):
        """The networkx routes graph being shown (lmtt_widget.graph)."""
        return self._view.graph

    @property
    def selected(self) -> dict[str, Any]:
        """The tensors behind the selection (an empty dict when nothing is selected), with their
        effects on the metric of `w.effects` ("effects", "ffn_effect", "neuron_effects", "metric")."""
        return self._view.selected()

    def on_select(self, callback: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """Call `callback(selection)` whenever the selection changes (from either side)."""
        self._callbacks.append(callback)
        return callback

    def select(self, kind: str | None = None, **fields) -> dict:
        """Set the selection, e.g. `w.select("attention", layer=3, source=1, target=5)`; `w.select()` clears it."""
        self._show(self._view.select(None if kind is None else {"kind": kind, **fields}))
        return self.selection or {}

    def panel(self, selection: dict, options: dict | None = None) -> dict[str, Any]:
        """The data of one panel (what the page shows for `selection`); `options` say how much it
        lists: {"tokens": 30, "logits": 15, "neurons": 20} (protocol.PanelOptions)."""
        return self._view.panel(selection, options)

    def analyze(self, prompt: str) -> None:
        """Analyse a new prompt with the same model, add it to the prompt list and show it; on error
        nothing changes."""
        with self._working("Analysing the prompt…"):
            self._show(self._view.analyze(prompt))

    @property
    def prompts(self) -> list[str]:
        """The prompts the page's selector switches between (an aggregate's come first); setting it
        to a list (or a text file, one prompt per line) replaces the others."""
        return list(self._view.prompts.texts)

    @prompts.setter
    def prompts(self, prompts) -> None:
        self._show(self._view.with_prompts(prompts))

    def open_prompt(self, index: int) -> None:
        """Show prompt `index` of `prompts` (analysed now unless it was shown recently)."""
        with self._working("Analysing the prompt…"):
            self._show(self._view.open_prompt(index))

    def open_aggregate(self) -> None:
        """Show the aggregate this widget was made from again."""
        self._show(self._view.open_aggregate())

    def generate(self, prompt: str | None = None, max_new_tokens: int = 20, chat: bool = False) -> Run:
        """Continue `prompt` (default: the prompt shown) with the model's own tokens (lw.generate),
        show the whole text, add it to the prompt list and return its run."""
        with self._working(f"Generating {max_new_tokens} tokens…"):
            self._show(self._view.generate(self._view.run.prompt if prompt is None else prompt, max_new_tokens,
                                           chat))
        return self.run  # type: ignore[return-value]  # a generated run

    def ablate(self, *ablations, mode: str = "zero") -> I.Comparison:
        """Add `ablations` (tuples such as ("head", layer, head), see lmtt_widget.interventions)
        to those shown, rerun from the clean run and show it. Returns the comparison of the
        prediction at the target with the clean run. A bad ablation raises and changes nothing."""
        return self._act(f"Rerunning with {len(self.run.interventions) + len(ablations)} ablations…",
                         lambda: self._view.ablate(*ablations, mode=mode))

    def undo(self, index: int = -1) -> I.Comparison | None:
        """Remove one ablation (the last by default) and rerun the clean run with the others."""
        return self._act("Rerunning…", lambda: self._view.undo(index))

    def patch(self, *nodes) -> I.Comparison:
        """Patch each node's activation from the other prompt into the prompt shown: a graph node
        (stage, layer, position) or ("head", layer, head, position)."""
        return self._act("Patching…", lambda: self._view.patch(*nodes))

    def unpatch(self, index: int = -1) -> I.Comparison | None:
        """Remove one patch (the last by default) and rerun the clean run with the rest."""
        return self._act("Rerunning…", lambda: self._view.unpatch(index))

    def compare_with(self, other: str | Run) -> I.GraphDiff:
        """Compare with another prompt (a string, analysed with the same model, or a Run) of the
        same length in tokens; returns the two clean graphs' difference at the target shown."""
        with self._working("Analysing the other prompt…"):
            view = self._view.compare_with(other)
        self._show(view)
        return I.compare(view.other, view.clean, token=view.target, threshold=view.threshold,
                         renormalize=view.renormalize)

    def swap(self) -> None:
        """Show the other prompt's clean run, and compare it with the prompt shown until now."""
        self._show(self._view.swap())

    def measure_faithfulness(self, k: int = 5, draws: int = 10, mode: str = "zero") -> FaithfulnessTable:
        """`run.faithfulness(k, by=("share", "effect"))` at the target, for the contrast shown:
        each ranking's top k edges into the target removed, as a fraction of the best k; also
        shown in the faithfulness card."""
        return self._act("Measuring faithfulness…", lambda: self._view.measure_faithfulness(k, draws, mode))

    def code(self, model_expr: str | None = None) -> str:
        """Standalone nnsight code that reproduces the interventions shown."""
        return self._view.code(model_expr)

    def save_html(self, path, *, title: str | None = None) -> pathlib.Path:
        """Write one self-contained HTML file that opens offline (lmtt_widget.widget.export)."""
        from .export import save_html  # export reads widgets; widgets write exports: kept one way at import

        return save_html(self, path, title=title)

    # -- snapshots into traits ------------------------------------------------------------------

    def _show(self, view: View) -> None:
        old = self._view
        self._view, self._pending = view, None
        with self.hold_sync():
            for name, value in view.traits().items():
                if getattr(self, name) != value:
                    setattr(self, name, value)
        if old is not None and old.selection != view.selection:
            for callback in list(self._callbacks):
                callback(self.selection or {})

    def _act(self, busy: str, action: Callable[[], tuple[View, Any]]):
        with self._working(busy):
            view, report = action()
        self._show(view)
        return report

    @contextlib.contextmanager
    def _working(self, what: str):
        self.busy = what
        try:
            yield
        finally:
            self.busy = ""

    @traitlets.validate(*OPTIONS)
    def _valid_option(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        base = self._pending or self._view
        current = None if base is None else base.shown(name)
        if base is None or (type(value) is type(current) and value == current):
            return value  # a snapshot being shown
        try:
            self._pending = base.set(**{name: value})
        except LmttError as error:
            if self._from_page:
                raise _Refused(f"Refused {name}: {error}") from None
            raise
        return self._pending.shown(name)

    @traitlets.observe(*OPTIONS)
    def _option_changed(self, change):
        if self._pending is not None:
            self._show(self._pending)

    def set_state(self, sync_data):
        """Trait values from the page: a refused one is restored there, with a notice why."""
        self._from_page = True
        try:
            super().set_state(sync_data)
            if self.notice and self.notice["level"] == "error":
                self.notice = None
        except traitlets.TraitError as error:
            self._pending = None
            self.notice = {"level": "error", "text": str(error) if isinstance(error, _Refused) else f"Refused: {error}"}
            self.send_state([k for k in sync_data if k in self.keys])
        finally:
            self._from_page = False

    # -- commands from the page ------------------------------------------------------------------

    def _on_message(self, _widget, content, _buffers) -> None:
        state, paths, buffers = S.split_buffers(self.handle_command(content))
        self.send({**state, "buffer_paths": paths}, buffers)

    def handle_command(self, content: Any) -> dict:
        """The reply (protocol.Reply) to one command message from the page."""
        request_id = content.get("id") if isinstance(content, dict) and isinstance(content.get("id"), str) else None
        try:
            P.check(content, P.Command, "message")
            if content["protocol"] != P.PROTOCOL_VERSION:
                raise P.ProtocolError(f"the page speaks protocol {content['protocol']}, this kernel "
                                      f"{P.PROTOCOL_VERSION}: run the cell again to reload the widget")
            if content["name"] not in _HANDLERS:
                raise P.ProtocolError(f"unknown command {content['name']!r}; commands are {', '.join(_HANDLERS)}")
            request = P.check(content["request"], P.COMMANDS[content["name"]][0], "request")
        except P.ProtocolError as error:
            return _error(request_id, "malformed", str(error))
        try:
            return {"kind": "lmtt-reply", "id": request_id, "ok": True,
                    "result": _HANDLERS[content["name"]](self, request)}
        except LmttError as error:
            return _error(request_id, "refused", str(error))
        except Exception as error:  # the widget keeps what it showed
            return _error(request_id, "failed", f"{type(error).__name__}: {error}")

    @command("panel")
    def _panel(self, request: dict):
        return self.panel(request["selection"], request.get("options"))

    @command("analyze")
    def _analyze(self, request: dict):
        start = time.perf_counter()
        self.analyze(request["prompt"])
        return {"n_tokens": self.run.n_tokens, "seconds": time.perf_counter() - start}

    @command("ablate")
    def _ablate(self, request: dict):
        return self.ablate(tuple(request["spec"]), mode=request["mode"]).to_dict()

    @command("undo")
    def _undo(self, request: dict):
        return _to_dict(self.undo(request["index"]))

    @command("patch")
    def _patch(self, request: dict):
        return self.patch(tuple(request["node"])).to_dict()

    @command("unpatch")
    def _unpatch(self, request: dict):
        return _to_dict(self.unpatch(request["index"]))

    @command("swap")
    def _swap(self, request: dict):
        self.swap()

    @command("pair")
    def _pair(self, request: dict):
        self.compare_with(request["prompt"])

    @command("faithfulness")
    def _faithfulness(self, request: dict):
        self.measure_faithfulness(k=request["k"], mode=request["mode"])
        return self.faithfulness

    @command("open_prompt")
    def _open_prompt(self, request: dict):
        start = time.perf_counter()
        self.open_prompt(request["index"])
        return {"n_tokens": self.run.n_tokens, "seconds": time.perf_counter() - start}

    @command("open_aggregate")
    def _open_aggregate(self, request: dict):
        self.open_aggregate()

    @command("generate")
    def _generate(self, request: dict):
        start = time.perf_counter()
        run = self.generate(request["prompt"], request["max_new_tokens"], request["chat"])
        return {"n_tokens": run.n_tokens, "n_generated": len(run.generated or ()),
                "seconds": time.perf_counter() - start}


def _to_dict(report) -> dict | None:
    return None if report is None else report.to_dict()


def _error(request_id: str | None, kind: str, message: str) -> dict:
    return {"kind": "lmtt-reply", "id": request_id, "ok": False, "error": {"kind": kind, "message": message}}


def show(model=None, prompt=None, **options) -> Widget:
    """Analyse `prompt` on `model` (default: the offline demo model) and return the widget;
    `options` go to `Widget` (target, threshold, renormalize, normalize_lens, selection, contrast,
    rank_by, with_effects: False skips the effects' backward pass for each prompt and target shown; the
    default computes them for prompts up to state.EFFECTS_AUTO_MAX tokens).

    `prompt` may be a list of prompts, or a UTF-8 text file of them (one per line; a refusal names
    the line): the widget shows the first and switches between them. A string that reads as a file's
    name ("prompts.txt", "/data/ioi.csv") but names none is refused (a prompt like it goes in a list).
    `show(run)` and `show(lw.aggregate(runs))` show what is given."""
    if isinstance(model, (Run, Aggregate)):
        return Widget(model, **options)
    one_prompt = prompt is None or (isinstance(prompt, str) and not names_a_file(prompt))  # before loading a model
    if model is None or isinstance(model, str):
        model = load_model(model)
    if one_prompt:
        return Widget(analyze(model, DEMO_PROMPT if prompt is None else prompt), **options)
    prompts, file = read_prompts(prompt)
    with naming_line(file, prompts[0]):
        first = analyze(model, prompts[0])
    return Widget(first, prompts=file or prompts, **options)


def show_pair(model=None, prompt: str | None = None, other: str | None = None, **options) -> Widget:
    """Two prompts of the same length in tokens (e.g. clean and corrupted IOI) in one widget: the
    routes of `prompt`, marked where `other`'s differ, and patching from `other`."""
    if model is None or isinstance(model, str):
        model = load_model(model)
    if prompt is None and other is None:  # the demo: clean and corrupted IOI
        prompt, other = DEMO_PROMPT, DEMO_PROMPT.replace(" John gave", " Mary gave")
    if prompt is None or other is None:
        raise TypeError("show_pair needs two prompts: show_pair(model, prompt, other)")
    return Widget(analyze(model, prompt), other=analyze(model, other), **options)
