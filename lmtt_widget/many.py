"""Many prompts at once: `analyze_many` runs them in padded batches, one forward pass a batch, and
gives each prompt the run that `analyze` gives it alone.

Padding changes nothing. The attention mask hides the padding from every token and positions
count from a prompt's first token (`position_ids`), so rotary and learned positions are those of
the prompt alone, padded on the right or on the left; and each prompt's shares are computed from
its own rows of the batch.

Shares are computed for every prompt of a batch together, in one set of tensor operations over the
padded batch (run.batch_shares): parts whose target or source is padding are exactly 0, and each
prompt's shares are those of its own rows alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import nnsight
import torch

from . import contributions as C
from .architectures import Shape, check_attention, family_of, shape_of, text_config, w_o
from .attention import AttentionProbs, output_probs, probs_window
from .errors import LmttError, _integer, check_floor, check_positive
from .models import check_model
from .progress import progress_counter
from .run import Kept, LayerShares, Run, batch_shares, floor_for, kept_whole, prompt_ids
from .tracing import Capture, _first, attention_inputs_of, block_update, exclusive

PADDING = ("right", "left")


@dataclass(frozen=True)
class Batch:
    """Prompts padded to one length: row b holds prompt b at positions start..start+length-1."""

    ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]: 1 on the prompts' tokens, 0 on the padding
    spans: list[tuple[int, int, int]]  # (row, start, length) of each prompt

    @property
    def positions(self) -> torch.Tensor:
        """[B, T]: each token's position in its own prompt (0 on the padding)."""
        return (self.mask.cumsum(-1) - 1).clamp_min(0)


def padded(prompts: list[torch.Tensor], pad_id: int, padding: str) -> Batch:
    length = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    spans = []
    for row, prompt in enumerate(prompts):
        start = 0 if padding == "right" else length - len(prompt)
        ids[row, start:start + len(prompt)] = prompt
        mask[row, start:start + len(prompt)] = 1
        spans.append((row, start, len(prompt)))
    return Batch(ids, mask, spans)


class BatchLayer(NamedTuple):
    """One block's tensors for a batch, read inside a trace (`batch_layer`), as tracing.trace reads
    them for one prompt."""

    resid_in: torch.Tensor  # [B, T, d]
    attn_out: torch.Tensor  # [B, T, d]: the attention update as the residual receives it
    ffn_out: torch.Tensor  # [B, T, d]
    resid_out: torch.Tensor  # [B, T, d]
    probs: torch.Tensor | AttentionProbs  # [B, H, T, T]
    values: torch.Tensor  # [B, T, KV, head_dim]
    neurons: torch.Tensor | None  # [B, T, d_ff] of a dense FFN, if asked for
    attn_scale: torch.Tensor | None  # [B, T]: the frozen scale of a norm after the attention block, if any
    ffn_scale: torch.Tensor | None  # [B, T]: likewise after the FFN


def batch_layer(model, family, shape: Shape, layer: int, clamp: float | None, neurons: bool = False) -> BatchLayer:
    """Inside a trace of a batch: block `layer`'s tensors, read in the order the forward pass makes
    them, with tracing's helpers (the family's value layout and clamp, its post-norms)."""
    modules = family.modules(model, layer)
    x = _first(modules["block"].input)
    n_rows, n_tokens = x.shape[:2]

    def rows(tensor):  # [B, T, ...] or [B * T, ...] (OPT's FFN) -> [B, T, -1]
        return tensor.reshape(n_rows, n_tokens, -1)

    def scales(scale):  # [B * T] -> [B, T]
        return None if scale is None else scale.reshape(n_rows, n_tokens)

    inputs = attention_inputs_of(family, modules)
    proj = modules["value_proj"].output.reshape(n_rows * n_tokens, -1)
    values = family.value_vectors(proj, shape, clamp).reshape(n_rows, n_tokens, shape.n_kv_heads, -1)
    attention = modules["attention"].output
    probs = batch_probs(family, shape, attention, inputs, proj)
    attn, attn_scale = block_update(family, modules, "attn", attention)
    attn = rows(attn).clone()  # a copy: some blocks add to their sub-blocks' outputs in place
    dense = neurons and modules["ffn_out_proj"] is not None  # a mixture of experts has no layer-wide neurons
    activations = rows(_first(modules["ffn_out_proj"].input)).clone() if dense else None
    ffn, ffn_scale = block_update(family, modules, "ffn", modules["ffn"].output)
    ffn = rows(ffn).clone()
    return BatchLayer(x, attn, ffn, rows(_first(modules["block"].output)), probs, values, activations,
                      scales(attn_scale), scales(ffn_scale))


