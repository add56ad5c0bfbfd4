"""Standalone nnsight code that reproduces a run's interventions: each ablation and patch node
writes its own lines (their `code` methods) into a `Script`, which lays them out in traces."""

from __future__ import annotations

import torch

from ..architectures import norm_eps, text_config
from .kinds import parse_all
from .running import base, check_run

# a site of the forward pass -> the variable the generated code binds to its tensor
SITE_VARIABLES = {
    "block_input": "x_in",  # the residual entering the block [T, d]
    "attention_inputs": "attn_inputs",  # the attention module's keyword inputs (Falcon's probabilities)
    "values": "values",  # the value vectors [T, KV, head_dim]
    "out_proj_input": "heads_in",  # the output projection's input [T, H * head_dim]
    "attention_output": "attn_update",  # the attention block's update [T, d] (after any post-norm)
    "routing_weights": "routing_weights",  # a mixture of experts' weights of its selected experts [T, k]
    "ffn_out_proj_input": "neurons",  # the FFN output projection's input [T, d_ff]
    "ffn_output": "ffn_out",  # the FFN block's update [T, d] (after any post-norm)
    "block_output": "block_out",  # the residual after the block [T, d]
}


class Script:
    """The lines of the generated code, gathered by the trace they go in and by (layer, site),
    so that each trace reads each site once and in the order the forward pass runs them. In a
    trace, the lines of a site can use the variable SITE_VARIABLES names, and those of the
    sites before it in the same layer."""

    def __init__(self):
        self.setup_lines: list[str] = []  # before the traces
        self.means: dict[tuple[int, str], list[str]] = {}  # a trace of the clean prompt, for mean ablations
        self.sources: dict[tuple[int, ...], dict] = {}  # a trace of each other prompt, for patches
        self.edits: dict[tuple[int, str], list[str]] = {}  # the main trace, with the interventions

    def setup(self, *lines: str) -> None:
        for line in lines:
            if line not in self.setup_lines:
                self.setup_lines.append(line)

    def mean(self, layer: int, site: str, *lines: str) -> None:
        self.means.setdefault((layer, site), []).extend(lines)

    def save_from(self, source_ids: torch.Tensor, layer: int, site: str, *lines: str) -> None:
        by_site = self.sources.setdefault(tuple(source_ids.tolist()), {})
        by_site.setdefault((layer, site), []).extend(lines)

    def edit(self, layer: int, site: str, *lines: str) -> None:
        """Lines of the main trace (none: the site is only read, for the lines of a later site)."""
        self.edits.setdefault((layer, site), []).extend(lines)


def code(run, ablations=None, mode: str = "zero", model_expr: str = "lmtt_widget.load_model()") -> str:
    """Standalone nnsight code that reproduces the interventions: `ablations` added to those of
    `run` (None: just those of `run`), and the patches of `run` (each source prompt is traced
    first for the activations it gives). `model_expr` is the Python expression that loads the model."""
    check_run(run, "run", "code")
    clean, earlier = base(run)
    everything = earlier + ([] if ablations is None else parse_all(clean, ablations, mode, earlier))
    script = Script()
    for i, ab in enumerate(everything):
        ab.code(clean, script, f"mean_{i}", everything)
    for i, ((node, _), source_ids) in enumerate(zip(run.patches, run.patch_ids)):
        node.code(clean, script, f"patch_{i}", source_ids)
    return "\n".join(_layout(clean, run, everything, script, model_expr))


