"""Interventions on the forward pass, with nnsight: ablate heads, neurons, blocks and single
attention edges; compare and patch two prompts; export the code (a ranking's faithfulness, measured
with these ablations, is lmtt_widget.faithfulness).

Ablations are tuples (or `Ablation`s); positions are optional and default to every position:

    ("head", layer, head[, positions])       the head's slice of the output projection's input
    ("neuron", layer, index[, positions])    the neuron's activation entering the FFN out-projection
    ("attention", layer[, positions])        the attention block's update
    ("ffn", layer[, positions])              the FFN block's update
    ("edge", layer, source, target[, head])  z^h_{target<-source} = A^h_ts v^h_s W_O^h, from the
                                             attention block's update at `target` only (all heads
                                             if no head is given); on a family with a norm after
                                             attention, times that norm's frozen scale at `target`
    ("expert", layer, expert[, positions])   a mixture of experts' expert: its routing weight set
                                             to 0 where the router selected it (mode "zero" only)

mode "zero" removes the activation; "mean" replaces it by its mean over the positions of the
clean run (for an edge: the source's value vector by the mean value vector, so the edge's term
becomes A^h_ts * mean_j(v^h_j) W_O^h). Everything runs in the one trace of `analyze`, through
`tracing.Edit`s, so the intervened `Run` has graphs and readouts of its own. In the intervened
run's importances, an activation replaced by a constant (zero, a mean, a patched-in value) reads
no source of this prompt: the captured probabilities of what it replaced are set to 0, so the
routes show no attention edge through it. The model's weights are never changed.

    intervene(run, ablations, mode)        -> (Run, Comparison)   also run.intervene(...)
    ablated_logits(run, ablations, mode)   -> [T, V] logits only, for sweeps
    compare(run_a, run_b)                  -> GraphDiff           edges that appear, vanish, change
    patch(run_from, run_into, node)        -> (Run, Comparison)   a node's activation from another prompt
    rerun(run, ablations, patch_indices)   -> Run                 the clean run with some of run's changes
    code(run, ablations, mode)             -> str                 standalone nnsight code
    parse(run, spec, mode)                 -> Ablation            checked; .as_tuple(), .describe()
    parse_node(run, node)                  -> PatchNode           checked; .as_tuple(), .describe()
    check_pair(run_a, run_b, what)         refuses two runs that cannot be compared or patched

Nodes to patch are the graph's nodes (stage, layer, position), stage "embed" (layer -1), "mid",
"ffn" (the FFN block's update) or "post", and ("head", layer, head, position) (its output there).

An ablation given twice is refused ("already ablated"). Two that overlap (one head, neuron or
block at shared positions; one edge with shared heads) act once on what they share when in the
same mode, and are refused in different modes (where they meet one would undo the other). A
head or attention ablation that covers an edge's target replaces the head's output there, so
an edge ablation takes nothing more out of it.

Each kind of ablation is a class in `kinds` (registered by its kind in ABLATIONS), each kind of
patch node one in `nodes` (NODES): parsing dispatches on the registry, and each class makes its
own edits, code lines (`codegen`) and description. To add a kind, write one class (see `kinds`).
"""

from __future__ import annotations

from .codegen import code
from .diff import EdgeChange, GraphDiff, compare
from .kinds import (
    ABLATIONS,
    MODES,
    Ablation,
    AttentionAblation,
    BlockAblation,
    EdgeAblation,
    ExpertAblation,
    FfnAblation,
    HeadAblation,
    NeuronAblation,
    check_together,
    edits_for,
    parse,
    parse_all,
)
from .nodes import NODES, EmbedNode, FfnNode, HeadNode, MidNode, PatchNode, PostNode, StageNode, parse_node
from .running import (
    Comparison,
    Readout,
    ablated_logits,
    check_pair,
    check_run,
    compare_logits,
    intervene,
    mark_intervened,
    patch,
    rerun,
    token_id,
)