def batch_probs(family, shape: Shape, output, inputs: dict | None, proj: torch.Tensor):
    """[B, H, T, T]: every prompt's probabilities (tracing.block_probs for a batch); where the family
    computes them from the attention's inputs, batches hold one prompt (`batch_size_for`)."""
    if inputs is not None and family.probs_from_inputs is not None and output[1] is None:
        return family.probs_from_inputs(inputs, proj, shape)
    output_probs(output)  # an LmttError, with the fix, where the attention gives none
    return output[1]


def batch_size_for(family, batch_size: int) -> int:
    """Falcon computes its probabilities from one prompt's queries and keys (Family.probs_from_inputs):
    its prompts go one at a time (each run still equals analyze's)."""
    return 1 if family.probs_from_inputs is not None else batch_size


def shares_of(tensors: BatchLayer, w_o: torch.Tensor, parallel: bool, p: int, budget: int,
              spans: list[tuple[int, int, int]], floors: list[float]) -> list[LayerShares]:
    """Each prompt's shares of one block (run.batch_shares) from the batch's tensors; a prompt keeps
    the attention edges above its own floor."""
    return batch_shares(tensors.resid_in, tensors.attn_out, tensors.ffn_out, tensors.resid_out, tensors.probs,
                        tensors.values, w_o, parallel, p, budget, floors, target_scale=tensors.attn_scale, spans=spans)


# -- many prompts ----------------------------------------------------------------------------------

def analyze_many(model, prompts: Iterable, *, batch_size: int = 8, progress: bool | None = None,
                 padding: str = "right", activations: bool = False, distance: str = "l1",
                 prepend_bos: bool | None = None, budget_bytes: int = C.DEFAULT_BUDGET_BYTES,
                 floor: float | None = None) -> list[Run]:
    """`analyze` of every prompt in `prompts` (a list or any iterable, e.g. a generator or a
    datasets column, of strings or token ids), `batch_size` prompts per forward pass, each with
    prompts of like length among the next few batches' worth (less padding to compute); the runs
    in the prompts' order, each equal to what `analyze` gives that prompt alone.

    `padding` "right" or "left" (the results are the same). Runs keep their shares and their
    final-normed residuals [T, d] (their top predictions are made from them when first asked, as
    `analyze`'s logits are); with `activations` also their captured activations (as `analyze`'s runs do),
    else a readout that needs them traces its prompt again when first asked (so a long stream
    keeps little: bench/README.md says how little). `progress`: a bar over the prompts (None: once
    it takes over a second). `distance`, `prepend_bos`, `budget_bytes` and `floor` as for `analyze`.
    """
    check_model(model, "lw.analyze_many")
    p = C.distance_order(distance)
    budget_bytes = check_positive("budget_bytes", budget_bytes)
    floor = None if floor is None else check_floor(floor)
    check_padding(padding)
    family = family_of(model._module)
    check_attention(model._module, family)

    def analyze_batch(batch):
        return _analyze_batch(model, batch, padding, activations, p, distance, budget_bytes, floor)
    return in_batches(model, prompts, batch_size_for(family, check_positive("batch_size", batch_size)), progress,
                      prepend_bos, analyze_batch)


def check_padding(padding: str) -> str:
    if padding not in PADDING:
        raise LmttError(f"padding must be 'right' or 'left', got {padding!r}")
    return padding


SORTED_BATCHES = 8  # batches' worth of prompts read ahead and ordered by length: less padding, bounded memory


