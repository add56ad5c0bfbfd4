"""The kinds of node that `patch` takes from another prompt, one class each, registered by their
kind: each checks its tuple form, makes the edits that put the other prompt's activation in
place, writes its lines of nnsight code and describes itself.

A node is a NamedTuple, so it is its tuple form and equals it, as the graph's nodes do:
(stage, layer, position) with stage "embed" (layer -1), "mid", "ffn" (the FFN block's update)
or "post", and ("head", layer, head, position) (the head's output there). To add a kind: a
NamedTuple of its fields, subclassed with `PatchNode` and `kind="name"`, with the methods marked
"each kind".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch

from ..errors import LmttError
from ..tracing import Edit
from .edits import head_columns, head_mix, put, unread

NODES: dict[str, type[PatchNode]] = {}  # kind -> its class, filled as each class is defined


class PatchNode:
    """What every kind of node has; mixed into a NamedTuple whose first field is `kind`."""

    __slots__ = ()
    KIND: ClassVar[str]
    FORM: ClassVar[str]  # the tuple form, for messages
    NAME: ClassVar[str]  # its short name, formatted with its fields (label)

    def __init_subclass__(cls, kind: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.KIND = kind
            NODES[kind] = cls

    def as_tuple(self) -> tuple:
        return tuple(self)  # type: ignore[arg-type]  # the NamedTuple kinds

    # -- each kind ------------------------------------------------------------------------

    @classmethod
    def check(cls, run, *args) -> PatchNode:
        """The node from the values after the kind in its tuple form, checked against `run`."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def label(self, token: Callable[[int], str]) -> str:
        """A short name for lists (the widget's): "head L23.3 at 5 ␣Mary"; `token(position)` writes a position."""
        return f"{self.NAME.format(layer=self.layer, head=getattr(self, 'head', None))} at {token(self.position)}"  # type: ignore[attr-defined]

    def value(self, source) -> torch.Tensor:
        """The node's activation in the `source` run: what patching puts in place (and a saved run keeps)."""
        raise NotImplementedError

    def edits(self, value: torch.Tensor) -> list[Edit]:
        """The edits that set this node to `value` (its `value` in another run)."""
        raise NotImplementedError

    def code(self, clean, script, name: str, source_ids: torch.Tensor) -> None:
        """Add to `script` (codegen.Script) the lines that save the activation in the trace of
        `source_ids` (as variable `name`) and put it in place in the main trace of `clean`'s prompt."""
        raise NotImplementedError


class _Stage(NamedTuple):
    kind: str
    layer: int
    position: int


class StageNode(_Stage, PatchNode):
    """A node of the graph, (stage, layer, position): the other prompt's vector there is put in place."""

    __slots__ = ()
    FORM = "(stage, layer, position)"
    SITE: ClassVar[str]  # where the edit puts the vector (tracing.SITES)
    CODE: ClassVar[tuple[str, str]]  # (the site, the variable) the generated code reads and sets

    @classmethod
    def check(cls, run, layer, position):
        return cls(cls.KIND, run.layer(layer), run.position(position))

    def value(self, source):
        """[d]: the node's vector in `source`."""
        return source.residual(self.layer, self.position, self.kind)

    def edits(self, value):
        return [put(self.SITE, max(self.layer, 0), self.position, value)]

    def code(self, clean, script, name, source_ids):
        (site, variable), layer = self.CODE, max(self.layer, 0)
        script.save_from(source_ids, layer, site, f"{name} = nnsight.save({variable}[{self.position}].clone())")
        script.edit(layer, site, f"{variable}[{self.position}] = {name}  # patch {self.as_tuple()!r}")


class EmbedNode(StageNode, kind="embed"):
    __slots__ = ()
    NAME = "embedding"
    SITE, CODE = "embed", ("block_input", "x_in")

    @classmethod
    def check(cls, run, layer, position):
        if layer != -1:
            raise LmttError(f"the embedding node's layer is -1, got {layer!r}")
        return cls("embed", -1, run.position(position))

    def describe(self):
        return f"the embedding at position {self.position}"


