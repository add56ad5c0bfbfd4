"""The widget's interventions (lmtt_widget.interventions, shown): ablate what is selected, undo,
the graph's difference to the clean run, the routes' faithfulness, and the nnsight code.

    w.ablate(("head", 23, 5))              # rerun with the head zeroed; the graph shows the new run
    w.ablate(("edge", 23, 3, 14), mode="mean")
    w.comparison                           # before (clean) and after, at the target (Comparison.to_dict)
    w.show_reference = True                # draw the clean run's routes, the diff marks staying
    w.undo()                               # drop the last ablation: rerun the clean run with the rest
    w.measure_faithfulness(k=5)            # route edges vs random edges, shown as a chart
    print(w.code())                        # nnsight code reproducing the interventions

An intervened `Run` knows its clean run and its ablations, so every trait here is derived from
the run shown, the target and the threshold (`_interventions_refresh`, called by `Widget._refresh`):
a new prompt clears them, a new target or threshold recomputes them. The frontend asks with
custom messages `{"type": "ablate", "ablation": [...], "mode"}`, `{"type": "undo", "index"}` and
`{"type": "faithfulness", "k"}`; refusals and errors go to the `message` trait, never raised.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import traitlets

from . import interventions as I
from .errors import LmttError, check_index
from .models import DEMO_NAME
from .serialize import KINDS  # graph edge kinds

DIFF_ROWS = 12  # the strongest changes of each sort and edge kind that the frontend lists and marks
MESSAGES = ("ablate", "undo", "faithfulness")
# traits a saved page keeps
STATE = ("interventions", "comparison", "graph_diff", "faithfulness", "intervention_code", "show_reference")


class InterventionsMixin(traitlets.HasTraits):
    """Traits, methods and message handlers of the interventions; `Widget` inherits them."""

    interventions = traitlets.List().tag(sync=True)  # the active ablations: Ablation fields + "spec"
    comparison = traitlets.Dict().tag(sync=True)  # clean vs the run shown, at the target ({} when clean)
    graph_diff = traitlets.Dict().tag(sync=True)  # the shown routes' edges against the clean run's
    faithfulness = traitlets.Dict().tag(sync=True)  # the last measure_faithfulness (Faithfulness.to_dict)
    intervention_code = traitlets.Unicode("").tag(sync=True)  # what `code()` returns ("" when clean)
    # draw the routes of what graph_diff compares with (the clean run, or the other prompt), the
    # diff marks staying; the panels still read the run shown. A new run turns it off.
    show_reference = traitlets.Bool(False).tag(sync=True)

    # -- the Python API ------------------------------------------------------------------

    def ablate(self, *ablations, mode: str = "zero") -> "I.Comparison":
        """Add `ablations` (tuples such as ("head", layer, head), see lmtt_widget.interventions)
        to those shown, rerun from the clean run and show it. Returns the comparison of the
        prediction at the target with the clean run. A bad ablation raises and changes nothing."""
        clean, current = self._clean_and_ablations()
        if not ablations:
            raise LmttError("no ablations given; e.g. w.ablate(('head', 3, 1))")
        added = [I.parse(clean, spec, mode) for spec in ablations]
        for ab in added:
            if ab in current or added.count(ab) > 1:
                raise LmttError(f"{ab.as_tuple()!r} in mode {ab.mode!r} is already ablated")
        return self._show_ablated(current + added)

    def undo(self, index: int = -1) -> "I.Comparison | None":
        """Remove one ablation (the last by default) and rerun the clean run with the others;
        with none left the clean run is shown again (and None returned)."""
        _, current = self._clean_and_ablations()
        if not current:
            raise LmttError("there is no intervention to undo")
        index = check_index("intervention", index, len(current))
        return self._show_ablated(current[:index] + current[index + 1:])

    def measure_faithfulness(self, k: int = 5, draws: int = 10, mode: str = "zero") -> "I.Faithfulness":
        """`run.faithfulness` of the run shown, at the target and threshold shown; the result is
        also shown in the widget as a chart."""
        self.busy = "Measuring faithfulness…"
        try:
            report = self._run.faithfulness(token=self.target, threshold=self.threshold, k=k, draws=draws, mode=mode)
        finally:
            self.busy = ""
        self.faithfulness = _plain(report.to_dict())
        return report

    def code(self, model_expr: str | None = None) -> str:
        """Standalone nnsight code that reproduces the interventions shown (lmtt_widget.interventions.code);
        `model_expr` is the expression that loads the model (default: the demo model, or the hub id or
        directory the model was loaded from)."""
        return I.code(self._run, model_expr=model_expr or _model_expr(self._run))

    # -- keeping traits consistent -------------------------------------------------------

    def _clean_and_ablations(self):
        run = self._run
        return (run.clean or run), list(run.interventions)

    def _show_ablated(self, ablations: list) -> "I.Comparison | None":
        return self._show_intervened(ablations, [node for node, _ in self._run.patches])

    def _show_intervened(self, ablations: list, patches: list) -> "I.Comparison | None":
        """Rerun the clean run with `ablations`, then `patches` from the other prompt (widget_pair),
        and show it; returns the comparison with the clean run at the target (None: clean)."""
        clean, _ = self._clean_and_ablations()
        if not ablations and not patches:
            run, comparison = clean, None
        else:
            self.busy = f"Rerunning with {_count(len(ablations), 'ablation', len(patches), 'patch')}…"
            try:
                run = clean.intervene(ablations, position=self.target)[0] if ablations else clean
                if patches:
                    run, _ = I.patch(self._other, run, patches, position=self.target)
            finally:
                self.busy = ""
            comparison = I.compare_logits(clean, clean.logits, run.logits, self.target)
        self._run = run
        with self.hold_sync():
            self._refresh(new_run=True)
        return comparison

    def _interventions_refresh(self, new_run: bool) -> None:
        """Derive the traits from the run shown, the target and the threshold (Widget._refresh)."""
        run = self._run
        self.faithfulness = {}  # measured for another run, target or threshold
        reference, against = self._diff_reference()
        if run.clean is None:
            self.interventions, self.comparison, self.intervention_code = [], {}, ""
            self.graph_diff = {} if reference is None else self._diff(reference, against)
            return
        if new_run:
            self.interventions = _plain([asdict(ab) | {"spec": ab.as_tuple()} for ab in run.interventions])
            self.intervention_code = self.code()
        clean = run.clean
        self.comparison = _plain(I.compare_logits(clean, clean.logits, run.logits, self.target).to_dict())
        self.graph_diff = self._diff(reference, against)

    def _diff(self, reference, against: str) -> dict:
        """The shown routes against `reference`'s ("clean": the clean run, "other": the other prompt)."""
        diff = I.compare(reference, self._run, token=self.target, threshold=self.threshold,
                         renormalize=self.renormalize)
        return _plain(_diff_dict(diff) | {"against": against})

    def _diff_reference(self):
        """The run whose routes the shown ones are compared with (widget_pair has another choice)."""
        return self._run.clean, "clean"

    # -- messages from the frontend --------------------------------------------------------

    def _on_intervention_message(self, content: dict) -> None:
        kind = content.get("type")
        if kind not in MESSAGES:
            return
        try:
            if kind == "ablate":
                spec = content.get("ablation")
                if not isinstance(spec, list):
                    raise LmttError(f"an ablation is a list such as ['head', 3, 1], got {spec!r}")
                self.ablate(tuple(spec), mode=str(content.get("mode", "zero")))
            elif kind == "undo":
                self.undo(int(content.get("index", -1)))
            else:
                self.measure_faithfulness(k=int(content.get("k", 5)), mode=str(content.get("mode", "zero")))
            self.message = ""
        except (LmttError, TypeError, ValueError, KeyError) as error:
            self.message = f"Refused {_ACTIONS[kind]}: {error}"
        except Exception as error:  # the widget keeps what it showed
            self.message = f"Could not {_ACTIONS[kind]}: {type(error).__name__}: {error}"


