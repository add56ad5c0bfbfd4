"""Two prompts in one widget (lmtt_widget.interventions.compare and .patch, shown): the routes of
the prompt shown, marked where they differ from the other prompt's, and activations patched in
from the other prompt with the prediction before and after.

    w = lmtt_widget.show_pair(model, "When Mary and John went to the store, John gave a drink to",
                              "When Mary and John went to the store, Mary gave a drink to")
    w.graph_diff                 # the shown prompt's routes against the other's ("against": "other")
    w.patch(("head", 23, 5, 14)) # rerun the shown prompt with that head's output from the other prompt
    w.patch(("post", 20, 14))    # or a residual node of the graph: (stage, layer, position)
    w.comparison                 # the shown prompt's clean prediction before and after the patches
    w.patches                    # the active patches: [{"node": [...], "from": prompt}]
    w.unpatch()                  # drop the last patch (w.unpatch(0): the first)
    w.swap()                     # show the other prompt (its clean run) and compare with this one
    w.compare_with("...")        # start (or change) the pair from a one-prompt widget

The pair is two clean runs of one model, prompts of the same length in tokens (positions must
align); the shown run carries the ablations and patches. The frontend sends
`{"type": "patch", "node"}`, `{"type": "unpatch", "index"}`, `{"type": "swap"}` and
`{"type": "pair", "prompt"}`; refusals go to the `message` trait, never raised.
"""

from __future__ import annotations

import json

import traitlets

from . import interventions as I
from .errors import LmttError, check_index

MESSAGES = ("patch", "unpatch", "swap", "pair")
STATE = ("pair", "patches", "diff_against")  # traits a saved page keeps
_ACTIONS = {"patch": "patch", "unpatch": "undo of the patch", "swap": "swap", "pair": "the other prompt"}
_VERBS = {"patch": "patch", "unpatch": "undo the patch", "swap": "swap the prompts",
          "pair": "compare with the other prompt"}


