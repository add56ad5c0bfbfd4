"""The state a user builds in a widget, as one plain immutable object: `View`.

A `View` holds the run shown (clean, or intervened: it knows its clean run, ablations and
patches), the other prompt of a pair, and the view options (target, threshold, selection, ...).
Every action returns a new `View` (and what the action reports); nothing changes in place, so the
live widget, the exported page and the tests use the same object, and none of them needs a kernel
or a widget:

    view = View.of(lw.analyze(model, prompt), threshold=0.04)
    view, comparison = view.ablate(("head", 23, 3))
    view = view.set(target=5).select({"kind": "ffn", "layer": 2, "token": 5})
    view.traits()        # what the widget's traits hold (lmtt_widget.widget.protocol.TRAITS)
    view.panel(request)  # a panel's data

Derived values (graph, diff, payload, ...) are memoised across the snapshots of one widget, keyed
by what they are computed from.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import interventions as I
from ..aggregate import Aggregate
from ..effects import Effects
from ..errors import LmttError, check_index
from ..faithfulness import FaithfulnessTable
from ..generation import generate
from ..models import DEMO_NAME
from ..run import DEFAULT_FLOOR, Run, analyze
from . import selections
from . import serialize as S
from .prompts import Prompts, prompts_panel

DIFF_ROWS = 12  # the strongest changes of each sort and edge kind that the page lists and marks
DIFF_AGAINST = ("other", "clean")
# Longer prompts show no effects until asked (w.with_effects = True): each new target costs a forward
# and a backward pass (demo model on a laptop CPU: ~3 s at T=300, ~90 s at T=2048)
EFFECTS_AUTO_MAX = 512
MISSED_ROWS = 40  # the missed edges (large |effect|, not on the share routes) that the page marks
_RUN_INFO: weakref.WeakKeyDictionary[Run | Aggregate, dict] = weakref.WeakKeyDictionary()


class Memo:
    """A small least-recently-used cache of derived values, shared by the snapshots of one widget."""

    def __init__(self, size: int = 24):
        self.size, self.values = size, OrderedDict()  # type: ignore[var-annotated]

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self.values:
            self.values.move_to_end(key)
            return self.values[key]
        value = self.values[key] = compute()
        while len(self.values) > self.size:
            self.values.popitem(last=False)
        return value

    def keep_only(self, runs) -> None:
        """Forget the values derived from runs other than `runs` (e.g. a prompt's run that left the
        widget's cache, or an intervened run no longer shown): their activations go with them."""
        held = {id(run) for run in runs}
        for key in [key for key in self.values if any(isinstance(part, Run) and id(part) not in held for part in key)]:
            del self.values[key]


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise LmttError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class View:
    """One snapshot of what a widget shows (see the module docstring). Build it with `View.of`."""

    run: Run | Aggregate  # the run shown: clean, or intervened (run.clean, run.interventions, run.patches); or the
    # aggregate of several prompts' runs (lw.aggregate), whose routes are read as a run's
    other: Run | None = None  # the other prompt's clean run, in a pair
    target: int = 0  # whose prediction's routes are shown
    threshold: float = 0.04
    renormalize: bool = True
    normalize_lens: bool = True  # the logit lens reads the residual through the final norm
    selection: dict | None = None  # normalised (selections.normalize); never changed in place
    show_reference: bool = False  # draw the routes the shown ones are compared with, the diff marks staying
    diff_against: str = "other"  # in a pair with interventions: compare with "other" or "clean"
    contrast: int | None = None  # the effects' contrast token id at the target (None: the clean runner-up)
    rank_by: str = "share"  # the routes drawn: kept by share, or by |effect| (graph.effect_routes)
    show_missed: bool = False  # mark the edges with a large |effect| that the share routes leave out
    with_effects: bool | None = None  # compute effects (one forward and one backward per run and target shown);
    # None: for prompts up to EFFECTS_AUTO_MAX tokens (see effects_on)
    faithfulness: FaithfulnessTable | None = None  # the last measured, for this run, target and contrast
    prompts: Prompts = field(default_factory=Prompts)  # the prompts to switch between (w.prompts)
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)

    @classmethod
    def of(cls, run: Run | Aggregate, other: Run | None = None, *, target: int = -1, threshold: float = 0.04,
           renormalize: bool = True, normalize_lens: bool = True, selection: dict | None = None,
           prompts=None, contrast=None, rank_by: str = "share", with_effects: bool | None = None) -> View:
        """`prompts`: a list of prompts (or a text file of them, one per line) to switch between."""
        if not isinstance(run, (Run, Aggregate)):
            raise LmttError(f"a widget shows a Run (lmtt_widget.analyze(model, prompt)) or an Aggregate "
                            f"(lmtt_widget.aggregate(runs)), got {type(run).__name__}")
        if other is not None:
            I.check_pair(run, other, "comparing two prompts")
        return cls(run, other, prompts=Prompts.of(run, prompts)).set(
            target=target, threshold=threshold, renormalize=renormalize, normalize_lens=normalize_lens,
            selection=selection, contrast=contrast, rank_by=rank_by, with_effects=with_effects)

    # -- options ---------------------------------------------------------------------------------

    def set(self, **options) -> View:
        """A snapshot with options changed, each checked: target, threshold, renormalize,
        normalize_lens, selection, show_reference, diff_against, contrast, rank_by, show_missed,
        with_effects.
        Another target resets the contrast to the runner-up (unless one is given with it)."""
        checks = {
            "target": lambda v: self.run.position(v),
            "threshold": self._check_threshold,
            "renormalize": lambda v: _flag("renormalize", v),
            "normalize_lens": lambda v: _flag("normalize_lens", v),
            "selection": self._check_selection,
            "show_reference": lambda v: _flag("show_reference", v),
            "diff_against": self._check_diff_against,
            "contrast": lambda v: v,  # checked below, at the target the view will have
            "rank_by": self._check_rank_by,
            "show_missed": lambda v: _flag("show_missed", v),
            "with_effects": lambda v: v if v is None else _flag("with_effects", v),
        }
        unknown = set(options) - set(checks)
        if unknown:
            raise LmttError(f"unknown view option(s) {', '.join(sorted(unknown))}; options are {', '.join(checks)}")
        changes = {name: checks[name](value) for name, value in options.items()}
        if "target" in changes and changes["target"] != self.target:
            changes.setdefault("contrast", None)
        if changes.get("contrast") is not None:
            changes["contrast"] = self._check_contrast(changes["contrast"], changes.get("target", self.target))
        measured_moved = any(changes[k] != getattr(self, k) for k in ("target", "contrast") if k in changes)
        view = replace(self, **changes, **({"faithfulness": None} if measured_moved else {}))  # type: ignore[arg-type]
        if view.rank_by == "effect" and view.effects is None:
            if "rank_by" in changes:
                raise LmttError(f"routes by effect need effects, and {view.no_effects_reason()}: "
                                "rank by share")
            view = replace(view, rank_by="share")  # another run shown without effects: drawn by share
        return view

    def shown(self, option: str) -> Any:
        """An option as its trait shows it (with_effects: whether effects are on, automatic or not)."""
        return self.effects_on if option == "with_effects" else getattr(self, option)

    def select(self, selection: dict | None) -> View:
        return self.set(selection=selection)

    def _check_selection(self, selection) -> dict | None:
        if self.aggregate_shown and isinstance(selection, dict) and (
                selection.get("neuron") is not None or selection.get("kind") in ("neuron", "expert")):
            raise LmttError("an aggregate of prompts has no neurons or experts to select: open one of its prompts")
        return selections.normalize(self.run, selection)

    def _check_threshold(self, threshold) -> float:
        for run in (self.run, self.other):
            if run is not None:
                threshold = run.valid_threshold(threshold)  # also within the floor its shares were kept above
        return threshold

    def _check_contrast(self, contrast, target: int) -> int:
        """A token id (from an id or a one-token string) other than the clean prediction at `target`."""
        self._needs_run("a contrast")
        contrast = I.token_id(self.clean, contrast)
        if contrast == self.answer_at(target):
            raise LmttError(f"the contrast {self.clean.decode(contrast)!r} is the prediction itself at token {target}: "
                            "pick another token to compare it with")
        return contrast

    @staticmethod
    def _check_rank_by(value) -> str:
        if value not in ("share", "effect"):
            raise LmttError(f"rank_by must be 'share' or 'effect', got {value!r}")
        return value

    @staticmethod
    def _check_diff_against(value) -> str:
        if value not in DIFF_AGAINST:
            raise LmttError(f"diff_against must be 'other' or 'clean', got {value!r}")
        return value

    # -- actions ---------------------------------------------------------------------------------

    @property
    def clean(self) -> Run:
        run = self._needs_run("interventions")
        return run.clean or run

    def analyze(self, prompt: str) -> View:
        """The same view of a new prompt (analysed as the run shown was, or at hand from before),
        added to the prompt list; the selection is cleared and the contrast reset to the runner-up.
        The exact text of a listed continuation (Generate) opens that entry: its tokens, its marks."""
        if not isinstance(prompt, str):
            raise LmttError(f"prompt must be a string, got {type(prompt).__name__}")
        run = self.prompts.run_of(prompt, self.analyze_like_shown)  # a continuation's text: its entry's ids
        return self._switched(run, self.prompts.showing(run))

    def analyze_like_shown(self, prompt) -> Run:
        """`prompt` (a string, or token ids: a continuation reopened) analysed as the run shown was,
        with a floor that keeps the threshold shown."""
        like = self._like_shown("analysing a new prompt")
        return analyze(like.model, prompt, distance=like.distance, budget_bytes=like.budget_bytes,
                       floor=self._floor_shown(), progress=False)  # no tqdm in the widget's output

    def _like_shown(self, what: str) -> Run:
        """The run whose model and settings new prompts are analysed with (an aggregate: its first
        prompt's); refused, saying how to give the model, where it has none for `what`."""
        run = self.run if isinstance(self.run, Run) else self.run.runs[0]
        if not isinstance(run, Run):
            raise LmttError("this aggregate's runs are compact shares without their model (lw.analyze_compact): "
                            "new prompts cannot be analysed here")
        try:
            run.needs_model()
        except LmttError as error:  # a run loaded from a file without its model
            raise LmttError(f"{what}: {error}") from None
        return run

    def _floor_shown(self) -> float | None:
        return None if self.threshold >= DEFAULT_FLOOR else self.threshold  # None: 0 where everything fits

    def open_prompt(self, index: int) -> View:
        """Prompt `index` of the list shown (analysed now unless it is at hand); the selection is cleared."""
        index, run = self.prompts.run_at(index, self.analyze_like_shown)
        prompts = replace(self.prompts, current=index) if index < self.prompts.n_aggregated else \
            self.prompts.showing(run)
        return self._switched(run, prompts)

    def open_aggregate(self) -> View:
        """The aggregate the widget came from, again."""
        if self.prompts.aggregate is None:
            raise LmttError("this widget shows no aggregate: lw.show(lw.aggregate(runs))")
        return self._switched(self.prompts.aggregate, replace(self.prompts, current=None))

    def generate(self, prompt: str, max_new_tokens: int = 20, chat: bool = False) -> View:
        """The model's own continuation of `prompt`, analysed as the run shown was, shown and listed."""
        like = self._like_shown("generating a continuation")
        run = generate(like.model, prompt, max_new_tokens, chat=chat, distance=like.distance,
                       budget_bytes=like.budget_bytes, floor=self._floor_shown(), progress=False)
        return self._switched(run, self.prompts.showing(run))

    def with_prompts(self, prompts) -> View:
        """Another prompt list (w.prompts = [...]); the run shown stays."""
        return replace(self, prompts=self.prompts.listing(prompts))

    def _switched(self, run: Run | Aggregate, prompts: Prompts) -> View:
        """This view of another prompt (or the aggregate): routes to its last token, nothing selected."""
        if self.other is not None:
            I.check_pair(run, self.other, "comparing two prompts")
        view = replace(self, prompts=prompts)._showing(run, target=run.n_tokens - 1, selection=None,
                                                              contrast=None)
        return view.set(threshold=self.threshold)  # its shares must reach down to the threshold shown

    @property
    def aggregate_shown(self) -> bool:
        return isinstance(self.run, Aggregate)

    def _needs_run(self, what: str) -> Run:
        if isinstance(self.run, Aggregate):
            raise LmttError(f"the aggregate of {len(self.run.runs)} prompts is shown: open one of its prompts "
                            f"for {what}")
        return self.run

    def ablate(self, *specs, mode: str = "zero") -> tuple[View, I.Comparison]:
        """Add ablations (tuples such as ("head", layer, head), see lmtt_widget.interventions)."""
        self._needs_run("ablations")
        if not specs:
            raise LmttError("no ablations given; e.g. ablate(('head', 3, 1))")
        current = list(self.run.interventions)
        added = I.parse_all(self.clean, list(specs), mode, current)  # refuses one already ablated
        return self._intervened(current + added, self._all_patches())  # type: ignore[return-value]

    def undo(self, index: int = -1) -> tuple[View, I.Comparison | None]:
        """Drop one ablation (the last by default) and rerun the clean run with the others."""
        current = list(self.run.interventions)
        if not current:
            raise LmttError("there is no intervention to undo")
        index = check_index("intervention", index, len(current))
        return self._intervened(current[:index] + current[index + 1:], self._all_patches())

    def patch(self, *nodes) -> tuple[View, I.Comparison]:
        """Patch each node's activation from the other prompt (see lmtt_widget.interventions.patch)."""
        self._needs_run("patching")
        if self.other is None:
            raise LmttError("patching needs a second prompt: w.compare_with(prompt) or lmtt_widget.show_pair(...)")
        if not nodes:
            raise LmttError("no node given; e.g. patch(('head', 3, 1, 9)) or patch(('post', 3, 9))")
        current = self._patch_nodes()
        added = [I.parse_node(self.run, node) for node in nodes]
        for node in added:
            if node in current or added.count(node) > 1:
                raise LmttError(f"{node!r} is already patched")
        run, _ = I.patch(self.other, self.run, added, position=self.target)  # the earlier patches as they were
        return self._compared(run)  # type: ignore[return-value]

    def unpatch(self, index: int = -1) -> tuple[View, I.Comparison | None]:
        current = self._patch_nodes()
        if not current:
            raise LmttError("there is no patch to undo")
        index = check_index("patch", index, len(current))
        return self._intervened(list(self.run.interventions), [i for i in range(len(current)) if i != index])

    def compare_with(self, other: str | Run) -> View:
        """A pair: `other` (a prompt, analysed like the run shown, or a Run) as long in tokens as the
        prompt shown. Patches from a previous other prompt are dropped, the ablations kept."""
        self._needs_run("comparing two prompts")
        if isinstance(other, str):
            other = self.analyze_like_shown(other)
        I.check_pair(self.clean, other, "comparing two prompts")
        other.valid_threshold(self.threshold)  # its shares must reach down to the threshold shown
        view = replace(self, other=other, show_reference=False, faithfulness=None)
        return view._intervened(list(self.run.interventions), [])[0] if self.run.patches else view

    def swap(self) -> View:
        """Show the other prompt's clean run, compared with the prompt shown until now (whose
        ablations and patches are dropped)."""
        if self.other is None:
            raise LmttError("there is no other prompt to show: w.compare_with(prompt)")
        return replace(self._showing(self.other, selection=None, contrast=None), other=self.clean)

    def measure_faithfulness(self, k: int = 5, draws: int = 10, mode: str = "zero") -> tuple[View, FaithfulnessTable]:
        """The top k edges into the target by share and by effect removed, as a fraction of the
        best k (lmtt_widget.faithfulness), for the effects' metric."""
        run = self._needs_run("faithfulness")
        effects = self.effects
        if effects is None:
            raise LmttError(f"faithfulness compares the routes by share with those by effect, and "
                            f"{self.no_effects_reason()}")
        report = run.faithfulness(k=k, by=("share", "effect"), token=self.target, effects=effects, draws=draws,
                                  mode=mode)
        return replace(self, faithfulness=report), report

    def _patch_nodes(self) -> list:
        return [node for node, _ in self.run.patches]

    def _all_patches(self) -> list[int]:
        return list(range(len(self.run.patches)))

    def _intervened(self, ablations: list, patches: list[int]) -> tuple[View, I.Comparison | None]:
        """The clean run rerun with `ablations` and the run shown's patches numbered `patches`, each
        with the activation it was made with (not patched again from the other prompt: the run
        shown may come from a file, or from a pair with another prompt)."""
        return self._compared(I.rerun(self.run, ablations, patches) if ablations or patches else self.clean)

    def _compared(self, run: Run) -> tuple[View, I.Comparison | None]:
        """This view of `run` (an intervened run of its clean run), and its comparison with the clean run."""
        clean = self.clean
        comparison = None if run is clean else \
            I.compare_logits(clean, clean.logits, run.logits, self.target, self.contrast)
        return self._showing(run, selection=self.selection), comparison

    def _showing(self, run: Run | Aggregate, **changes) -> View:
        """This view of another run: drawn with its own routes, nothing measured yet."""
        view = replace(self, run=run, show_reference=False, faithfulness=None)
        selection = changes.pop("selection", self.selection)
        view = view.set(**changes, selection=selection)
        # what was derived from a run the widget can no longer show goes, and its activations with it
        self.memo.keep_only([run, run.clean, self.other, *self.prompts.cache.runs.values()])
        return view

    # -- derived ---------------------------------------------------------------------------------

    @property
    def reference(self) -> tuple[Run | None, str]:
        """The run the shown routes are compared with, and what it is ("clean" or "other")."""
        if self.other is not None and (self.run.clean is None or self.diff_against == "other"):
            return self.other, "other"
        return self.run.clean, "clean"

    def answer_at(self, target: int) -> int:
        """The effects' answer at `target`: the clean run's prediction (so that interventions keep the metric)."""
        return int(self.clean.logits[target].argmax())

    def effects_of(self, run: Run | Aggregate) -> Effects | None:
        """`run`'s effects on the view's metric: logit(the clean prediction) - logit(the contrast) at
        the target; None where there are none (an aggregate, a family with post-norms: see
        `no_effects_reason`)."""
        if not self.effects_on or isinstance(run, Aggregate) or run.model is None:
            return None  # turned off; an aggregate has none; a run loaded without its model cannot compute them
        answer = self.answer_at(self.target)

        def compute() -> Effects | None:
            try:
                return run.effects(answer, self.contrast, token=self.target)
            except LmttError:
                return None  # the reason is no_effects_reason's
        return self.memo.get(("effects", run, self.target, answer, self.contrast), compute)

    @property
    def effects_on(self) -> bool:
        """Whether effects are computed: as `with_effects` says, or (None) for prompts up to
        EFFECTS_AUTO_MAX tokens, where a target's backward pass takes seconds, not minutes."""
        if self.with_effects is not None:
            return self.with_effects
        return len(self.run.tokens) <= EFFECTS_AUTO_MAX

    @property
    def effects(self) -> Effects | None:
        """The effects of the run shown (lmtt_widget.effects), or None where there are none."""
        return self.effects_of(self.run)

    def no_effects_reason(self) -> str:
        """Why the run shown has no effects (an LmttError's message), for refusals that need them."""
        if self.with_effects is None and not self.effects_on:
            return (f"effects are off for prompts over {EFFECTS_AUTO_MAX} tokens (each target costs a backward "
                    "pass; turn them on: w.with_effects = True)")
        if self.with_effects is False:
            return "effects are turned off (turn them on: w.with_effects = True)"
        if isinstance(self.run, Aggregate):
            return f"the aggregate of {len(self.run.runs)} prompts has none (open one of its prompts)"
        try:
            self.run.effects(self.answer_at(self.target), self.contrast, token=self.target)
        except LmttError as error:
            return str(error)
        return "they are available"

    @property
    def graph(self):
        """The routes graph drawn: the run's, or with `show_reference` its reference's; kept by
        share or by effect (`rank_by`), every edge with its effect."""
        reference = self.reference[0] if self.show_reference else None
        drawn = reference or self.run
        effects = self.effects_of(drawn)
        by_share = self.rank_by == "share" or effects is None

        def compute():
            if isinstance(drawn, Aggregate):
                return drawn.graph(token=self.target, threshold=self.threshold, renormalize=self.renormalize)
            return drawn.graph(token=self.target, threshold=self.threshold,
                               renormalize=self.renormalize or not by_share,
                               by="share" if by_share else "effect", effects=effects)
        return self.memo.get(("graph", drawn, self.target, self.threshold, self.renormalize, by_share,
                              self.contrast, effects is None), compute)

    def missed(self, rows: int = MISSED_ROWS) -> list[dict]:
        """The attention and FFN edges of the routes by effect that the routes by share leave out,
        largest |effect| first (at most `rows`)."""
        run, effects = self.run, self.effects
        if effects is None or isinstance(run, Aggregate):
            return []

        def compute():
            shares = run.graph(token=self.target, threshold=self.threshold, renormalize=self.renormalize)
            by_effect = run.graph(token=self.target, threshold=self.threshold, by="effect", effects=effects)
            out = [{"source": list(u), "target": list(v), "kind": key, "effect": d["effect"]}
                   for u, v, key, d in by_effect.edges(keys=True, data=True)
                   if key != "residual" and not shares.has_edge(u, v, key)]
            return sorted(out, key=lambda e: -abs(e["effect"]))[:rows]
        return self.memo.get(("missed", run, self.target, self.threshold, self.renormalize, self.contrast, rows),
                             compute)

    def effects_info(self) -> dict | None:
        effects, run = self.effects, self.run
        if effects is None:
            return None
        return {"metric": effects.metric, "value": effects.value, "answer": run.decode(effects.answer),
                "answer_id": effects.answer, "contrast": run.decode(effects.contrast), "contrast_id": effects.contrast,
                "method": effects.method, "missed": self.missed() if self.show_missed else []}

    def graph_diff(self) -> dict | None:
        reference, against = self.reference
        if reference is None:
            return None
        key = ("diff", reference, self.run, self.target, self.threshold, self.renormalize)
        return self.memo.get(key, lambda: _plain(_diff_dict(I.compare(
            reference, self.run, token=self.target, threshold=self.threshold, renormalize=self.renormalize)))
            | {"against": against})

    def comparison(self) -> dict | None:
        if self.run.clean is None or self.run.model is None:
            return None  # clean; or loaded from a file without its model, whose logits need the unembedding
        clean = self.run.clean
        return _plain(I.compare_logits(clean, clean.logits, self.run.logits, self.target, self.contrast).to_dict())

    def _code_shown(self) -> str:
        """The interventions' code as the page shows it ("" for a clean run)."""
        run = self.run
        if run.clean is None:
            return ""
        if run.model is None:  # the code reads the model's weights (e.g. W_O for an edge)
            return ("# this run was loaded from a file without its model: its code needs the weights,\n"
                    "# lw.load_run(path, model=lw.load_model(...))")
        return self.memo.get(("code", run), self.code)

    def code(self, model_expr: str | None = None) -> str:
        """Standalone nnsight code that reproduces the interventions shown."""
        run = self._needs_run("code")
        return I.code(run, model_expr=model_expr or _model_expr(run))

    @property
    def options(self) -> dict[str, Any]:
        """What panels and `selected` read beside the selection: view options (the panel keys
        name those they depend on) and the effects."""
        return {"normalize_lens": self.normalize_lens, "metric_at": self.target, "contrast": self.contrast,
                "with_effects": self.effects_on, "effects": self.effects}

    def panel(self, selection: dict, options: dict | None = None) -> dict[str, Any]:
        """The data of one panel (protocol.PanelData): `selection` is checked and completed first;
        `options` (protocol.PanelOptions) say how much it lists. A component that the run shown
        ablates or patches is shown with its clean values and effects (and says so: `intervened`).
        An aggregate's panel lists the prompts behind the selection (protocol.PromptsPanel)."""
        sel = self._check_selection(selection)
        if sel is None:
            raise LmttError("a panel needs a selection, e.g. {'kind': 'ffn', 'layer': 2, 'token': 5}")
        if isinstance(self.run, Aggregate):
            return prompts_panel(self.run, sel, self.target, self.threshold, self.renormalize)
        kind = selections.KINDS[sel["kind"]]
        settings = self.options | selections.amounts(options) | {"routes": self.route_tokens()}
        intervened = kind.intervened(self.run, sel)
        if intervened:
            settings |= {"effects": self.effects_of(self.clean)}
        return kind.panel(self.clean if intervened else self.run, sel, settings) | {"intervened": intervened}

    def route_tokens(self) -> list[int]:
        """The positions the routes drawn pass through, ascending."""
        graph = self.graph
        return self.memo.get(("route tokens", id(graph)), lambda: sorted({node[2] for node in graph.nodes}))

    def panel_key(self, selection: dict) -> str:
        return selections.key(selection, self.options)

    def selected(self) -> dict[str, Any]:
        """The tensors behind the selection (an empty dict when nothing is selected)."""
        if self.selection is None:
            return {}
        if isinstance(self.run, Aggregate):
            return self.panel(self.selection)
        return selections.KINDS[self.selection["kind"]].tensors(self.run, self.selection, self.options)

    def selection_info(self) -> dict | None:
        sel = self.selection
        if sel is None:
            return None
        kind = selections.KINDS[sel["kind"]]
        if isinstance(self.run, Aggregate):  # nothing to intervene on: the prompts behind it are in its panel
            return {"key": self.panel_key(sel), "title": kind.title, "ablations": [], "patches": []}
        return {"key": self.panel_key(sel), "title": kind.title, "ablations": kind.ablations(self.run, sel),
                "patches": kind.patches(self.run, sel)}

    def traits(self) -> dict[str, Any]:
        """What the widget's traits hold for this view (all but protocol, busy, notice, preloaded)."""
        run, other = self.run, self.other
        memo = self.memo
        values = {
            "info": run_info(run),
            "payload": memo.get(("payload", self.graph), lambda: S.graph_payload(self.graph, run.shape.n_heads)),
            "target": self.target, "threshold": self.threshold, "renormalize": self.renormalize,
            "normalize_lens": self.normalize_lens,
            "selection": None if self.selection is None else dict(self.selection),
            "selection_info": self.selection_info(),
            "interventions": [_active(ab, run) for ab in run.interventions],
            "comparison": self.comparison(),
            "graph_diff": self.graph_diff(),
            "faithfulness": None if self.faithfulness is None else _plain(self.faithfulness.to_dict()),
            "intervention_code": self._code_shown(),
            "show_reference": self.show_reference,
            "pair": None if other is None else _pair(other, self.target),
            "patches": [{"node": list(node), "label": node.label(lambda t: selections.at_token(run, t)),
                         "source": prompt} for node, prompt in run.patches],
            "diff_against": self.diff_against,
            "prompt_list": self.prompts.info(self.aggregate_shown),
            "contrast": self.contrast, "rank_by": self.rank_by, "show_missed": self.show_missed,
            "with_effects": self.effects_on,
            "effects": self.effects_info(),
        }
        return _plain(values, keep_bytes=True)


