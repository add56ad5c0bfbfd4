"""The notebook widget: the routes graph and the drill-down panels, every selection back in Python.

    w = lmtt_widget.show(model, "When Mary and John went to the store, John gave a drink to")
    w.selection          # {"kind": "attention", "layer": 23, "source": 3, "target": 14, "head": 5}
    w.selected           # the tensors behind it (head output, attention row, shares, ...)
    w.on_select(print)   # called with the selection dict on every change
    w.graph              # the networkx graph being shown

State lives in traits (so a saved notebook re-renders); the frontend asks for the heavy panels
with custom messages `{"type": "panel", "id", "request"}` and gets `{"type": "panel", "id",
"ok", "data" | "error"}` back, arrays as binary buffers.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import anywidget
import traitlets

from . import serialize as S
from .errors import LmttError, check_index
from .widget_interventions import InterventionsMixin
from .widget_pair import PairMixin

STATIC = pathlib.Path(__file__).parent / "static"
LENS_K = 10
LOGITS_K = 8
NEURONS_K = 10
NEURON_LOGITS_K = 5


class Widget(PairMixin, InterventionsMixin, anywidget.AnyWidget):
    """The routes of one `Run`, drawn inline; `Widget(run)` or `lmtt_widget.show(model, prompt)`;
    `Widget(run, other=run_b)` or `lmtt_widget.show_pair(model, prompt, other)` for two prompts (widget_pair)."""

    _esm = STATIC / "widget.js"

    info = traitlets.Dict().tag(sync=True)  # model facts, prompt, tokens, top predictions
    payload = traitlets.Dict().tag(sync=True)  # the routes graph (serialize.graph_payload)
    target = traitlets.Int(-1).tag(sync=True)  # whose prediction's routes are shown
    threshold = traitlets.Float(0.04).tag(sync=True)
    renormalize = traitlets.Bool(True).tag(sync=True)
    normalize_lens = traitlets.Bool(True).tag(sync=True)  # final norm before unembedding
    selection = traitlets.Dict().tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)  # an error or refusal, shown in the widget
    busy = traitlets.Unicode("").tag(sync=True)  # what long work is under way ("" when idle)
    preloaded = traitlets.Dict().tag(sync=True)  # panel responses carried without a kernel (export)

    def __init__(self, run, *, target: int = -1, threshold: float = 0.04, renormalize: bool = True,
                 normalize_lens: bool = True, selection: dict | None = None, other=None, **kwargs):
        unknown = set(kwargs) - {"layout"}
        if unknown:
            raise TypeError(f"Widget() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if other is not None:
            from .interventions import _check_pair
            _check_pair(run, other, "comparing two prompts")
        self._run, self._other = run, other
        self._graph = None
        self._callbacks: list[Callable[[dict], Any]] = []
        self._valid: dict[str, Any] = {}  # the last valid value of each checked trait
        super().__init__(**kwargs)
        with self.hold_sync():
            self.threshold = self._check_threshold(threshold)
            self.renormalize = renormalize
            self.normalize_lens = normalize_lens
            self.target = run.position(target)
            self._refresh(new_run=True)
            if selection:
                self.selection = selection
        self.on_msg(self._on_message)

    # -- the Python API ------------------------------------------------------------------

    @property
    def run(self):
        """The `Run` being shown."""
        return self._run

    @property
    def graph(self):
        """The networkx routes graph being shown (lmtt_widget.graph): the run's, or with
        `show_reference` its clean run's or the other prompt's."""
        return self._graph

    def on_select(self, callback: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """Call `callback(selection)` whenever the selection changes (from either side)."""
        self._callbacks.append(callback)
        return callback

    def select(self, kind: str | None = None, **fields) -> dict:
        """Set the selection, e.g. `w.select("attention", layer=3, source=1, target=5)`; `w.select()` clears it."""
        self.selection = {} if kind is None else {"kind": kind, **fields}
        return self.selection

    @property
    def selected(self) -> dict[str, Any]:
        """The tensors behind the selection (an empty dict when nothing is selected)."""
        sel, run = self.selection, self._run
        kind = sel.get("kind")
        if kind == "residual":
            return {"kind": kind, "residual": run.residual(sel["layer"], sel["token"], sel["stage"]),
                    "logit_lens": run.logit_lens(sel["layer"], sel["token"], sel["stage"], k=LENS_K,
                                                 normalize=self.normalize_lens)}
        if kind == "attention":
            layer, head, source, target = sel["layer"], sel["head"], sel["source"], sel["target"]
            probs = run.attention_pattern(layer)[head].float().cpu()  # [T, T]
            return {"kind": kind, "head_output": run.head_output(layer, head, target, source),
                    "head_output_total": run.head_output(layer, head, target),
                    "attention_row": probs[target], "attention_pattern": probs,
                    "importance": run.head_contributions(layer, head),
                    "shares": run.edge_contributions(layer, target, source)}
        if kind == "ffn":
            layer, token = sel["layer"], sel["token"]
            neuron_shares, residual_share = run.neuron_shares(layer, token)
            out = {"kind": kind, "ffn_output": run.capture.ffn_out[layer][token],
                   "activations": run.neuron_activations(layer)[token],
                   "neuron_shares": neuron_shares, "residual_share": residual_share}
            if sel.get("neuron") is not None:
                out["neuron_activation"] = out["activations"][sel["neuron"]]
                out["neuron_output"] = run.neuron_writes(layer, token)[sel["neuron"]]
            return out
        return {}

    def analyze(self, prompt: str) -> None:
        """Analyse a new prompt with the same model and show it; on error the old graph stays
        and the message shows in the widget (and is raised)."""
        self.message = ""
        self.busy = "Analysing the prompt…"
        start = time.perf_counter()
        try:
            run = self._analyze_like_shown(prompt)
        except Exception as error:  # any failure keeps the previous graph
            self.message = f"Could not analyse the prompt: {error}"
            raise
        finally:
            self.busy = ""
        try:
            self._check_other(run)
        except LmttError as error:
            self.message = f"Refused the prompt: {error}"
            raise
        self._run = run
        with self.hold_sync():
            self.selection = {}
            self.target = run.n_tokens - 1
            self._refresh(new_run=True)
            self.message = f"Analysed {run.n_tokens} tokens in {time.perf_counter() - start:.1f} s"

    def save_html(self, path, *, title: str | None = None) -> pathlib.Path:
        """Write one self-contained HTML file that opens offline (lmtt_widget.export)."""
        from .export import save_html

        return save_html(self, path, title=title)

    # -- keeping traits consistent -------------------------------------------------------

    def _refresh(self, new_run: bool = False) -> None:
        run = self._run
        if new_run and self.show_reference:  # a new run is drawn with its own routes
            self._quietly(show_reference=False)
        reference = self._diff_reference()[0] if self.show_reference else None
        drawn = reference or run  # the clean run or the other prompt, marked with the diff (widget_interventions)
        self._graph = drawn.graph(token=self.target, threshold=self.threshold, renormalize=self.renormalize)
        if new_run:
            self.info = S.run_info(run)
        self.payload = S.graph_payload(self._graph, drawn.shape.n_heads)
        self._interventions_refresh(new_run)
        self._pair_refresh(new_run)

    def _quietly(self, **values) -> None:
        """Set traits without the refresh their observers would start (we are refreshing)."""
        self._in_refresh = True
        try:
            for name, value in values.items():
                setattr(self, name, value)
        finally:
            self._in_refresh = False

    def _from_frontend(self, name: str) -> bool:
        return name in getattr(self, "_property_lock", {})

    def _accept(self, name: str, value):
        self._valid[name] = value
        return value

    def _refuse(self, name: str, error: Exception):
        """A bad value from the frontend is refused with a visible message (the trait keeps its
        last valid value, which ipywidgets sends back); a bad value from Python raises."""
        if self._from_frontend(name):
            self.message = f"Refused {name}: {error}"
            # not getattr(self, name): frontend updates are set before they are validated
            return self._valid.get(name, self.trait_defaults(name))
        raise error

    @traitlets.validate("target")
    def _valid_target(self, proposal):
        try:
            return self._accept("target", self._run.position(int(proposal["value"])))
        except (LmttError, TypeError, ValueError) as error:
            return self._refuse("target", LmttError(str(error)))

    @traitlets.validate("threshold")
    def _valid_threshold(self, proposal):
        try:
            return self._accept("threshold", self._check_threshold(proposal["value"]))
        except LmttError as error:
            return self._refuse("threshold", error)

    def _analyze_like_shown(self, prompt: str):
        """`prompt` analysed as the run shown was, with a floor that keeps the threshold shown."""
        from .run import DEFAULT_FLOOR, analyze

        run = self._run
        floor = None if self.threshold >= DEFAULT_FLOOR else self.threshold  # None: 0 where everything fits
        return analyze(run.model, prompt, distance=run.distance, budget_bytes=run.budget_bytes, floor=floor,
                       progress=False)  # no tqdm in the widget's output

    def _check_threshold(self, threshold) -> float:
        for run in (self._run, self._other):
            if run is not None:
                threshold = run.valid_threshold(threshold)  # also within the floor its shares were kept above
        return threshold

    @traitlets.validate("selection")
    def _valid_selection(self, proposal):
        try:
            return self._accept("selection", self._normalize_selection(dict(proposal["value"])))
        except (LmttError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, KeyError):
                error = LmttError(f"selection is missing {error}")
            return self._refuse("selection", LmttError(str(error)))

    @traitlets.observe("target", "threshold", "renormalize", "show_reference")
    def _view_changed(self, change):
        if getattr(self, "_run", None) is not None and self.info and not getattr(self, "_in_refresh", False):
            self._refresh()

    @traitlets.observe("selection")
    def _selection_changed(self, change):
        if change["new"] == change["old"]:
            return  # a refused update: the message stays
        if self.message.startswith("Refused selection"):
            self.message = ""
        for callback in list(self._callbacks):
            callback(change["new"])

    def _normalize_selection(self, sel: dict) -> dict:
        """Check a selection against the run and fill in what it implies (the largest head)."""
        if not sel:
            return {}
        run = self._run
        kind = sel.get("kind")
        n_layers = run.shape.n_layers
        if kind == "residual":
            stage = sel.get("stage", "post")
            if stage not in ("embed", "mid", "post"):
                raise LmttError(f"residual stage must be 'embed', 'mid' or 'post', got {stage!r}")
            if stage == "mid" and run.shape.parallel:
                raise LmttError("this model has parallel blocks: there is no 'mid' residual")
            layer = -1 if stage == "embed" else check_index("layer", sel["layer"], n_layers)
            return {"kind": kind, "stage": stage, "layer": layer, "token": run.position(sel["token"])}
        if kind == "attention":
            layer = check_index("layer", sel["layer"], n_layers)
            source, target = run.position(sel["source"]), run.position(sel["target"])
            if source > target:
                raise LmttError(f"source {source} comes after target {target}: attention only reads earlier tokens")
            head = sel.get("head")
            if head is None:
                head = int(run.edge_contributions(layer, target, source).argmax())
            return {"kind": kind, "layer": layer, "source": source, "target": target, "head": run.head(head)}
        if kind == "ffn":
            layer = check_index("layer", sel["layer"], n_layers)
            neuron = sel.get("neuron")
            if neuron is not None:
                neuron = check_index("neuron", neuron, run.neuron_activations(layer).shape[1])
            return {"kind": kind, "layer": layer, "token": run.position(sel["token"]), "neuron": neuron}
        raise LmttError(f"selection kind must be 'residual', 'attention' or 'ffn', got {kind!r}")

    # -- lazy panels ---------------------------------------------------------------------

    def _on_message(self, _widget, content, _buffers) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "panel":
            self._answer_panel(content.get("id"), content.get("request") or {})
        elif content.get("type") == "analyze":
            try:
                self.analyze(str(content.get("prompt", "")))
            except Exception:
                pass  # the message is in self.message; the previous graph stays
        elif not self._on_pair_message(content):  # patch, unpatch, swap, pair
            self._on_intervention_message(content)  # ablate, undo, faithfulness

    def _answer_panel(self, request_id, request: dict) -> None:
        try:
            data = self.panel(request)
            reply = {"type": "panel", "id": request_id, "ok": True, "data": data}
        except (LmttError, KeyError, TypeError) as error:
            reply = {"type": "panel", "id": request_id, "ok": False, "error": str(error)}
        state, paths, buffers = _split_buffers(reply)
        state["buffer_paths"] = paths
        self.send(state, buffers)

    def panel(self, request: dict) -> dict[str, Any]:
        """The data of one panel: `request` is a selection (kind, layer, token(s), head)."""
        sel = self._normalize_selection(dict(request))
        run, kind = self._run, sel.get("kind")
        if kind == "residual":
            layer, token, stage = sel["layer"], sel["token"], sel["stage"]
            blocks = []
            if stage == "mid":
                blocks = ["attention"]
            elif stage == "post":
                blocks = ["attention", "ffn"] if run.shape.parallel else ["ffn"]
            return {"selection": sel,
                    "lens": S.lens(run.logit_lens(layer, token, stage, k=LENS_K, normalize=self.normalize_lens)),
                    "normalized": self.normalize_lens,
                    "blocks": [{"block": b, **S.effect(run.block_logits(layer, token, b, k=LOGITS_K))} for b in blocks]}
        if kind == "attention":
            layer, head, source, target = sel["layer"], sel["head"], sel["source"], sel["target"]
            return {"selection": sel,
                    "shares": S.array(run.edge_contributions(layer, target, source)),
                    "pattern": S.array(run.attention_pattern(layer)[head]),
                    "importance": S.array(run.head_contributions(layer, head)),
                    "from_source": S.effect(run.head_logits(layer, head, target, source, k=LOGITS_K)),
                    "total": S.effect(run.head_logits(layer, head, target, k=LOGITS_K))}
        layer, token = sel["layer"], sel["token"]
        ffn_share, ffn_residual = run.ffn_contributions(layer)
        neurons = run.neuron_contributions(layer, token, k=NEURONS_K)
        if sel["neuron"] is not None and sel["neuron"] not in [n.index for n in neurons]:
            shares, _ = run.neuron_shares(layer, token)
            n = sel["neuron"]
            neurons.append(type(neurons[0])(n, float(shares[n]), float(run.neuron_activations(layer)[token, n])))
        # every listed neuron's write through the vocabulary in one product: [k, d] -> [k, V]
        writes = run.neuron_writes(layer, token)[[n.index for n in neurons]]
        logits = run.direct_logits(writes, token)
        return {"selection": sel, "ffn_share": float(ffn_share[token]),
                "block": S.effect(run.block_logits(layer, token, "ffn", k=LOGITS_K)),
                "neurons": [{"index": n.index, "share": n.share, "activation": n.activation,
                             **_top_bottom(run, row, NEURON_LOGITS_K)} for n, row in zip(neurons, logits)]}


def _top_bottom(run, logits, k: int) -> dict[str, list]:
    """Promoted and suppressed tokens of one row of direct logit effects [V]."""
    top, bottom = logits.topk(k), (-logits).topk(k)
    return {"promoted": [[run.decode(i), float(v)] for v, i in zip(top.values, top.indices)],
            "suppressed": [[run.decode(i), -float(v)] for v, i in zip(bottom.values, bottom.indices)]}


def _split_buffers(content: dict):
    """ipywidgets' own split of nested bytes into (state, buffer paths, buffers)."""
    from ipywidgets.widgets.widget import _remove_buffers

    return _remove_buffers(content)