class PairMixin(traitlets.HasTraits):
    """Traits, methods and message handlers of the pair view; `Widget` inherits them."""

    pair = traitlets.Dict().tag(sync=True)  # the other prompt: prompt, tokens, top prediction ({} when none)
    patches = traitlets.List().tag(sync=True)  # the active patches: {"node": [...], "from": prompt}
    diff_against = traitlets.Unicode("other").tag(sync=True)  # in a pair with interventions: "other" or "clean"

    _other = None  # the other prompt's clean Run

    # -- the Python API ------------------------------------------------------------------

    @property
    def other(self):
        """The other prompt's clean `Run` (None when the widget shows one prompt)."""
        return self._other

    def compare_with(self, other) -> "I.GraphDiff":
        """Show the difference to another prompt (a string, analysed with the same model, or a
        `Run`); it must be as long in tokens as the prompt shown. Returns the graphs' difference
        at the target and threshold shown; a prompt that does not fit raises and changes nothing."""
        if isinstance(other, str):
            self.busy = "Analysing the other prompt…"
            try:
                other = self._analyze_like_shown(other)
            finally:
                self.busy = ""
        clean = self._run.clean or self._run
        I._check_pair(clean, other, "comparing two prompts")
        other.valid_threshold(self.threshold)  # its shares must reach down to the threshold shown
        self._other = other
        if self._run.patches:  # patched from the previous other prompt: keep the ablations only
            self._show_intervened(list(self._run.interventions), [])
        else:
            with self.hold_sync():
                self._refresh(new_run=True)
        return I.compare(other, clean, token=self.target, threshold=self.threshold, renormalize=self.renormalize)

    def patch(self, *nodes) -> "I.Comparison":
        """Patch each node's activation from the other prompt into the prompt shown: a graph node
        (stage, layer, position) with stage "embed", "mid", "ffn" or "post", or ("head", layer,
        head, position). Returns the comparison with the shown prompt's clean run at the target."""
        if self._other is None:
            raise LmttError("patching needs a second prompt: w.compare_with(prompt) or lmtt_widget.show_pair(...)")
        if not nodes:
            raise LmttError("no node given; e.g. w.patch(('head', 3, 1, 9)) or w.patch(('post', 3, 9))")
        current = [node for node, _ in self._run.patches]
        added = [I._patch_node(self._run, node) for node in nodes]
        for node in added:
            if node in current or added.count(node) > 1:
                raise LmttError(f"{node!r} is already patched")
        return self._show_intervened(list(self._run.interventions), current + added)

    def unpatch(self, index: int = -1) -> "I.Comparison | None":
        """Remove one patch (the last by default) and rerun the clean run with the rest."""
        current = [node for node, _ in self._run.patches]
        if not current:
            raise LmttError("there is no patch to undo")
        index = check_index("patch", index, len(current))
        return self._show_intervened(list(self._run.interventions), current[:index] + current[index + 1:])

    def swap(self) -> None:
        """Show the other prompt's clean run, and compare it with the prompt shown until now
        (whose ablations and patches are dropped)."""
        if self._other is None:
            raise LmttError("there is no other prompt to show: w.compare_with(prompt)")
        shown = self._run.clean or self._run
        self._run, self._other = self._other, shown
        with self.hold_sync():
            self.selection = {}
            self._refresh(new_run=True)

    # -- keeping traits consistent -------------------------------------------------------

    def _check_other(self, run) -> None:
        """A new prompt for the shown side must still align with the other prompt."""
        if self._other is not None:
            I._check_pair(run, self._other, "comparing two prompts")

    def _pair_refresh(self, new_run: bool) -> None:
        run, other = self._run, self._other
        if other is None:
            self.pair, self.patches = {}, []
            return
        top = other.logits[self.target].softmax(-1).topk(3)  # the other prompt's prediction at the target shown
        self.pair = {"prompt": other.prompt, "tokens": list(other.tokens),
                     "top": [[other.decode(int(i)), float(p)] for p, i in zip(top.values, top.indices)]}
        if new_run:
            patches = [{"node": list(node), "from": prompt} for node, prompt in run.patches]
            self.patches = json.loads(json.dumps(patches))  # JSON-ready, as the frontend gets it

    def _diff_reference(self):
        """The run whose routes the shown ones are compared with, and what it is ("clean" or "other")."""
        run = self._run
        if self._other is not None and (run.clean is None or self.diff_against == "other"):
            return self._other, "other"
        return run.clean, "clean"

    @traitlets.validate("diff_against")
    def _valid_diff_against(self, proposal):
        if proposal["value"] not in ("other", "clean"):
            error = LmttError(f"diff_against must be 'other' or 'clean', got {proposal['value']!r}")
            return self._refuse("diff_against", error)
        return self._accept("diff_against", proposal["value"])

    @traitlets.observe("diff_against")
    def _diff_against_changed(self, change):
        if getattr(self, "_run", None) is not None and self.info:
            self._refresh()

    # -- messages from the frontend --------------------------------------------------------

    def _on_pair_message(self, content: dict) -> bool:
        kind = content.get("type")
        if kind not in MESSAGES:
            return False
        try:
            if kind == "patch":
                node = content.get("node")
                if not isinstance(node, list):
                    raise LmttError(f"a node is a list such as ['post', 3, 9] or ['head', 3, 1, 9], got {node!r}")
                self.patch(tuple(node))
            elif kind == "unpatch":
                self.unpatch(int(content.get("index", -1)))
            elif kind == "swap":
                self.swap()
            else:
                self.compare_with(str(content.get("prompt", "")))
            self.message = ""
        except (LmttError, TypeError, ValueError, KeyError) as error:
            self.message = f"Refused {_ACTIONS[kind]}: {error}"
        except Exception as error:  # the widget keeps what it showed
            self.message = f"Could not {_VERBS[kind]}: {type(error).__name__}: {error}"
        return True