def in_batches(model, prompts: Iterable, batch_size: int, progress: bool | None, prepend_bos: bool | None,
               analyze_batch: Callable[[list[tuple[torch.Tensor, str]]], list]) -> list:
    """`analyze_batch` of `batch_size` prompts at a time ((ids, text) of each), read from `prompts`
    as they come, SORTED_BATCHES batches' worth at once, each batch of prompts of similar lengths
    (the padding costs what the prompts do); what it returns, in the prompts' order; a progress
    bar over the prompts.

    Nothing done is lost to a bad prompt late in a stream, a failure of the iterable or an
    interrupt: the exception carries `.runs`, the results of every prompt before the first one
    without a result (the prompts read before a bad one or a failure are analysed first), and a
    note that says how many there are."""
    batch_size = check_positive("batch_size", batch_size)
    results: list = []
    in_order: list = []  # the window in progress
    bar = progress_counter(enabled=progress, desc="prompts", total=_length(prompts), unit="prompt")
    checked = checked_prompts(model, prompts, prepend_bos)
    try:
        while True:
            window, bad = _window(checked, batch_size * SORTED_BATCHES)
            by_length = sorted(range(len(window)), key=lambda index: len(window[index][0]))
            in_order = [None] * len(window)
            for first in range(0, len(window), batch_size):
                indices = by_length[first:first + batch_size]
                for index, result in zip(indices, analyze_batch([window[index] for index in indices]), strict=True):
                    in_order[index] = result
                bar.update(len(indices))
            results += in_order
            in_order = []
            if bad is not None:
                raise bad
            if len(window) < batch_size * SORTED_BATCHES:
                return results
    except BaseException as error:  # a bad prompt, an interrupt, an error of the analysis: keep what is done
        done = results + list(itertools.takewhile(lambda result: result is not None, in_order))
        error.runs = done  # type: ignore[attr-defined]
        if done:
            error.add_note(f"lmtt-widget: the results of the first {len(done)} prompts are in this exception's "
                           ".runs")
        raise
    finally:
        bar.close()


def checked_prompts(model, prompts: Iterable, prepend_bos: bool | None) -> Iterator[tuple[torch.Tensor, str]]:
    """(ids, text) of each prompt, read as it comes; a bad one named by its index."""
    whole_table = hasattr(prompts, "column_names") or (hasattr(prompts, "iloc") and hasattr(prompts, "columns"))
    if whole_table:  # a datasets.Dataset (or its streaming form) or a pandas DataFrame: rows or names, not prompts
        table: Any = prompts
        columns = list(table.columns) if hasattr(table, "iloc") else list(table.column_names or [])
        raise LmttError(f"prompts is a whole {'table' if hasattr(prompts, 'iloc') else 'dataset'}"
                        + (f" (columns {columns})" if columns else "")
                        + ": pass one column of prompts, e.g. data['text'] or data['input_ids']")
    mapping = hasattr(prompts, "keys") and not hasattr(prompts, "dtype")  # a dict, a tokenizer's output (not a Series)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable) or mapping:
        raise LmttError(f"prompts must be a list (or another iterable) of prompts, got {type(prompts).__name__}"
                        + ("; for one prompt use lw.analyze" if isinstance(prompts, str) else ""))
    if len(getattr(prompts, "shape", ())) == 1 and "int" in str(getattr(prompts, "dtype", "")):
        raise LmttError(f"prompts is one prompt's token ids (a 1-D {type(prompts).__name__} of integers): for one "
                        "prompt use lw.analyze(model, ids), or give a list of prompts: [ids]")
    for index, prompt in enumerate(prompts):
        try:
            yield prompt_ids(model, prompt, prepend_bos)
        except LmttError as error:
            hint = " (a single token id: is this one prompt's ids? use lw.analyze(model, ids), or a list [ids])" \
                if _integer(prompt) is not None else ""
            raise LmttError(f"prompt {index}: {error}{hint}") from None


def _window(prompts: Iterator, size: int) -> tuple[list, Exception | None]:
    """The next `size` prompts (fewer at the end), or those read before a bad one or a failure of
    the iterable (a dataset's map, a stream's read), and its error (an interrupt is not held up)."""
    window: list = []
    try:
        window.extend(itertools.islice(prompts, size))
    except Exception as error:
        return window, error
    return window, None