def _layout(clean, run, ablations, script: Script, model_expr: str) -> list[str]:
    lines = [
        f"# nnsight code reproducing lmtt-widget interventions (generated) on {clean.prompt!r}:",
        *(f"#   {ab.as_tuple()!r}: {ab.describe()}" for ab in ablations),
        *(f"#   patch {node.as_tuple()!r} from {prompt!r}: {node.describe()}" for node, prompt in run.patches),
        "import nnsight",
        "import torch",
        "",
        "import lmtt_widget",
        "",
        f"model = {model_expr}",
        "hf = model._module  # the transformers model: weights are read, never changed",
        f"input_ids = torch.tensor([{clean.input_ids.tolist()!r}]).to(hf.device)",
        "T = input_ids.shape[1]",
        "# inside lmtt_widget.tracing.exclusive(model) attention also returns its probabilities (attn[1])",
        *script.setup_lines,
    ]
    if script.means:
        lines += ["", "# means over the positions of the clean run, for mean ablations",
                  "with torch.no_grad(), lmtt_widget.tracing.exclusive(model), model.trace(input_ids):",
                  *_trace_body(clean, script.means)]
    for ids, saves in script.sources.items():
        lines += ["", "# the activations to patch in, from the other prompt",
                  f"source_ids = torch.tensor([{list(ids)!r}]).to(hf.device)",
                  "with torch.no_grad(), lmtt_widget.tracing.exclusive(model), model.trace(source_ids):",
                  *_trace_body(clean, saves)]
    lines += ["", "with torch.no_grad(), lmtt_widget.tracing.exclusive(model), model.trace(input_ids):",
              *_trace_body(clean, script.edits),
              "    logits = nnsight.save(model.output.logits[0])  # [T, vocabulary], as the model gives them",
              "", "probs = logits[-1].softmax(-1)",
              "print([(model.tokenizer.decode([int(i)]), round(float(p), 4)) for p, i in zip(*probs.topk(5))])", ""]
    return lines


def _trace_body(clean, by_site: dict) -> list[str]:
    """Lines inside a trace: for each layer in order, each site read once, in forward order."""
    order = list(SITE_VARIABLES)
    body = []
    for layer, site in sorted(by_site, key=lambda key: (key[0], order.index(key[1]))):
        body += [f"    {line}" for line in _site_lines(clean, layer, site)]
        body += [f"    {line}" for line in by_site[(layer, site)]]
    return body


def _site_lines(clean, layer: int, site: str) -> list[str]:
    """The lines that bind a site's variable (SITE_VARIABLES) in a trace."""
    family, shape = clean.family, clean.shape
    modules = family.modules(clean.hf_model, layer)
    block = f"model.{family.blocks}[{layer}]"
    if site == "values":
        clamp = family.value_clamp(text_config(clean.hf_model))
        return [f"value_out = {block}.{family.value_proj}.output.view(T, -1)  # the value projection's output",
                f"values = {family.values_code('value_out', shape, clamp)}  # [T, KV, head_dim]"]
    if site == "attention_output":
        lines = [f"attn = {block}.{family.attention}.output  # (its output [1, T, d], probabilities [1, H, T, T])"]
        if family.attn_post_norm is None:
            return lines + ["attn_update = attn[0].view(T, -1)  # the update the residual receives [T, d]"]
        return lines + [
            f"attn_update = {block}.{family.attn_post_norm}.output.view(T, -1)  # after the post-norm [T, d]",
            "# the post-norm's per-position scale [T], frozen: the update is linear in the heads' outputs",
            f"attn_scale = lmtt_widget.architectures.{family.norm!r}.scale(attn[0].view(T, -1), "
            f"{norm_eps(modules['attn_post_norm'])!r})"]
    if site == "routing_weights":
        router = f"{block}.{family.experts.router}.output"  # type: ignore[union-attr]  # a MoE layer's
        return [f"routing = {router}  # (router logits, routing weights [T, k], selected experts [T, k])",
                "routing_weights, selected = routing[1].view(T, -1), routing[2].view(T, -1)"]
    if site == "block_output":  # some blocks (Falcon's) return a tuple, the residual first
        return [f"block_out = {block}.output",
                "block_out = (block_out[0] if isinstance(block_out, tuple) else block_out).view(T, -1)  "
                "# the residual after the block [T, d]"]
    ffn = family.ffn if family.ffn_post_norm is None else family.ffn_post_norm
    return [f"{SITE_VARIABLES[site]} = " + {
        "attention_inputs": f"{block}.{family.attention}.inputs[1]  # its keyword inputs",
        "out_proj_input": f"{block}.{family.out_proj}.input.view(T, -1)  # [T, heads x head_dim]",
        "ffn_out_proj_input": f"{block}.{family.ffn_out_proj}.input.view(T, -1)  # [T, neurons]",
        "ffn_output": f"{block}.{ffn}.output.view(T, -1)  # the update the residual receives [T, d]",
        "block_input": f"{block}.input.view(T, -1)  # the residual entering the block [T, d]",
    }[site]]
