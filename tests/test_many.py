"""Many prompts: token ids in, batched analysis equal to one prompt at a time, the model's own
continuation, routes over a dataset."""

import numpy as np
import pytest
import torch

import lmtt_widget as lw
import tiny

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def llama():
    return tiny.load("llama")


@pytest.fixture(scope="module")
def llama_run(llama):
    return lw.analyze(llama, PROMPT, progress=False)


# -- 1. token ids in ------------------------------------------------------------------------------

@pytest.mark.parametrize("form", [list, tuple, torch.tensor, np.array, lambda ids: torch.tensor(ids).int()])
def test_token_ids_in_any_one_dimensional_form_give_the_run_of_the_text(llama, llama_run, form):
    run = lw.analyze(llama, form(llama_run.input_ids.tolist()), progress=False)
    assert torch.equal(run.input_ids, llama_run.input_ids)
    assert run.prompt == PROMPT
    assert run.tokens == llama_run.tokens
    torch.testing.assert_close(run.attention_contributions(1)[0], llama_run.attention_contributions(1)[0])


@pytest.mark.parametrize("prompt, message", [
    (torch.tensor([[1, 2, 3]]), r"1-D integers, got a Tensor of shape \(1, 3\) .*ids\[0\]"),
    (np.array([1.0, 2.0]), r"1-D integers, got a ndarray of shape \(2,\) and dtype float64"),
    (torch.tensor([True, False]), r"dtype torch.bool"),
    ([1, 2.5], r"item 1 of the list is float 2.5"),
    ([[1, 2], [3, 4]], r"item 0 of the list is list .*a batch"),
    ((1, True), r"item 1 of the tuple is bool True"),
    ({"input_ids": [1, 2]}, r"got dict \(a tokenizer's output: pass its \['input_ids'\]\)"),
    (3, r"a string or a 1-D list, tuple, tensor or array of token ids, got int"),
    ([], r"no token ids"),
    ([5, 320], r"token id 320 \(at index 1\) is out of the vocabulary: valid ids are 0..319"),
    ([-1, 400, 2], r"token id -1 \(at index 0\) .* 2 ids are outside"),
    (list(range(1, 66)), r"65 tokens long; this model reads at most 64"),
])
def test_anything_but_text_or_one_prompts_ids_is_refused_saying_what_it_is(llama, prompt, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.analyze(llama, prompt)


def test_prepend_bos_applies_to_ids_as_to_text(llama, llama_run):
    ids = llama_run.input_ids.tolist()
    bos = llama.tokenizer.bos_token_id
    assert lw.analyze(llama, ids, prepend_bos=True, progress=False).input_ids.tolist() == [bos] + ids
    with pytest.raises(lw.LmttError, match="only a BOS token"):
        lw.analyze(llama, [bos], prepend_bos=False)


def test_compact_analysis_takes_ids_too(llama, llama_run):
    compact = lw.analyze_compact(llama, llama_run.input_ids.tolist(), floor=0.0)
    assert compact.tokens == llama_run.tokens
    torch.testing.assert_close(compact.attention_contributions(2)[0], llama_run.attention_contributions(2)[0])