def _count(*pairs) -> str:
    """_count(2, "ablation", 1, "patch") -> "2 ablations, 1 patch" (zeros left out)."""
    words = [f"{n} {what}{'' if n == 1 else ('es' if what.endswith('h') else 's')}"
             for n, what in zip(pairs[::2], pairs[1::2]) if n]
    return ", ".join(words)


_ACTIONS = {"ablate": "ablation", "undo": "undo", "faithfulness": "faithfulness"}


def _model_expr(run) -> str:
    """How the exported code loads the model shown."""
    name = getattr(run.hf_model.config, "name_or_path", "") or ""
    if run.model_name == DEMO_NAME:
        return "lmtt_widget.load_model()"
    if name:
        return f"lmtt_widget.load_model({name!r})"
    return "lmtt_widget.load_model()  # the widget's model was passed in loaded: load the same one here"


def _plain(value):
    """Tuples as lists: the trait holds what the frontend gets (and would send back)."""
    return json.loads(json.dumps(value))


def _diff_dict(diff: "I.GraphDiff", rows: int = DIFF_ROWS) -> dict:
    """The strongest `rows` changes of each sort (appeared, vanished, changed) and edge kind, so
    that residual edges do not crowd out attention edges; and how many there are of each."""
    d = diff.to_dict()
    out = {"unchanged": d["unchanged"], "tolerance": d["tolerance"], "counts": {}}
    for sort in ("appeared", "vanished", "changed"):
        by_kind = {kind: [c for c in d[sort] if c["kind"] == kind] for kind in KINDS}
        out[sort] = [c for kind in KINDS for c in by_kind[kind][:rows]]
        out["counts"][sort] = {kind: len(changes) for kind, changes in by_kind.items()}
    return out