def _length(prompts) -> int | None:
    try:
        return len(prompts)
    except TypeError:  # a generator: the bar counts without a total
        return None


def _analyze_batch(model, prompts: list[tuple[torch.Tensor, str]], padding: str, activations: bool, p: int,
                   distance: str, budget_bytes: int, floor: float | None) -> list[Run]:
    hf_model = model._module
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    batch = padded([ids for ids, _ in prompts], model.tokenizer.pad_token_id or 0, padding)  # any pad: it is hidden
    spans = batch.spans
    floors = [floor_for(floor, shape, length, budget_bytes) for _, _, length in spans]
    layers: list[list[LayerShares]] = [[] for _ in spans]
    kept = [_Kept(span, kept_whole(hf_model, family, shape, span[2], budget_bytes)) for span in spans]
    device = hf_model.device
    clamp = family.value_clamp(text_config(hf_model))
    with torch.no_grad(), exclusive(model), model.trace(batch.ids.to(device), attention_mask=batch.mask.to(device),
                                                        position_ids=batch.positions.to(device)) as tracer:
        for layer in range(shape.n_layers):
            neurons = activations and any(own.keep.neurons for own in kept)
            tensors = batch_layer(model, family, shape, layer, clamp, neurons=neurons)
            found = shares_of(tensors, w_o(hf_model, family, shape, layer), shape.parallel, p, budget_bytes, spans,
                              floors)
            for prompt_layers, shares in zip(layers, found):
                prompt_layers.append(shares.cpu())
            if activations:
                for own in kept:
                    own.add(layer, tensors)
        final_normed = family.get(model, "final_norm").output.reshape(batch.ids.shape[0], batch.ids.shape[1], -1)
        if activations:
            for own in kept:
                own.finish(final_normed)
        normed = nnsight.save([] if activations else  # else the capture holds them
                              [final_normed[row, start:start + length].clone() for row, start, length in spans])
        tracer.stop()  # no logits: a run makes its top predictions from its final-normed residuals when asked
    return [Run(model, text, ids, own.capture if activations else None, layers[i], distance, budget_bytes, floors[i],
                final_normed=None if activations else normed[i].cpu())  # as the shares: a stream keeps no GPU memory
            for i, ((ids, text), own) in enumerate(zip(prompts, kept))]


class _Kept:
    """One prompt's own copy of the activations `analyze` keeps (its Capture), taken from a batch."""

    def __init__(self, span: tuple[int, int, int], keep: Kept):
        self.span, self.keep = span, keep
        self.capture = Capture([], [], [], {}, [], None, {})

    def add(self, layer: int, tensors: BatchLayer) -> None:
        row, start, length = self.span
        window = slice(start, start + length)
        own = self.capture
        if layer == 0:
            own.resid.append(tensors.resid_in[row, window].clone())
        own.attn_out.append(tensors.attn_out[row, window].clone())
        own.ffn_out.append(tensors.ffn_out[row, window].clone())
        own.resid.append(tensors.resid_out[row, window].clone())
        own.values.append(tensors.values[row, window].clone())
        probs = probs_window(tensors.probs, row, window)
        if self.keep.probs:
            own.probs[layer] = probs.dense() if isinstance(probs, AttentionProbs) else probs.clone()
        elif isinstance(probs, AttentionProbs):  # the queries and keys, as analyze keeps them
            own.probs[layer] = AttentionProbs(probs.query.clone(), probs.key.clone(),
                                              None if probs.mask is None else probs.mask.clone(), probs.scaling,
                                              probs.groups)
        if self.keep.neurons and tensors.neurons is not None:
            own.neurons[layer] = tensors.neurons[row, window].clone()
        for name in ("attn_scale", "ffn_scale"):
            scale = getattr(tensors, name)
            if scale is not None:
                getattr(own, name).append(scale[row, window].clone())

    def finish(self, final_normed: torch.Tensor) -> None:
        row, start, length = self.span
        self.capture.final_normed = final_normed[row, start:start + length].clone()