class MidNode(StageNode, kind="mid"):
    """The residual after the attention block: patched through the attention block's update."""

    __slots__ = ()
    NAME = "residual mid L{layer}"

    @classmethod
    def check(cls, run, layer, position):
        if run.shape.parallel:
            raise LmttError("parallel blocks (GPT-NeoX/Pythia) have no 'mid' residual; patch 'post' or a head")
        return super().check(run, layer, position)

    def describe(self):
        return f"the residual after the attention block of layer {self.layer} at position {self.position}"

    def edits(self, value):
        mid, pos = value, self.position

        def attention(x, state):  # the update that makes x + update equal the source's mid
            x[pos] = (mid - state.resid_in[pos].to(mid.device)).to(x)
        return [Edit("attention_output", self.layer, attention), unread(self.layer, (slice(None), pos))]

    def code(self, clean, script, name, source_ids):
        layer, pos = self.layer, self.position
        script.save_from(source_ids, layer, "block_input")
        script.save_from(source_ids, layer, "attention_output",
                         f"{name} = nnsight.save(x_in[{pos}] + attn_update[{pos}])"
                         "  # the residual after attention")
        script.edit(layer, "block_input")
        script.edit(layer, "attention_output",
                    f"attn_update[{pos}] = {name} - x_in[{pos}]  # patch {self.as_tuple()!r}")


class FfnNode(StageNode, kind="ffn"):
    """The FFN block's update."""

    __slots__ = ()
    NAME = "FFN L{layer}"
    SITE, CODE = "ffn_output", ("ffn_output", "ffn_out")

    def value(self, source):
        return source.capture.ffn_out[self.layer][self.position]

    def describe(self):
        return f"the FFN update of layer {self.layer} at position {self.position}"


class PostNode(StageNode, kind="post"):
    __slots__ = ()
    NAME = "residual post L{layer}"
    SITE, CODE = "block_output", ("block_output", "block_out")

    def describe(self):
        return f"the residual after layer {self.layer} at position {self.position}"


class _Head(NamedTuple):
    kind: str
    layer: int
    head: int
    position: int


class HeadNode(_Head, PatchNode, kind="head"):
    """A head's output at a position: its slice of the output projection's input."""

    __slots__ = ()
    NAME = "head L{layer}.{head}"
    FORM = "('head', layer, head, position)"

    @classmethod
    def check(cls, run, layer, head, position):
        return cls("head", run.layer(layer), run.head(head), run.position(position))

    def describe(self):
        return f"the output of head {self.head} of layer {self.layer} at position {self.position}"

    def value(self, source):
        return head_mix(source, self.layer, self.head, self.position)  # [hd]

    def edits(self, value):
        head_dim = value.shape[-1]  # the head's columns in the output projection's input
        columns = slice(self.head * head_dim, (self.head + 1) * head_dim)
        return [put("out_proj_input", self.layer, (self.position, columns), value),
                unread(self.layer, (self.head, self.position))]

    def code(self, clean, script, name, source_ids):
        columns = head_columns(clean.shape, self.head)
        at = f"heads_in[{self.position}, {columns.start}:{columns.stop}]"
        script.save_from(source_ids, self.layer, "out_proj_input",
                         f"{name} = nnsight.save({at}.clone())  # head {self.head}'s output")
        script.edit(self.layer, "out_proj_input", f"{at} = {name}  # patch {self.as_tuple()!r}")


def parse_node(run, node) -> PatchNode:
    """A patch node from its tuple form (or a node), checked against `run`."""
    cls = NODES.get(node[0]) if isinstance(node, (tuple, list)) and node and isinstance(node[0], str) else None
    if cls is None or len(node) != len(cls._fields):  # type: ignore[attr-defined]
        stages = tuple(kind for kind, c in NODES.items() if issubclass(c, StageNode))
        others = [c.FORM for c in NODES.values() if not issubclass(c, StageNode)]
        raise LmttError(f"a node to patch is {StageNode.FORM} with stage in {stages}, or {', or '.join(others)}; "
                        f"got {node!r}")
    return cls.check(run, *node[1:])
