"""Selection kinds: what a click in the graph can select, one class each, registered once.

A kind knows how to check and complete a selection against a run (`normalize`), the tensors behind
it (`tensors`, what `w.selected` returns), its panel (`panel`, sent to the page), the fields its
panel is keyed by, and what can be ablated or patched from it. The page renders each kind's panel
with one renderer (js/panels.ts) and needs nothing else of it.

To add a kind: subclass `SelectionKind`, decorate it with `@register`, add a panel type to
protocol.py and a renderer to js/panels.ts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .. import vocab as V
from ..aggregate import Aggregate
from ..errors import LmttError, check_index
from . import serialize as S

LENS_K = 10
LOGITS_K = 8
NEURONS_K = 10
NEURON_LOGITS_K = 5
AMOUNTS = {"tokens": LENS_K, "logits": LOGITS_K, "neurons": NEURONS_K}  # protocol.PanelOptions' defaults
OPTION_MAX = 200
MAP_FULL = 256  # attention maps up to this many tokens carry every position; longer ones the tokens that matter
FOCUS_MAX = 48  # the tokens that matter, at most: the maps' default crop
STRONGEST = 10  # positions where a neuron fires most

KINDS: dict[str, SelectionKind] = {}


def register(cls: type[SelectionKind]) -> type[SelectionKind]:
    KINDS[cls.kind] = cls()
    return cls


def kind_of(sel: dict) -> SelectionKind:
    kind = sel.get("kind")
    if kind not in KINDS:
        raise LmttError(f"selection kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return KINDS[kind]


def normalize(run, sel: dict | None) -> dict | None:
    """A checked selection with what it implies filled in (None: nothing selected)."""
    if not sel:
        return None
    if not isinstance(sel, dict):
        raise LmttError(f"a selection is a dict such as {{'kind': 'ffn', 'layer': 2, 'token': 5}}, got {sel!r}")
    try:
        return kind_of(sel).normalize(run, sel)
    except LmttError:
        raise
    except KeyError as missing:
        raise LmttError(f"selection is missing {missing}") from None
    except (TypeError, ValueError) as error:
        raise LmttError(f"bad selection {sel!r}: {error}") from None


def key(sel: dict, options: dict[str, Any]) -> str:
    """The key of a selection's panel: its kind, then its key fields, each read from the selection
    or else from the view `options` (the page builds the same from `info.selection_kinds`)."""
    kind = KINDS[sel["kind"]]
    return "/".join([kind.kind, *(_key_part(sel[f] if f in sel else options[f]) for f in kind.key)])


def _key_part(value) -> str:
    """A key field as text, as the page writes it (js/widget.ts, keyPart): booleans as 1 and 0."""
    if isinstance(value, bool):
        return str(int(value))
    return "null" if value is None else str(value)


def amounts(options: dict | None) -> dict[str, int]:
    """How much a panel lists (protocol.PanelOptions), each checked, the defaults filled in."""
    out = dict(AMOUNTS)
    for name, value in (options or {}).items():
        if name not in AMOUNTS:
            raise LmttError(f"unknown panel option {name!r}; options are {', '.join(AMOUNTS)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= OPTION_MAX:
            raise LmttError(f"panel option {name} must be an integer in 1..{OPTION_MAX}, got {value!r}")
        out[name] = value
    return out


def kinds_info() -> dict[str, dict]:
    return {name: {"key": list(k.key), "title": k.title} for name, k in KINDS.items()}


def visible(token: str) -> str:
    """A token as readable text (as js/dom.ts shows it): spaces, newlines and tabs made visible."""
    if token == "":
        return "∅"
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def at_token(run, position: int) -> str:
    return f"{position} {visible(run.tokens[position])}"


class SelectionKind:
    kind: ClassVar[str]
    title: ClassVar[str]
    key: ClassVar[tuple[str, ...]]  # selection fields, then view options (normalize_lens, metric_at, contrast,
    # with_effects)

    def normalize(self, run, sel: dict) -> dict:
        raise NotImplementedError

    def tensors(self, run, sel: dict, options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def panel(self, run, sel: dict, options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def ablations(self, run, sel: dict) -> list[dict]:
        """Offers: {label, spec, at} (at: the position the ablation can be limited to, or None)."""
        return []

    def patches(self, run, sel: dict) -> list[dict]:
        """Offers: {label, node} of nodes that can be patched from another prompt."""
        return []

    def intervened(self, run, sel: dict) -> dict | None:
        """protocol.Intervened when the run shown ablates or patches the selected component (its
        panel then shows the clean run's values), else None."""
        return None


def _intervention(run, ablated, patched) -> dict | None:
    """The first of the run's ablations for which `ablated(ablation)` holds, else of its patches
    for which `patched(node)` does, as protocol.Intervened."""
    def token(t):
        return at_token(run, t)
    for ab in run.interventions:
        if ablated(ab):
            return {"how": "ablated", "label": ab.label(token)}
    for node, _ in run.patches:
        if patched(node):
            return {"how": "patched", "label": node.label(token)}
    return None


def _covers(positions, token: int) -> bool:
    return positions is None or token in positions


def _block_offers(run, layer: int, token: int, blocks: list[str]) -> list[dict]:
    names = {"attention": "attention block", "ffn": "FFN block"}
    return [{"label": f"{names[b]} of layer {layer}", "spec": [b, layer], "at": token} for b in blocks]


@register
class Residual(SelectionKind):
    kind, title, key = "residual", "Residual node", ("stage", "layer", "token", "normalize_lens")

    def normalize(self, run, sel: dict) -> dict:
        stage = sel.get("stage", "post")
        if stage not in ("embed", "mid", "post"):
            raise LmttError(f"residual stage must be 'embed', 'mid' or 'post', got {stage!r}")
        if stage == "mid" and run.shape.parallel:
            raise LmttError("this model has parallel blocks: there is no 'mid' residual")
        layer = -1 if stage == "embed" else check_index("layer", sel["layer"], run.shape.n_layers)
        return {"kind": self.kind, "stage": stage, "layer": layer, "token": run.position(sel["token"])}

    def tensors(self, run, sel, options):
        layer, token, stage = sel["layer"], sel["token"], sel["stage"]
        return {"kind": self.kind, "residual": run.residual(layer, token, stage),
                "logit_lens": run.logit_lens(layer, token, stage, k=LENS_K, normalize=options["normalize_lens"])}

    def panel(self, run, sel, options):
        layer, token, stage = sel["layer"], sel["token"], sel["stage"]
        lens = run.logit_lens(layer, token, stage, k=options["tokens"], normalize=options["normalize_lens"])
        return {"selection": sel, "lens": S.lens(lens), "normalized": options["normalize_lens"],
                "blocks": [{"block": b, **S.effect(run.block_logits(layer, token, b, k=options["logits"]))}
                           for b in self._blocks(run, stage)]}

    def intervened(self, run, sel):
        stage, layer, token = sel["stage"], sel["layer"], sel["token"]
        return _intervention(run, lambda ab: False, lambda node: node.kind == stage and node.position == token
                             and (stage == "embed" or node.layer == layer))

    @staticmethod
    def _blocks(run, stage: str) -> list[str]:
        """The blocks whose update leads into this node."""
        if stage == "mid":
            return ["attention"]
        if stage == "post":
            return ["attention", "ffn"] if run.shape.parallel else ["ffn"]
        return []

    def ablations(self, run, sel):
        if sel["stage"] == "embed":
            return []
        blocks = ["attention"] if sel["stage"] == "mid" else ["ffn", "attention"]
        return _block_offers(run, sel["layer"], sel["token"], blocks)

    def patches(self, run, sel):
        stage, layer, token = sel["stage"], sel["layer"], sel["token"]
        where = "embedding" if stage == "embed" else f"residual {stage} L{layer}"
        return [{"label": f"{where} at {at_token(run, token)}", "node": [stage, layer, token]}]


@register
class Attention(SelectionKind):
    # the effects depend on the view's target and contrast
    kind, title, key = "attention", "Attention edge", ("layer", "source", "target", "head", "metric_at", "contrast",
                                                        "with_effects")

    def normalize(self, run, sel: dict) -> dict:
        layer = check_index("layer", sel["layer"], run.shape.n_layers)
        source, target = run.position(sel["source"]), run.position(sel["target"])
        # an aggregate's named positions may come in other orders in its prompts: an edge there
        # may run backwards in the aggregate's order (it holds in the prompts where it can)
        if source > target and not isinstance(run, Aggregate):
            raise LmttError(f"source {source} comes after target {target}: attention only reads earlier tokens")
        head = sel.get("head")
        if head is None:  # the head with the largest share of the edge
            head = int(run.edge_contributions(layer, target, source).argmax())
        return {"kind": self.kind, "layer": layer, "source": source, "target": target, "head": run.head(head)}

    def tensors(self, run, sel, options):
        layer, head, source, target = sel["layer"], sel["head"], sel["source"], sel["target"]
        probs = run.attention_pattern(layer)[head].float().cpu()  # [T, T]
        effects = options["effects"]
        out = {"kind": self.kind, "head_output": run.head_output(layer, head, target, source),
               "head_output_total": run.head_output(layer, head, target),
               "attention_row": probs[target], "attention_pattern": probs,
               "importance": run.head_contributions(layer, head),
               "shares": run.edge_contributions(layer, target, source)}
        if effects is not None:
            out |= {"effects": effects.edge(layer, target, source), "effect_map": effects.attention(layer)[..., head],
                    "metric": effects.metric}
        return out

    def panel(self, run, sel, options):
        layer, head, source, target = sel["layer"], sel["head"], sel["source"], sel["target"]
        heads_row = run.attention_rows(layer, [target])[:, 0]  # [H, T]
        focus = _focus(run, source, target, options["routes"])
        positions = list(range(run.n_tokens)) if run.n_tokens <= MAP_FULL else _widened(focus, heads_row[head])
        cols = torch.tensor(positions)
        effects = options["effects"]
        out = {"selection": sel,
               "shares": S.array(run.edge_contributions(layer, target, source)),
               "positions": S.array(positions, "int32"), "focus": focus,
               "pattern": S.array(run.attention_rows(layer, positions, head)[:, cols]),
               "importance": S.array(run.head_contribution_rows(layer, head, positions)[:, cols]),
               "row_pattern": S.array(heads_row[head]),
               "row_importance": S.array(run.head_contribution_rows(layer, head, [target])[0]),
               "heads_row": S.array(heads_row),
               "from_source": S.effect(run.head_logits(layer, head, target, source, k=options["logits"])),
               "total": S.effect(run.head_logits(layer, head, target, k=options["logits"]))}
        if effects is not None:
            out |= {"effects": S.array(effects.edge(layer, target, source)), "metric": effects.metric}
        return out

    def intervened(self, run, sel):
        layer, head, source, target = sel["layer"], sel["head"], sel["source"], sel["target"]

        def ablated(ab):
            if ab.kind == "edge":
                return (ab.layer, ab.source, ab.target) == (layer, source, target) and ab.head in (None, head)
            return ab.replaces_head(layer, head, target)
        return _intervention(run, ablated, lambda node: node.kind == "head"
                             and (node.layer, node.head, node.position) == (layer, head, target))

    def ablations(self, run, sel):
        layer, source, target, head = sel["layer"], sel["source"], sel["target"], sel["head"]
        edge = f"edge {at_token(run, source)} → {at_token(run, target)}"
        return [{"label": f"{edge}, head {head}", "spec": ["edge", layer, source, target, head], "at": None},
                {"label": f"{edge}, all heads", "spec": ["edge", layer, source, target], "at": None},
                {"label": f"head {head} of layer {layer}", "spec": ["head", layer, head], "at": target},
                *_block_offers(run, layer, target, ["attention"])]

    def patches(self, run, sel):
        layer, head, target = sel["layer"], sel["head"], sel["target"]
        out = [{"label": f"head L{layer}.{head} output at {at_token(run, target)}",
                "node": ["head", layer, head, target]}]
        if not run.shape.parallel:
            out.append({"label": f"residual mid L{layer} at {at_token(run, target)}", "node": ["mid", layer, target]})
        return out


@register
class Ffn(SelectionKind):
    # a neuron is a row of the same panel; the effects depend on the view's target and contrast
    kind, title, key = "ffn", "FFN block", ("layer", "token", "metric_at", "contrast", "with_effects")

    def normalize(self, run, sel: dict) -> dict:
        layer = check_index("layer", sel["layer"], run.shape.n_layers)
        neuron = sel.get("neuron")
        if neuron is not None:
            if run.has_experts(layer):
                raise LmttError(f"layer {layer}'s FFN is a mixture of experts: its neurons belong to its experts; "
                                f"select an expert, {{'kind': 'expert', 'layer': {layer}, 'token': ..., 'expert': e}}")
            neuron = check_index("neuron", neuron, run.neuron_activations(layer).shape[1])
        return {"kind": self.kind, "layer": layer, "token": run.position(sel["token"]), "neuron": neuron}

    def tensors(self, run, sel, options):
        layer, token = sel["layer"], sel["token"]
        if run.has_experts(layer):
            return self._expert_tensors(run, layer, token, options["effects"])
        neuron_shares, residual_share = run.neuron_shares(layer, token)
        effects = options["effects"]
        out = {"kind": self.kind, "ffn_output": run.capture.ffn_out[layer][token],
               "activations": run.neuron_activations(layer)[token],
               "neuron_shares": neuron_shares, "residual_share": residual_share}
        if effects is not None:
            out |= {"ffn_effect": effects.ffn(layer)[token], "neuron_effects": effects.neuron_effects(layer, token),
                    "metric": effects.metric}
        if sel.get("neuron") is not None:
            out["neuron_activation"] = out["activations"][sel["neuron"]]
            out["neuron_output"] = run.neuron_writes(layer, token)[sel["neuron"]]
        return out

    @staticmethod
    def _expert_tensors(run, layer: int, token: int, effects) -> dict[str, Any]:
        """A mixture of experts' tensors at the token: the experts writing there (routed by routing
        weight, the shared expert last as None), their weights, writes and shares."""
        writes = run.expert_writes(layer, token)
        out = {"kind": "ffn", "ffn_output": run.capture.ffn_out[layer][token], "experts": writes.experts,
               "routing_weights": writes.weights, "expert_writes": writes.writes,
               "expert_shares": torch.tensor([e.share for e in run.expert_contributions(layer, token)])}
        if effects is not None:
            out |= {"ffn_effect": effects.ffn(layer)[token], "metric": effects.metric,
                    "expert_effects": torch.tensor([e.effect for e in effects.experts(layer, token)])}
        return out

    def panel(self, run, sel, options):
        layer, token = sel["layer"], sel["token"]
        if run.has_experts(layer):
            return self._experts_panel(run, sel, options)
        ffn_share, _ = run.ffn_contributions(layer)
        neurons = run.neuron_contributions(layer, token, k=options["neurons"])
        if sel["neuron"] is not None and sel["neuron"] not in [n.index for n in neurons]:
            shares, _ = run.neuron_shares(layer, token)
            n = sel["neuron"]
            neurons.append(type(neurons[0])(n, float(shares[n]), float(run.neuron_activations(layer)[token, n])))
        # every listed neuron's write through the vocabulary in one product: [k, d] -> [k, V]
        writes = run.neuron_writes(layer, token)[[n.index for n in neurons]]
        logits = run.direct_logits(writes, token)
        effects = options["effects"]  # None where the run has none (then the panel has no effect fields)
        neuron_effects = None if effects is None else effects.neuron_effects(layer, token)
        out = {"selection": sel, "ffn_share": float(ffn_share[token]),
               "block": S.effect(run.block_logits(layer, token, "ffn", k=options["logits"])),
               "neurons": [{"index": n.index, "share": n.share, "activation": n.activation,
                            **({} if neuron_effects is None else {"effect": float(neuron_effects[n.index])}),
                            **S.effect(V.top_bottom(row, NEURON_LOGITS_K, run.decode))}
                           for n, row in zip(neurons, logits)]}
        if effects is not None:
            out |= {"ffn_effect": float(effects.ffn(layer)[token]), "metric": effects.metric}
        return out

    @staticmethod
    def _experts_panel(run, sel: dict, options: dict[str, Any]) -> dict[str, Any]:
        layer, token = sel["layer"], sel["token"]
        writes = run.expert_writes(layer, token)
        logits = run.direct_logits(writes.writes, token)  # every expert's write through the vocabulary: [n, V]
        effects = options["effects"]
        expert_effects = None if effects is None else [e.effect for e in effects.experts(layer, token)]
        rows = [{"expert": e.expert, "weight": e.weight, "share": e.share,
                 **({} if expert_effects is None else {"effect": expert_effects[i]}),
                 **S.effect(V.top_bottom(row, NEURON_LOGITS_K, run.decode))}
                for i, (e, row) in enumerate(zip(run.expert_contributions(layer, token), logits))]
        out = {"selection": sel, "ffn_share": float(run.ffn_contributions(layer)[0][token]),
               "block": S.effect(run.block_logits(layer, token, "ffn", k=options["logits"])),
               "neurons": [], "experts": rows}
        if effects is not None:
            out |= {"ffn_effect": float(effects.ffn(layer)[token]), "metric": effects.metric}
        return out

    def ablations(self, run, sel):
        layer, token, neuron = sel["layer"], sel["token"], sel["neuron"]
        if run.has_experts(layer):
            return [*_expert_offers(run, layer, token, run.expert_writes(layer, token).experts),
                    *_block_offers(run, layer, token, ["ffn"])]
        neurons = [] if neuron is None else [
            {"label": f"neuron {neuron} of layer {layer}", "spec": ["neuron", layer, neuron], "at": token}]
        return neurons + _block_offers(run, layer, token, ["ffn"])

    def patches(self, run, sel):
        layer, token = sel["layer"], sel["token"]
        return [{"label": f"FFN L{layer} update at {at_token(run, token)}", "node": ["ffn", layer, token]},
                {"label": f"residual post L{layer} at {at_token(run, token)}", "node": ["post", layer, token]}]

    def intervened(self, run, sel):
        layer, token = sel["layer"], sel["token"]
        return _intervention(run, lambda ab: ab.kind == "ffn" and ab.layer == layer and _covers(ab.positions, token),
                             lambda node: node.kind == "ffn" and (node.layer, node.position) == (layer, token))


@register
class Neuron(SelectionKind):
    # the effect depends on the view's target and contrast
    kind, title, key = "neuron", "FFN neuron", ("layer", "token", "neuron", "metric_at", "contrast", "with_effects")

    def normalize(self, run, sel: dict) -> dict:
        layer = check_index("layer", sel["layer"], run.shape.n_layers)
        neuron = check_index("neuron", sel["neuron"], run.neuron_activations(layer).shape[1])
        return {"kind": self.kind, "layer": layer, "token": run.position(sel["token"]), "neuron": neuron}

    def tensors(self, run, sel, options):
        layer, token, neuron = sel["layer"], sel["token"], sel["neuron"]
        activations = run.neuron_activations(layer)[:, neuron]
        out = {"kind": self.kind, "activation": activations[token], "activations": activations,
               "output": run.neuron_writes(layer, token)[neuron]}
        effects = options["effects"]
        if effects is not None:
            out |= {"effect": effects.neuron_effects(layer, token)[neuron], "metric": effects.metric}
        return out

    def panel(self, run, sel, options):
        layer, token, neuron = sel["layer"], sel["token"], sel["neuron"]
        activations = run.neuron_activations(layer)[:, neuron].float().cpu()  # [T]
        strongest = activations.abs().topk(min(STRONGEST, run.n_tokens)).indices.tolist()
        shares, _ = run.neuron_shares(layer, token)
        out = {"selection": sel, "activation": float(activations[token]), "share": float(shares[neuron]),
               "activations": S.array(activations), "strongest": [[p, float(activations[p])] for p in strongest],
               "effect": S.effect(run.neuron_logits(layer, neuron, token, k=options["logits"]))}
        effects = options["effects"]
        if effects is not None:
            out |= {"neuron_effect": float(effects.neuron_effects(layer, token)[neuron]), "metric": effects.metric}
        return out

    def ablations(self, run, sel):
        layer, token, neuron = sel["layer"], sel["token"], sel["neuron"]
        return [{"label": f"neuron {neuron} of layer {layer}", "spec": ["neuron", layer, neuron], "at": token},
                *_block_offers(run, layer, token, ["ffn"])]

    def patches(self, run, sel):
        return KINDS["ffn"].patches(run, sel)

    def intervened(self, run, sel):
        return _ffn_part_intervened(run, sel, "neuron")


@register
class Expert(SelectionKind):
    # the effects depend on the view's target and contrast
    kind, title, key = "expert", "FFN expert", ("layer", "token", "expert", "metric_at", "contrast", "with_effects")

    def normalize(self, run, sel: dict) -> dict:
        layer = check_index("layer", sel["layer"], run.shape.n_layers)
        if not run.has_experts(layer):
            raise LmttError(f"layer {layer}'s FFN is dense: it has no experts; select the block, "
                            f"{{'kind': 'ffn', 'layer': {layer}, 'token': ...}}, or one of its neurons")
        token, expert = run.position(sel["token"]), sel.get("expert")
        if expert is not None:
            expert = check_index("expert", expert, run.n_experts(layer))
        writing = run.expert_writes(layer, token).experts
        if expert not in writing:
            routed = [e for e in writing if e is not None]
            which = "the shared expert" if expert is None else f"expert {expert}"
            raise LmttError(f"{which} does not write at token {token} of layer {layer}: the router selected "
                            f"experts {routed} there{'' if None in writing else ' (no shared expert in this model)'}")
        return {"kind": self.kind, "layer": layer, "token": token, "expert": expert}

    def tensors(self, run, sel, options):
        layer, token, expert = sel["layer"], sel["token"], sel["expert"]
        writes = run.expert_writes(layer, token)
        at = writes.experts.index(expert)
        out = {"kind": self.kind, "routing_weight": writes.weights[at], "write": writes.writes[at],
               "share": run.expert_contributions(layer, token)[at].share,
               "activations": run.expert_neuron_activations(layer, token, expert),
               "neuron_writes": run.expert_neuron_writes(layer, token, expert)}
        effects = options["effects"]
        if effects is not None:
            out |= {"effect": effects.experts(layer, token)[at].effect, "metric": effects.metric}
        return out

    def panel(self, run, sel, options):
        layer, token, expert = sel["layer"], sel["token"], sel["expert"]
        share = next(e for e in run.expert_contributions(layer, token) if e.expert == expert)
        neurons = run.expert_neuron_contributions(layer, token, expert, k=options["neurons"])
        writes = run.expert_neuron_writes(layer, token, expert)[[n.index for n in neurons]]
        logits = run.direct_logits(writes, token)
        effects = options["effects"]
        every = run.expert_neuron_activations(layer, token, expert).numel()  # effects of all, then the rows'
        neuron_effects = None if effects is None else {
            n.index: n.effect for n in effects.expert_neurons(layer, token, expert, k=every)}
        out = {"selection": sel, "weight": share.weight, "share": share.share,
               "write": S.effect(run.expert_logits(layer, token, expert, k=options["logits"])),
               "neurons": [{"index": n.index, "share": n.share, "activation": n.activation,
                            **({} if neuron_effects is None else {"effect": neuron_effects[n.index]}),
                            **S.effect(V.top_bottom(row, NEURON_LOGITS_K, run.decode))}
                           for n, row in zip(neurons, logits)]}
        if effects is not None:
            out |= {"effect": next(e.effect for e in effects.experts(layer, token) if e.expert == expert),
                    "metric": effects.metric}
        return out

    def ablations(self, run, sel):
        layer, token = sel["layer"], sel["token"]
        return [*_expert_offers(run, layer, token, [sel["expert"]]), *_block_offers(run, layer, token, ["ffn"])]

    def patches(self, run, sel):
        return KINDS["ffn"].patches(run, sel)

    def intervened(self, run, sel):
        return _ffn_part_intervened(run, sel, "expert")


def _ffn_part_intervened(run, sel: dict, part: str) -> dict | None:
    """protocol.Intervened of a part of an FFN block at the selected token (`part`: "neuron" or
    "expert", the selection's field and the ablation kind): its own ablation or the block's covers
    it, and so does a patch of the FFN update there."""
    layer, token, which = sel["layer"], sel["token"], sel[part]

    def ablated(ab):
        if ab.layer != layer or not _covers(ab.positions, token):
            return False
        return ab.kind == "ffn" or (ab.kind == part and getattr(ab, part) == which)
    return _intervention(run, ablated,
                         lambda node: node.kind == "ffn" and (node.layer, node.position) == (layer, token))


def _expert_offers(run, layer: int, token: int, experts: list[int | None]) -> list[dict]:
    """Ablations of the routed experts among `experts` (the shared expert has no ablation of its
    own: the FFN block's stands for it)."""
    return [{"label": f"expert {e} of layer {layer}", "spec": ["expert", layer, e], "at": token}
            for e in experts if e is not None]


def _focus(run, source: int, target: int, routes: list[int]) -> list[int]:
    """The tokens that matter for an edge's maps: its two ends and their neighbours, the first
    token, then the routes' tokens nearest the target, FOCUS_MAX at most, ascending."""
    near = {p for t in (source, target) for p in range(t - 2, t + 3) if 0 <= p < run.n_tokens} | {0}
    rest = sorted(set(routes) - near, key=lambda t: abs(t - target))
    return sorted(near | set(rest[:max(0, FOCUS_MAX - len(near))]))


def _widened(focus: list[int], row) -> list[int]:
    """`focus` and the sources the target attends to most, MAP_FULL at most, ascending."""
    extra = [int(p) for p in row.topk(min(MAP_FULL, row.numel())).indices if int(p) not in focus]
    return sorted(set(focus) | set(extra[:MAP_FULL - len(focus)]))