def run_info(run: Run | Aggregate) -> dict:
    """serialize.run_info of `run`, computed once per run."""
    if run not in _RUN_INFO:
        _RUN_INFO[run] = S.run_info(run) | {"selection_kinds": selections.kinds_info()}
    return _RUN_INFO[run]


def _pair(other: Run, target: int) -> dict:
    # the other prompt's prediction at the target shown (from the file's top predictions, if loaded without its model)
    return {"prompt": other.prompt, "tokens": list(other.tokens),
            "top": [[token, p] for token, p in other.top_tokens(target, k=3)]}


def _active(ab, run: Run | Aggregate) -> dict:
    return {"kind": ab.kind, "label": ab.label(lambda t: selections.at_token(run, t)), "spec": list(ab.as_tuple()),
            "mode": ab.mode}


def _model_expr(run: Run) -> str:
    """How the exported code loads the model shown."""
    name = getattr(run.hf_model.config, "name_or_path", "") or ""
    if run.model_name == DEMO_NAME:
        return "lmtt_widget.load_model()"
    if name:
        return f"lmtt_widget.load_model({name!r})"
    return "lmtt_widget.load_model()  # the widget's model was passed in loaded: load the same one here"


def _plain(value, keep_bytes: bool = False):
    """Tuples as lists: a trait holds what the page gets (and would send back)."""
    if keep_bytes:
        if isinstance(value, dict):
            return {k: _plain(v, True) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_plain(v, True) for v in value]
        return value
    return json.loads(json.dumps(value))


def _diff_dict(diff: I.GraphDiff, rows: int = DIFF_ROWS) -> dict:
    """The strongest `rows` changes of each sort (appeared, vanished, changed) and edge kind, so
    that residual edges do not crowd out attention edges; and how many there are of each."""
    d = diff.to_dict()
    out = {"unchanged": d["unchanged"], "tolerance": d["tolerance"], "counts": {}}
    for sort in ("appeared", "vanished", "changed"):
        by_kind = {kind: [c for c in d[sort] if c["kind"] == kind] for kind in S.KINDS}
        out[sort] = [c for kind in S.KINDS for c in by_kind[kind][:rows]]
        out["counts"][sort] = {kind: len(changes) for kind, changes in by_kind.items()}
    return out


