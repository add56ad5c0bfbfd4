"""The model's own continuation: `generate` continues a prompt with transformers' `generate`
(greedy unless told otherwise) and analyses the whole text, so that the routes to every token
the model wrote itself can be read (`run.generated` says which positions those are).

Generating is the user's own model call: it runs the model as the user has it (its own
attention, its generation config), outside the package's traces; only the analysis of the text
it wrote is traced.
"""

from __future__ import annotations

import torch

from . import contributions as C
from .architectures import family_of, shape_of
from .errors import LmttError, check_floor, check_positive
from .models import check_model
from .run import Run, analyze_ids, prompt_ids, token_ids


def generate(model, prompt, max_new_tokens: int = 20, *, chat: bool = False, distance: str = "l1",
             prepend_bos: bool | None = None, budget_bytes: int = C.DEFAULT_BUDGET_BYTES, floor: float | None = None,
             progress: bool | None = None, **generate_kwargs) -> Run:
    """Continue `prompt` (a string or token ids) by up to `max_new_tokens` tokens with the model's
    `generate` (greedy: do_sample=False unless `generate_kwargs` say otherwise; they go to
    `generate` as they are) and analyse the prompt with its continuation (`distance`,
    `prepend_bos`, `budget_bytes`, `floor` and `progress` as for `analyze`). `chat=True` first
    puts the prompt, as the user's message, into the tokenizer's chat template (an instruct
    model's; `prepend_bos` then forces or removes a BOS token at the start of the templated
    text). The run's `generated` is the range of positions the model wrote."""
    check_model(model, "lw.generate")
    max_new_tokens = check_positive("max_new_tokens", max_new_tokens)
    C.distance_order(distance), check_positive("budget_bytes", budget_bytes)  # refused before generating
    if floor is not None:
        check_floor(floor)
    ids = prompt_ids(model, chat_ids(model, prompt) if chat else prompt, prepend_bos)[0]
    hf_model = model._module
    n_ctx = shape_of(hf_model, family_of(hf_model)).n_ctx
    if n_ctx is not None and len(ids) + max_new_tokens > n_ctx:
        raise LmttError(f"the prompt is {len(ids)} tokens long: with {max_new_tokens} new tokens it would pass the "
                        f"{n_ctx} this model reads; ask for at most {max(n_ctx - len(ids), 0)}")
    options = {"do_sample": False, "max_new_tokens": max_new_tokens,
               "pad_token_id": _pad_id(model.tokenizer, hf_model), **generate_kwargs}
    with torch.no_grad():
        try:
            out = hf_model.generate(ids[None].to(hf_model.device), attention_mask=torch.ones_like(ids)[None].to(
                hf_model.device), **options)
        except (ValueError, TypeError) as error:  # transformers checks the options it is given: say which were ours
            if not generate_kwargs:
                raise
            raise LmttError(f"transformers' generate refused the options {sorted(generate_kwargs)}: {error}") from None
    sequences = getattr(out, "sequences", out)  # a tensor, or an output object with return_dict_in_generate
    if sequences.shape[0] != 1:
        raise LmttError(f"generate gave {sequences.shape[0]} continuations; lw.generate analyses one "
                        "(leave num_return_sequences and num_beams' returns at 1)")
    whole = sequences[0].cpu()
    run = analyze_ids(model, whole, prompt=model.tokenizer.decode(whole), distance=distance,
                      budget_bytes=budget_bytes, floor=floor, progress=progress)
    run.generated = range(len(ids), len(whole))
    return run


def chat_ids(model, message) -> torch.Tensor:
    """[T]: `message` as the user's turn of the tokenizer's chat template, ready for the model's answer."""
    tokenizer = model.tokenizer
    if not isinstance(message, str):
        raise LmttError(f"chat=True takes the user's message as a string, got {type(message).__name__}")
    if not message.strip():
        raise LmttError("the message is empty: give some text")
    if not getattr(tokenizer, "chat_template", None):
        raise LmttError("this tokenizer has no chat template, which chat=True needs (an instruct model's "
                        "tokenizer has one); use chat=False to continue the text as it is")
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)
    ids = token_ids(list(encoded["input_ids"]), model._module.get_input_embeddings().num_embeddings)
    return torch.tensor(ids, dtype=torch.long)


def _pad_id(tokenizer, hf_model) -> int | None:
    """What generate pads with: the tokenizer's pad token, else the end of text (so it does not warn)."""
    for candidate in (tokenizer.pad_token_id, hf_model.generation_config.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate if isinstance(candidate, int) else candidate[0]
    return None
