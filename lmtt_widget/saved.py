"""Runs in one file: safetensors for the tensors, JSON in the safetensors header for the rest.

A file holds a run's shares (routes at any threshold at or above its floor), its top predictions,
and, unless left out, the activations its readouts read (residuals, block updates, value vectors,
the final norm's output, the attention probabilities or the queries and keys they come from, the
FFN activations where the run kept them): nothing is recomputed when it is loaded. Readouts
through the vocabulary (logit lens, head and neuron logits) and interventions need the model's
weights, so they need the model: `lw.load_run(path, model=...)`, which refuses another model.
No pickle anywhere: a file from someone else runs no code.

An intervened run's file also holds its clean run (the same parts, names prefixed "clean."), its
ablations (tuple form, mode, description, and the fields that restore them) and its patches (the
node, the source prompt, its token ids, and the activation put in place: the source prompt's run
is not needed to show or rerun them).

`Run.to_file` writes and `run.load_run` reads through `write` and `read`; this module knows the
layout, the model's identity and how interventions are kept, and nothing of `Run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .architectures import FAMILIES, Family, Shape, family_of, shape_of
from .attention import AttentionProbs
from .errors import LmttError
from .interventions import NODES, Ablation
from .tracing import Capture

FORMAT = "lmtt-run"
VERSION = 2  # 2: intervened runs too (a version 1 file is a version 2 file of a clean run)
READABLE = (1, 2)
WEIGHTS_SAMPLE = 16  # leading values of each parameter that the weights' fingerprint reads


@dataclass(frozen=True)
class SavedModel:
    """What a file says of the model its run came from: enough to show the run without the model."""

    name: str  # as Run.model_name shows it
    family: Family
    shape: Shape
    identity: dict  # `identity(hf_model)` when the run was saved
    n_params: int
    tokens: list[str]  # the prompt's tokens, as text
    vocab: dict[int, str]  # the text of every token id the file's top predictions name

    def decode(self, ids) -> str:
        missing = [int(i) for i in ids if int(i) not in self.vocab]
        if missing:
            raise LmttError(f"token id {missing[0]} is not among the tokens this file kept (those of the top "
                            f"predictions): load the run with its model to read others")
        return "".join(self.vocab[int(i)] for i in ids)


# -- the model's identity ------------------------------------------------------------------------

def identity(hf_model) -> dict:
    """What names a model: its hub id or path, its architecture (model type, shape, number of
    parameters) and a fingerprint of its weights (the leading values of every parameter, rounded
    to bfloat16 so that a float32 model and its bfloat16 copy agree)."""
    shape = shape_of(hf_model, family_of(hf_model))
    architecture = {"model_type": hf_model.config.model_type, **dataclasses.asdict(shape),
                    "n_params": sum(p.numel() for p in hf_model.parameters())}
    digest = hashlib.sha256()
    for name, param in sorted(hf_model.named_parameters()):
        sample = param.detach().reshape(-1)[:WEIGHTS_SAMPLE].float().cpu().to(torch.bfloat16)
        digest.update(name.encode() + sample.view(torch.int16).numpy().tobytes())
    return {"name_or_path": getattr(hf_model.config, "name_or_path", "") or "", "architecture": architecture,
            "weights": digest.hexdigest()[:16], "dtype": str(next(hf_model.parameters()).dtype)}


def check_same_model(saved: dict, hf_model, path, name: str) -> None:
    """Refuse a model that is not the one the run in `path` (of model `name`) was saved from,
    saying how it differs."""
    given = identity(hf_model)
    differs = [f"{key} {saved['architecture'][key]!r} vs {given['architecture'].get(key)!r}"
               for key in saved["architecture"] if saved["architecture"][key] != given["architecture"].get(key)]
    if differs:
        raise LmttError(f"{path} holds a run of {name}; the model given is another architecture "
                        f"({', '.join(differs)}, saved vs given): load it with the model it was made with")
    if saved["weights"] != given["weights"]:
        dtypes = f" (saved from {saved['dtype']}, given {given['dtype']})" if saved["dtype"] != given["dtype"] else ""
        raise LmttError(f"{path} holds a run of {name}; the model given has its architecture but other "
                        f"weights{dtypes}: load it with the model it was made with")


# -- activations -----------------------------------------------------------------------------------

def capture_tensors(capture: Capture) -> tuple[dict[str, torch.Tensor], dict]:
    """The capture's tensors by name, and what the names alone do not say (how each layer's
    attention probabilities are kept)."""
    assert capture.final_normed is not None, "a whole forward pass"
    tensors = {"resid": torch.stack([t.cpu() for t in capture.resid]),
               "attn_out": torch.stack([t.cpu() for t in capture.attn_out]),
               "ffn_out": torch.stack([t.cpu() for t in capture.ffn_out]),
               "values": torch.stack([t.cpu() for t in capture.values]),
               "final_normed": capture.final_normed}
    for name in ("attn_scale", "ffn_scale"):  # the frozen scales of norms after a block, where the family has them
        if getattr(capture, name):
            tensors[name] = torch.stack([t.cpu() for t in getattr(capture, name)])
    probs: dict[str, dict | None] = {}
    for layer, p in capture.probs.items():
        if isinstance(p, AttentionProbs):  # the queries and keys they are computed from: O(T d)
            tensors |= {f"probs.{layer}.query": p.query, f"probs.{layer}.key": p.key}
            if p.mask is not None:
                tensors[f"probs.{layer}.mask"] = p.mask
            probs[str(layer)] = {"scaling": p.scaling, "groups": p.groups}
        else:
            tensors[f"probs.{layer}"] = p
            probs[str(layer)] = None
    tensors |= {f"neurons.{layer}": acts for layer, acts in capture.neurons.items()}
    return tensors, {"probs": probs}


def capture_from(tensors: dict[str, torch.Tensor], meta: dict) -> Capture:
    probs = {}
    for layer, computed in meta["probs"].items():
        key = f"probs.{layer}"
        probs[int(layer)] = tensors[key] if computed is None else AttentionProbs(
            tensors[f"{key}.query"], tensors[f"{key}.key"], tensors.get(f"{key}.mask"), computed["scaling"],
            computed["groups"])
    neurons = {int(name.split(".")[1]): t for name, t in tensors.items() if name.startswith("neurons.")}
    return Capture(list(tensors["resid"]), list(tensors["attn_out"]), list(tensors["ffn_out"]), probs,
                   list(tensors["values"]), tensors["final_normed"], neurons,
                   *(list(tensors[name]) if name in tensors else [] for name in ("attn_scale", "ffn_scale")))


# -- checking what a file holds --------------------------------------------------------------------
# A file edited by hand or written by a bug is refused when it is read, naming what is wrong, rather
# than failing later deep inside a readout. Checks read the shapes and the metadata, and scan each
# layer's edges once: cheap beside reading the file.

# tensor name -> its shape: an int is fixed by the metadata, a str a size that the tensors of one
# layout share (the first binds it); None: any shape
Layout = dict[str, tuple[int | str, ...] | None]


def damaged(path, what: str) -> LmttError:
    return LmttError(f"{path} is damaged: {what}")


def check_keys(path, meta, keys: Iterable[str], where: str = "its metadata") -> None:
    """Refuse a file whose JSON `meta` (an object) lacks one of `keys`."""
    if not isinstance(meta, dict):
        raise damaged(path, f"{where} is {type(meta).__name__}, not the JSON object run.to_file writes")
    missing = [key for key in keys if key not in meta]
    if missing:
        raise damaged(path, f"{where} lacks {', '.join(map(repr, missing))}")


def check_layout(path, tensors: dict[str, torch.Tensor], layout: Layout) -> None:
    """Refuse a file that lacks a tensor of `layout` or holds one of another shape."""
    sizes: dict[str, int] = {}
    for name, expected in layout.items():
        if name not in tensors:
            raise damaged(path, f"it lacks tensor {name!r}")
        actual = tuple(tensors[name].shape)
        if expected is None:
            continue
        shown = ", ".join(f"{size}={sizes[size]}" if size in sizes else str(size) for size in expected)
        if len(actual) != len(expected) or any(
                have != (sizes.setdefault(want, have) if isinstance(want, str) else want)
                for have, want in zip(actual, expected)):
            raise damaged(path, f"tensor {name!r} has shape {list(actual)} where [{shown}] is expected")


def check_edges(path, name: str, edges: torch.Tensor, n_tokens: int) -> None:
    """Refuse attention edges [n, 2] (target, source) outside the prompt or out of the order that
    lookups by target rely on."""
    if len(edges) == 0:
        return
    if int(edges.min()) < 0 or int(edges.max()) >= n_tokens:
        raise damaged(path, f"tensor {name!r} holds positions outside 0..{n_tokens - 1}")
    keys = edges[:, 0].long() * n_tokens + edges[:, 1]
    if not bool((keys[1:] > keys[:-1]).all()):
        raise damaged(path, f"tensor {name!r} is not sorted by target, then source (as run.to_file writes it)")


def capture_layout(path, capture_meta, shape: Shape, n_tokens: int, prefix: str = "") -> Layout:
    """The shapes of the activations `capture_tensors` wrote, as `capture_meta` and the model's shape say."""
    check_keys(path, capture_meta, ["probs"], "its metadata's capture")
    n_layers, n_heads, head_dim, d_model = shape.n_layers, shape.n_heads, shape.head_dim, shape.d_model
    layout: Layout = {"resid": (n_layers + 1, n_tokens, d_model), "attn_out": (n_layers, n_tokens, d_model),
                      "ffn_out": (n_layers, n_tokens, d_model), "final_normed": (n_tokens, d_model),
                      "values": (n_layers, n_tokens, shape.n_kv_heads, head_dim)}
    check_keys(path, capture_meta["probs"], [], "its metadata's capture of attention probabilities")
    for layer, computed in capture_meta["probs"].items():
        if not (layer.isdigit() and int(layer) < n_layers):
            raise damaged(path, f"its metadata's capture names layer {layer!r} of a model with {n_layers} layers")
        if computed is None:
            layout[f"probs.{layer}"] = (n_heads, n_tokens, n_tokens)
        else:
            check_keys(path, computed, ["scaling", "groups"], f"its metadata's capture of layer {layer}")
            groups = computed["groups"]  # query heads per key head
            if type(groups) is not int or groups < 1 or n_heads % groups:
                raise damaged(path, f"its metadata's capture of layer {layer} has groups {groups!r} where a divisor "
                                    f"of the {n_heads} heads is expected")
            layout |= {f"probs.{layer}.query": (n_heads, n_tokens, head_dim),
                       f"probs.{layer}.key": (n_heads // groups, n_tokens, head_dim)}
    return {f"{prefix}{name}": expected for name, expected in layout.items()}


# -- interventions ---------------------------------------------------------------------------------

def ablations_meta(ablations) -> list[dict]:
    """Each ablation as a file keeps it: its tuple form and mode (as `intervene` takes them), its
    description, and its fields (which restore it without the model)."""
    return [{"spec": list(ab.as_tuple()), "mode": ab.mode, "description": ab.describe(),
             "fields": dataclasses.asdict(ab)} for ab in ablations]


def ablations_from(entries: list[dict]) -> tuple[Ablation, ...]:
    def restored(fields: dict) -> Ablation:
        positions = fields["positions"]  # a tuple in an Ablation, a list in JSON
        return Ablation(**{**fields, "positions": None if positions is None else tuple(positions)})
    return tuple(restored(entry["fields"]) for entry in entries)


def patches_parts(patches, patch_ids, patch_values) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(tensors, entries) of a run's patches: each patch's source prompt's token ids and the
    activation it puts in place; its node (tuple form), source prompt and description."""
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, ((node, prompt), ids, value) in enumerate(zip(patches, patch_ids, patch_values)):
        tensors |= {f"patches.{i}.source_ids": ids, f"patches.{i}.value": value}
        entries.append({"node": list(node.as_tuple()), "source_prompt": prompt, "description": node.describe()})
    return tensors, entries


def check_patches(path, tensors: dict[str, torch.Tensor], entries) -> None:
    """Refuse, naming what, patches that `patches_from` could not restore."""
    if not isinstance(entries, list):
        raise damaged(path, "its metadata's patches are not a list")
    for i, entry in enumerate(entries):
        check_keys(path, entry, ["node", "source_prompt"], f"its metadata's patch {i}")
        if not (isinstance(entry["node"], list) and entry["node"] and entry["node"][0] in NODES):
            raise damaged(path, f"its metadata's patch {i} has node {entry['node']!r}, not one of the kinds "
                                f"{', '.join(NODES)}")
        check_layout(path, tensors, {f"patches.{i}.source_ids": ("s",), f"patches.{i}.value": None})


def patches_from(tensors: dict[str, torch.Tensor], entries: list[dict]) -> tuple[tuple, tuple, tuple]:
    """(run.patches, run.patch_ids, run.patch_values) from what `patches_parts` wrote."""
    patches = tuple((NODES[entry["node"][0]](*entry["node"]), entry["source_prompt"]) for entry in entries)
    ids = tuple(tensors[f"patches.{i}.source_ids"] for i in range(len(entries)))
    values = tuple(tensors[f"patches.{i}.value"] for i in range(len(entries)))
    return patches, ids, values


# -- the file --------------------------------------------------------------------------------------

def write(path, tensors: dict[str, torch.Tensor], meta: dict) -> pathlib.Path:
    """One safetensors file with `meta` (JSON) in its header, written beside `path` and renamed
    over it, so that a failed write never leaves a broken file."""
    from safetensors.torch import save_file

    path = _path(path)
    if path.is_dir():
        raise LmttError(f"cannot write {path}: it is a folder; give a file's name, e.g. {path / 'run.lmtt'}")
    if not path.parent.is_dir():
        raise LmttError(f"cannot write {path}: there is no folder {path.parent}")
    # each tensor its own contiguous copy on the CPU: safetensors refuses tensors that share memory
    plain = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(plain, str(partial), metadata={"format": FORMAT, "lmtt": json.dumps({"version": VERSION, **meta})})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file `write` made; a clear LmttError for anything else."""
    from safetensors import SafetensorError, safe_open

    path = _path(path)
    if not path.is_file():
        raise LmttError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT or "lmtt" not in header:
                raise LmttError(f"{path} is a safetensors file, but not a run saved by lmtt-widget (run.to_file)")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as error:
        raise LmttError(f"{path} is not a run saved by lmtt-widget (run.to_file): {error}") from None
    try:
        meta = json.loads(header["lmtt"])
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise LmttError(f"{path} is marked as a run saved by lmtt-widget, but its metadata is damaged (not the JSON "
                        "object run.to_file writes)")
    if meta.get("version") not in READABLE:
        raise LmttError(f"{path} was saved in run format {meta.get('version')}; this lmtt-widget reads formats "
                        f"{', '.join(map(str, READABLE))}")
    return tensors, meta


def _path(path) -> pathlib.Path:
    try:
        return pathlib.Path(path)
    except TypeError:
        raise LmttError(f"path must be a file's path (a str or os.PathLike), got {type(path).__name__}") from None


def saved_model(path, meta: dict) -> SavedModel:
    """What the file `path` (its JSON `meta`) says of the model; refused, naming what, if it is damaged."""
    check_keys(path, meta, ["family", "shape", "model", "name", "n_params", "tokens", "vocab"])
    family = next((family for family in FAMILIES if family.name == meta["family"]), None)
    if family is None:
        raise damaged(path, f"it names the model family {meta['family']!r}, which this lmtt-widget does not know "
                            f"(known: {', '.join(family.name for family in FAMILIES)})")
    shape = _shape(path, meta["shape"])
    check_keys(path, meta["model"], ["architecture", "weights", "dtype"], "its metadata's model")
    if not isinstance(meta["tokens"], list) or not isinstance(meta["vocab"], dict):
        raise damaged(path, "its metadata's tokens (a list) or vocab (an object) are not what run.to_file writes")
    return SavedModel(meta["name"], family, shape, meta["model"], meta["n_params"], meta["tokens"],
                      {int(i): text for i, text in meta["vocab"].items()})


def _shape(path, fields) -> Shape:
    names = [field.name for field in dataclasses.fields(Shape)]
    check_keys(path, fields, names, "its metadata's shape")
    for name in names:
        value, optional = fields[name], name == "n_ctx"
        if name == "parallel":
            fits = isinstance(value, bool)
        else:
            fits = (value is None and optional) or (type(value) is int and value > 0)
        if not fits:
            expected = "true or false" if name == "parallel" else "a positive integer" + (" or null" * optional)
            raise damaged(path, f"its metadata's shape has {name} {value!r} where {expected} is expected")
    return Shape(**{name: fields[name] for name in names})
