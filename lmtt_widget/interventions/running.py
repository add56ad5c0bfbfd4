"""Rerunning a prompt with interventions: ablations (`intervene`, `ablated_logits`), activations
patched in from another prompt (`patch`), and the prediction before and after (`Comparison`).

An intervened `Run` knows its clean run (`run.clean`), its ablations (`run.interventions`) and
patches (`run.patches`, `run.patch_ids`, `run.patch_values`, `run.patch_edits`). Each rerun starts
from the clean run with every ablation's edits made afresh, then the patches' edits: intervening in
steps equals intervening at once. A patch keeps the activation it puts in place (`patch_values`),
so an intervened run saved to a file (Run.to_file) reruns without its source prompt's run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from .. import vocab as V
from ..errors import LmttError, check_index
from ..tracing import Edit, trace
from .kinds import Ablation, check_together, edits_for, parse, parse_all
from .nodes import parse_node


class Readout(NamedTuple):
    """The prediction's numbers in one run: probability, logit, and logit minus the other token's."""

    probability: float
    logit: float
    logit_diff: float


@dataclass
class Comparison:
    """Before and after an intervention, at one position, for the original prediction `token`
    and (logit difference) against a second token: the runner-up unless one is given."""

    position: int
    token: str
    token_id: int
    against: str
    against_id: int
    before: Readout
    after: Readout
    top_before: list[tuple[str, float]]
    top_after: list[tuple[str, float]]

    @property
    def prob_change(self) -> float:
        return self.after.probability - self.before.probability

    @property
    def logit_change(self) -> float:
        return self.after.logit - self.before.logit

    @property
    def logit_diff_change(self) -> float:
        return self.after.logit_diff - self.before.logit_diff

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(before=self.before._asdict(), after=self.after._asdict(), prob_change=self.prob_change,
                   logit_change=self.logit_change, logit_diff_change=self.logit_diff_change)
        return out

    def __repr__(self) -> str:
        return (f"Comparison(p({self.token!r}) {self.before.probability:.3f} -> {self.after.probability:.3f}, "
                f"logit {self.before.logit:.3f} -> {self.after.logit:.3f}, logit diff vs {self.against!r} "
                f"{self.before.logit_diff:.3f} -> {self.after.logit_diff:.3f}, "
                f"top after {[t for t, _ in self.top_after[:3]]})")


# -- runs as arguments -------------------------------------------------------------------------

def check_run(value, name: str, what: str) -> None:
    """Refuse, naming the argument, what is not a Run (a Shares from analyze_compact has no
    activations to intervene on)."""
    if not callable(getattr(value, "reanalyze", None)):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise LmttError(f"{what}: {name} must be a Run (from lmtt_widget.analyze), got {type(value).__name__} {shown}")


def check_pair(run_a, run_b, what: str, names: tuple[str, str] = ("run_a", "run_b")) -> None:
    """Refuse two runs that `what` cannot set side by side: not Runs, not of the same loaded
    model, or prompts of different lengths in tokens (positions must align)."""
    check_run(run_a, names[0], what)
    check_run(run_b, names[1], what)
    if run_a.model is not run_b.model:  # (None for both: runs loaded from a file without their model)
        raise LmttError(f"{what} needs two runs of the same loaded model")
    if run_a.n_tokens != run_b.n_tokens:
        raise LmttError(f"{what}: the prompts are {run_a.n_tokens} and {run_b.n_tokens} tokens long, so their "
                        "positions do not align; use prompts of the same length in tokens (e.g. swap one-token names)")


def base(run) -> tuple:
    """(the clean run, the ablations already applied to `run`)."""
    return run.clean or run, list(run.interventions)


# -- reading the prediction --------------------------------------------------------------------

def token_id(run, token) -> int:
    """A token id from an id or a string that is exactly one token (e.g. " John")."""
    if isinstance(token, int) and not isinstance(token, bool):
        return check_index("token id", token, run.shape.d_vocab)
    if isinstance(token, str):
        ids = run.model.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise LmttError(f"{token!r} is {len(ids)} tokens, not one; give a single token (mind the leading space) "
                            "or its id")
        return int(ids[0])
    raise LmttError(f"a token is an id or a one-token string, got {token!r}")


def targets(run, logits: torch.Tensor, position: int, against) -> tuple[int, int]:
    """(the prediction at `position`, the token to compare it with: `against` or the runner-up)."""
    top2 = logits[position].topk(2).indices.tolist()
    return top2[0], (top2[1] if against is None else token_id(run, against))


def readout(logits: torch.Tensor, position: int, token: int, other: int) -> Readout:
    row = logits[position]
    return Readout(float(row.softmax(-1)[token]), float(row[token]), float(row[token] - row[other]))


def _top(run, logits: torch.Tensor, position: int, k: int = 10) -> list[tuple[str, float]]:
    values, ids = V.top_of_logits(logits[position], k)
    return [(run.decode(i), float(v)) for v, i in zip(values, ids)]


def compare_logits(run, before: torch.Tensor, after: torch.Tensor, position: int = -1, against=None) -> Comparison:
    """The `Comparison` of two logit tensors [T, V] of `run`'s prompt."""
    position = run.position(position)
    token, other = targets(run, before, position, against)
    return Comparison(position, run.decode(token), token, run.decode(other), other,
                      readout(before, position, token, other), readout(after, position, token, other),
                      _top(run, before, position), _top(run, after, position))


# -- rerunning ---------------------------------------------------------------------------------