def show(model=None, prompt: str | None = None, **options) -> Widget:
    """Analyse `prompt` on `model` (default: the offline demo model) and return the widget;
    `options` go to `Widget` (target, threshold, renormalize, normalize_lens, selection)."""
    from .models import load_model
    from .run import analyze

    if model is None or isinstance(model, str):
        model = load_model(model)
    if prompt is None:
        from .__main__ import DEMO_PROMPT
        prompt = DEMO_PROMPT
    return Widget(analyze(model, prompt), **options)


def show_pair(model=None, prompt: str | None = None, other: str | None = None, **options) -> Widget:
    """Two prompts of the same length in tokens (e.g. clean and corrupted IOI) in one widget: the
    routes of `prompt`, marked where `other`'s differ, and patching from `other` (widget_pair)."""
    from .models import load_model
    from .run import analyze

    if model is None or isinstance(model, str):
        model = load_model(model)
    if prompt is None and other is None:  # the demo: clean and corrupted IOI
        from .__main__ import DEMO_PROMPT
        prompt, other = DEMO_PROMPT, DEMO_PROMPT.replace(" John gave", " Mary gave")
    if prompt is None or other is None:
        raise TypeError("show_pair needs two prompts: show_pair(model, prompt, other)")
    return Widget(analyze(model, prompt), other=analyze(model, other), **options)