def _edits(clean, ablations: list[Ablation], patch_edits) -> list[Edit]:
    """Every ablation's edits, then the patches'."""
    return edits_for(clean, ablations) + list(patch_edits)


@torch.no_grad()
def ablated_logits(run, ablations, mode: str = "zero") -> torch.Tensor:
    """[T, V] float32: the logits of `run` with `ablations` added, from the forward pass only
    (no importances, no Run): for sweeps over many ablations."""
    check_run(run, "run", "ablated_logits")
    clean, earlier = base(run)
    added = parse_all(clean, ablations, mode, earlier)
    edits = _edits(clean, earlier + added, run.patch_edits)
    capture = trace(clean.model, clean.family, clean.shape, clean.input_ids.to(clean.hf_model.device), edits)
    return V.unembed(clean.hf_model, clean.family, capture.final_normed).float().cpu()  # type: ignore[arg-type]


def intervene(run, ablations, mode: str = "zero", *, position: int = -1, against=None):
    """Rerun `run`'s prompt with `ablations` (see lmtt_widget.interventions) in `mode` "zero" or "mean".

    Returns (the intervened Run, a Comparison at `position` of the original prediction, and of
    its logit difference to `against` or the runner-up). Intervening on an intervened run adds to
    its ablations; means always come from the clean run. An ablation given twice is refused.
    """
    check_run(run, "run", "intervene")
    clean, earlier = base(run)
    added = parse_all(clean, ablations, mode, earlier)
    new = _rerun(clean, earlier + added, run.patches, run.patch_ids, run.patch_values)
    return new, compare_logits(run, run.logits, new.logits, position, against)


def patch(run_from, run_into, node, *, position: int = -1, against=None):
    """Rerun `run_into`'s prompt with `node`'s activation (or each of a list of nodes) taken from
    `run_from`: a residual node (stage, layer, position) of the graph ("embed", "mid", "post"),
    an FFN node (its update), or ("head", layer, head, position) (the head's output there).

    Returns (the patched Run, a Comparison with `run_into` at `position`). The two runs must be
    of the same model and prompts of the same length in tokens.
    """
    check_pair(run_from, run_into, "patch", ("run_from", "run_into"))
    nodes = [parse_node(run_into, n) for n in (node if isinstance(node, list) else [node])]
    clean, earlier = base(run_into)
    patches = tuple(run_into.patches) + tuple((n, run_from.prompt) for n in nodes)
    patch_ids = tuple(run_into.patch_ids) + tuple(run_from.input_ids for _ in nodes)
    patch_values = tuple(run_into.patch_values) + tuple(n.value(run_from) for n in nodes)
    new = _rerun(clean, earlier, patches, patch_ids, patch_values)
    return new, compare_logits(run_into, run_into.logits, new.logits, position, against)


def rerun(run, ablations, patch_indices, mode: str = "zero"):
    """`run`'s clean run rerun with `ablations` (a list of ablations, as `intervene` takes them or
    Ablations, e.g. all of run.interventions but one; none is fine) and the patches of `run`
    numbered `patch_indices` (positions in run.patches), each putting in place the activation it
    was made with: no source prompt's run is needed, so a run loaded from a file reruns as the run
    it was saved from. How the widget undoes one ablation or patch, or adds an ablation beside
    patches."""
    check_run(run, "run", "rerun")
    clean = base(run)[0]
    if not isinstance(ablations, (list, tuple)) or (ablations and isinstance(ablations[0], str)):
        raise LmttError(f"ablations must be a list of ablations (e.g. [('head', 3, 1)]), got {ablations!r:.60}")
    if not isinstance(patch_indices, (list, tuple, range)):
        raise LmttError(f"patch_indices must be a list of positions in run.patches, got {patch_indices!r:.60}")
    parsed = [parse(clean, spec, mode) for spec in ablations]
    check_together(parsed)
    kept = [check_index("patch", index, len(run.patches)) for index in patch_indices]

    def chosen(parts: tuple) -> tuple:
        return tuple(parts[i] for i in kept)
    return _rerun(clean, parsed, chosen(run.patches), chosen(run.patch_ids), chosen(run.patch_values))


def _rerun(clean, ablations: list[Ablation], patches, patch_ids, patch_values):
    """The clean run rerun with every ablation's edits made afresh, then the patches' (run.patches,
    their source prompts' ids and their values)."""
    new = clean.reanalyze(_edits(clean, ablations, patch_edits(patches, patch_values)))
    return mark_intervened(new, clean, ablations, patches, patch_ids, patch_values)


def patch_edits(patches, values) -> tuple[Edit, ...]:
    """The edits that put each patch's value in place: `patches` as run.patches, (node, source prompt)."""
    return tuple(edit for (node, _), value in zip(patches, values) for edit in node.edits(value))


def mark_intervened(run, clean, ablations, patches=(), patch_ids=(), patch_values=()):
    """Make `run` the intervened run of `clean` with these ablations and patches (Run's attributes;
    `patch_edits` made from the values). A run whose forward pass has not these edits yet (one
    loaded from a file, lw.load_run) gets them, where it has its model: later traces repeat them."""
    run.clean, run.interventions = clean, tuple(ablations)
    run.patches, run.patch_ids, run.patch_values = tuple(patches), tuple(patch_ids), tuple(patch_values)
    run.patch_edits = patch_edits(patches, patch_values)
    if run.edits is None and run.model is not None:
        run.edits = _edits(clean, list(ablations), run.patch_edits)
    return run
