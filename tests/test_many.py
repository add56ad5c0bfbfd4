"""Many prompts: token ids in, batched analysis equal to one prompt at a time, the model's own
continuation, routes over a dataset."""

import copy

import numpy as np
import pytest
import torch

import lmtt_widget as lw
import tiny
from tiny import IOI, IOI_CORRUPTED


@pytest.fixture(scope="module")
def llama_run(model):
    return lw.analyze(model, IOI, progress=False)


# -- 1. token ids in ------------------------------------------------------------------------------

@pytest.mark.parametrize("form", [list, tuple, torch.tensor, np.array, lambda ids: torch.tensor(ids).int()])
def test_token_ids_in_any_one_dimensional_form_give_the_run_of_the_text(model, llama_run, form):
    run = lw.analyze(model, form(llama_run.input_ids.tolist()), progress=False)
    assert torch.equal(run.input_ids, llama_run.input_ids)
    assert run.prompt == IOI
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
def test_anything_but_text_or_one_prompts_ids_is_refused_saying_what_it_is(model, prompt, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.analyze(model, prompt)


def test_prepend_bos_applies_to_ids_as_to_text(model, llama_run):
    ids = llama_run.input_ids.tolist()
    bos = model.tokenizer.bos_token_id
    assert lw.analyze(model, ids, prepend_bos=True, progress=False).input_ids.tolist() == [bos] + ids
    with pytest.raises(lw.LmttError, match="only a BOS token"):
        lw.analyze(model, [bos], prepend_bos=False)


def test_compact_analysis_takes_ids_too(model, llama_run):
    compact = lw.analyze_compact(model, llama_run.input_ids.tolist(), floor=0.0)
    assert compact.tokens == llama_run.tokens
    torch.testing.assert_close(compact.attention_contributions(2)[0], llama_run.attention_contributions(2)[0])


# -- 2. batches -----------------------------------------------------------------------------------

PROMPTS = [IOI, "Hello world", "The capital of France is Paris. The capital of Italy is",
           "Tokens, spaces and\nnewlines.", "Mary"]


def assert_same_run(got, expected, threshold=0.02, atol=1e-5):
    """The batched run equals the run of the prompt alone: tokens, shares, routes, predictions."""
    assert got.tokens == expected.tokens and torch.equal(got.input_ids, expected.input_ids)
    assert got.prompt == expected.prompt and got.floor == expected.floor
    for mine, theirs in zip(got.layers, expected.layers):
        torch.testing.assert_close(mine.dense(), theirs.dense(), rtol=0, atol=atol)
        for name in ("attn_residual", "ffn", "ffn_residual"):
            torch.testing.assert_close(getattr(mine, name), getattr(theirs, name), rtol=0, atol=atol)
    g, e = got.graph(threshold=threshold), expected.graph(threshold=threshold)
    assert set(g.edges(keys=True)) == set(e.edges(keys=True))
    for u, v, key, data in e.edges(keys=True, data=True):
        assert g.edges[u, v, key]["weight"] == pytest.approx(data["weight"], abs=atol)
    (p1, i1), (p2, i2) = got.top_predictions(3), expected.top_predictions(3)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", tiny.FAMILIES + tiny.NEW_FAMILIES)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_batch_gives_each_prompt_the_run_it_gets_alone(family, padding):
    model = tiny.load(family)
    alone = [lw.analyze(model, prompt, progress=False) for prompt in PROMPTS]
    assert len({run.n_tokens for run in alone}) == len(PROMPTS)  # every length differs: padding everywhere
    runs = lw.analyze_many(model, PROMPTS, batch_size=3, padding=padding)
    assert [run.prompt for run in runs] == PROMPTS
    for run, expected in zip(runs, alone):
        assert_same_run(run, expected)
    # readouts: the activations are traced again when first read, and equal those of the prompt alone
    last = runs[2]
    assert not last.holds_activations
    torch.testing.assert_close(last.residual(1, 4, "post"), alone[2].residual(1, 4, "post"))
    assert last.logit_lens(1, -1, k=3) == alone[2].logit_lens(1, -1, k=3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_a_batch_keeps_the_activations_that_analyze_keeps_when_asked(family, monkeypatch):
    model = tiny.load(family)
    alone = [lw.analyze(model, prompt, progress=False) for prompt in PROMPTS[:3]]
    runs = lw.analyze_many(model, PROMPTS[:3], padding="left", activations=True)
    monkeypatch.setattr(model, "trace", lambda *a, **k: pytest.fail("traced again"))
    for run, expected in zip(runs, alone):
        assert run.holds_activations
        for layer in range(run.shape.n_layers):
            torch.testing.assert_close(run.attention_pattern(layer), expected.attention_pattern(layer))
            torch.testing.assert_close(run.neuron_activations(layer), expected.neuron_activations(layer))
            torch.testing.assert_close(run.residual(layer, -1, "post"), expected.residual(layer, -1, "post"))
        torch.testing.assert_close(run.logits, expected.logits, rtol=1e-5, atol=1e-5)
        assert run.head_logits(1, 2, -1, k=3).promoted[0][0] == expected.head_logits(1, 2, -1, k=3).promoted[0][0]


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("sub_batch_pairs", [None, 4000])  # 4000: sub-batches of one or two prompts
def test_shares_taken_in_several_chunks_of_targets_and_a_model_with_eager_attention(padding, sub_batch_pairs,
                                                                                   monkeypatch):
    hf_model = tiny.hf_model("llama")
    hf_model.set_attn_implementation("eager")  # probabilities as tensors, not computed from queries and keys
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    long = [IOI + " and then " + IOI[:n] for n in (20, 30, 40, 50, 55, 57)]
    budget = 100_000  # a few targets of the batch at a time: each prompt's edges come from several chunks
    from lmtt_widget import contributions as C
    chunks = []
    batched = C.head_source_proximity_chunks

    def counted(*args, **kwargs):
        for chunk in batched(*args, **kwargs):
            chunks.append(chunk[:2])
            yield chunk
    monkeypatch.setattr(C, "head_source_proximity_chunks", counted)
    if sub_batch_pairs:
        from lmtt_widget import run as R
        monkeypatch.setattr(R, "SUB_BATCH_PAIRS", sub_batch_pairs)
        spans = [(row, 0, len(model.tokenizer(prompt)["input_ids"])) for row, prompt in enumerate(long)]
        assert 1 < len(R._sub_batches(spans)) < len(long)
    runs = lw.analyze_many(model, long, batch_size=6, padding=padding, budget_bytes=budget)
    assert len(chunks) > 3 * model._module.config.num_hidden_layers
    monkeypatch.undo()
    for run, prompt in zip(runs, long):
        assert_same_run(run, lw.analyze(model, prompt, progress=False, budget_bytes=budget))


def test_strings_ids_and_generators_mix_and_keep_their_order(model):
    ids = model.tokenizer(PROMPTS[1])["input_ids"]
    prompts = (p for p in [PROMPTS[0], ids, torch.tensor(ids), PROMPTS[3]])  # a generator: no length
    runs = lw.analyze_many(model, prompts, batch_size=2)
    assert [run.prompt for run in runs] == [PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[3]]
    assert_same_run(runs[2], runs[1])


def test_batches_hold_prompts_of_like_lengths_read_a_bounded_window_ahead(model, monkeypatch):
    from lmtt_widget import many

    monkeypatch.setattr(many, "SORTED_BATCHES", 2)  # windows of 4 prompts at batch_size 2
    batches, read = [], []
    analyze_batch = many._analyze_batch

    def recorded(model, prompts, *args):
        batches.append(sorted(len(ids) for ids, _ in prompts))
        return analyze_batch(model, prompts, *args)
    monkeypatch.setattr(many, "_analyze_batch", recorded)

    def stream():  # long and short prompts in turn, as a dataset may give them
        for n in range(10):
            read.append(n)
            yield PROMPTS[n % 2] if n < 8 else PROMPTS[2 + n % 2]
    runs = lw.analyze_many(model, stream(), batch_size=2)
    assert [run.prompt for run in runs] == [PROMPTS[n % 2] if n < 8 else PROMPTS[2 + n % 2] for n in range(10)]
    short, long = sorted(len(model.tokenizer(p)["input_ids"]) for p in PROMPTS[:2])
    assert batches[:4] == [[short, short], [long, long]] * 2  # not a short prompt padded to a long one's length
    assert len(batches) == 5 and read == list(range(10))
    for run, prompt in zip(runs[7:], [PROMPTS[1], PROMPTS[2], PROMPTS[3]]):
        assert_same_run(run, lw.analyze(model, prompt, progress=False))


def test_no_logits_are_made_until_asked_and_then_of_the_positions_asked(model):
    """analyze stops the forward pass before the unembedding ([T, V] logits are large at length),
    and so does analyze_many: its runs keep their final-normed residuals [T, d] and make their top
    predictions from them when first asked; an aggregate unembeds just the positions it lines up,
    for all its runs at once. All equal the model's own."""
    from lmtt_widget import vocab as V

    head, rows = model._module.get_output_embeddings(), []
    hook = head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[:-1].numel()))
    try:
        run = lw.analyze(model, IOI, progress=False)
        assert rows == []
        own = model._module(run.input_ids[None]).logits[0].float()  # one unembedding of every position: the user's
        assert rows == [run.n_tokens]
        torch.testing.assert_close(run.logits, own, rtol=1e-5, atol=1e-5)
        rows.clear()
        runs = lw.analyze_many(model, [IOI, PROMPTS[1], PROMPTS[4], IOI_CORRUPTED], padding="left")
        assert rows == [] and all(r._final_normed.shape == (r.n_tokens, r.shape.d_model) for r in runs)
        probs, top = runs[0].top_predictions(5)
        assert rows == [run.n_tokens] and runs[0]._top[0].shape == (run.n_tokens, 10)
        runs[0].top_tokens(-1, k=3)
        assert rows == [run.n_tokens]  # kept: [T, 10], not the [T, V] logits
        rows.clear()
        agg = lw.aggregate(runs[1:])
        assert rows == [3 * agg.n_tokens]  # one unembedding of the lined-up positions of the three runs
        alone = lw.aggregate([lw.analyze(model, p, progress=False) for p in (PROMPTS[1], PROMPTS[4], IOI_CORRUPTED)])
    finally:
        hook.remove()
    shown = lw.analyze(model, PROMPTS[2], progress=False)
    kept = shown.top_predictions(5)  # what the widget shows of every run: [T, 10] kept, not the [T, V] logits
    assert "logits" not in shown.__dict__ and shown._top[1].shape == (shown.n_tokens, 10)
    assert torch.equal(kept[1], V.top_of_logits(shown.logits, 5)[1])
    torch.testing.assert_close(kept[0], V.top_of_logits(shown.logits, 5)[0], rtol=1e-5, atol=1e-6)
    expected = own.softmax(-1).topk(5)
    assert torch.equal(top, expected.indices)
    torch.testing.assert_close(probs, expected.values, rtol=1e-5, atol=1e-6)
    (p1, i1), (p2, i2) = agg.top_predictions(5), alone.top_predictions(5)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_top_predictions_order_equal_logits_by_id_so_that_every_k_agrees():
    from lmtt_widget import vocab as V

    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [5.0, 4.0, 4.0, 4.0, 0.0]])
    for k in range(1, 6):
        probs, ids = V.top_of_logits(logits, k)
        assert ids.tolist() == [[1, 2, 4, 3, 0][:k], [0, 1, 2, 3, 4][:k]]
        torch.testing.assert_close(probs, logits.softmax(-1).gather(-1, ids), rtol=0, atol=0)
    bf16 = (torch.randn(64, 5000, generator=torch.Generator().manual_seed(0)) * 3).bfloat16().float()  # many ties
    probs, ids = V.top_of_logits(bf16, 10)
    assert torch.equal(probs, bf16.softmax(-1).topk(10).values)
    assert all(torch.equal(V.top_of_logits(bf16, k)[1], ids[:, :k]) for k in range(1, 10))


def test_a_datasets_column_is_an_iterable_of_prompts_and_a_whole_dataset_is_refused_saying_so(model):
    import datasets

    dataset = datasets.Dataset.from_dict({"text": PROMPTS[:3], "label": [0, 1, 0]})
    assert [run.prompt for run in lw.analyze_many(model, dataset["text"])] == PROMPTS[:3]
    ids = dataset.map(lambda row: model.tokenizer(row["text"]))
    assert [run.prompt for run in lw.analyze_many(model, ids["input_ids"])] == PROMPTS[:3]
    assert [run.prompt for run in lw.analyze_many(model, ids.with_format("torch")["input_ids"])] == PROMPTS[:3]
    with pytest.raises(lw.LmttError, match=r"a whole dataset \(columns \['text', 'label'\]\): pass one column"):
        lw.analyze_many(model, dataset)
    row = r"prompt 0: .*got dict with keys \['text', 'label'\] \(a dataset's row\? pass a column"
    with pytest.raises(lw.LmttError, match=row):
        lw.analyze_many(model, iter(dataset))


def test_a_bad_prompt_late_in_a_stream_keeps_the_runs_before_it(model, monkeypatch):
    from lmtt_widget import many

    monkeypatch.setattr(many, "SORTED_BATCHES", 2)  # windows of 4 prompts at batch_size 2
    prompts = [PROMPTS[n % 4] for n in range(6)] + [IOI * 20] + PROMPTS  # prompt 6 is longer than the context
    with pytest.raises(lw.LmttError, match=r"prompt 6: prompt is \d+ tokens long") as refused:
        lw.analyze_many(model, (p for p in prompts), batch_size=2)
    runs = refused.value.runs
    assert [run.prompt for run in runs] == prompts[:6]  # the window of the bad prompt analysed up to it
    assert_same_run(runs[5], lw.analyze(model, prompts[5], progress=False))
    assert "the results of the first 6 prompts are in this exception's .runs" in refused.value.__notes__[0]


def test_an_interrupt_keeps_the_runs_done_in_the_prompts_order(model, monkeypatch):
    from lmtt_widget import many

    monkeypatch.setattr(many, "SORTED_BATCHES", 2)
    analyze_batch, calls = many._analyze_batch, []

    def interrupted(*args):
        calls.append(len(calls))
        if len(calls) == 4:  # the second batch of the second window: the kernel is interrupted
            raise KeyboardInterrupt
        return analyze_batch(*args)
    monkeypatch.setattr(many, "_analyze_batch", interrupted)
    prompts = PROMPTS[3:] + PROMPTS + PROMPTS  # window 2: prompts 4..7, the shortest two done first
    with pytest.raises(KeyboardInterrupt) as stopped:
        lw.analyze_many(model, prompts, batch_size=2)
    runs = stopped.value.runs
    done = sorted(range(4, 8), key=lambda n: len(model.tokenizer(prompts[n])["input_ids"]))[:2]
    assert [run.prompt for run in runs] == prompts[:4 + (4 in done) * (1 + (5 in done))]


def test_columns_of_tables_and_arrays_of_text_are_prompts_whole_tables_are_refused(model):
    import datasets
    import pandas as pd

    table = pd.DataFrame({"text": PROMPTS[:3], "label": [0, 1, 0]})
    for column in (table["text"], table["text"].to_numpy(), np.array(PROMPTS[:3])):
        assert [run.prompt for run in lw.analyze_many(model, column)] == PROMPTS[:3]
    with pytest.raises(lw.LmttError, match=r"a whole table \(columns \['text', 'label'\]\): pass one column"):
        lw.analyze_many(model, table)
    stream = datasets.IterableDataset.from_generator(lambda: iter([{"text": IOI}]))  # streaming=True gives these
    with pytest.raises(lw.LmttError, match=r"a whole dataset.*: pass one column of prompts"):
        lw.analyze_many(model, stream)


def test_a_failure_of_the_iterable_keeps_the_runs_of_the_prompts_read_before_it(model):
    def stream():
        yield from PROMPTS[:3]
        raise OSError("the connection to the dataset server was lost")
    with pytest.raises(OSError, match="connection") as failed:
        lw.analyze_many(model, stream(), batch_size=2)
    assert [run.prompt for run in failed.value.runs] == PROMPTS[:3]


@pytest.mark.parametrize("prompts, message", [
    (torch.tensor([1, 2, 3]), r"prompts is one prompt's token ids \(a 1-D Tensor of integers\): for one prompt"),
    ([1, 2, 3], r"prompt 0: .* \(a single token id: is this one prompt's ids\? use lw.analyze"),
])
def test_one_prompts_ids_given_as_many_prompts_are_refused_saying_what_they_look_like(model, prompts, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.analyze_many(model, prompts)


@pytest.mark.parametrize("prompts, options, message", [
    (IOI, {}, r"prompts must be a list .* got str; for one prompt use lw.analyze"),
    (3, {}, r"prompts must be a list .* got int"),
    ({"text": [IOI]}, {}, r"got dict"),
    ([IOI, "", "Mary"], {}, r"prompt 1: prompt is empty"),
    ([IOI, [1, 999]], {}, r"prompt 1: token id 999 .* out of the vocabulary"),
    ([IOI], {"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ([IOI], {"padding": "middle"}, r"padding must be 'right' or 'left', got 'middle'"),
    ([IOI], {"floor": 2}, r"floor must be a number in \[0, 1\)"),
])
def test_bad_prompts_and_options_are_refused_by_name(model, prompts, options, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.analyze_many(model, prompts, **options)


def test_runs_of_a_stream_keep_only_their_shares_and_final_normed_residuals(model, llama_run):
    compact = lw.analyze_many(model, [IOI])[0]
    assert compact._capture is None and compact.holds_activations is False
    kept = sum(shares.nbytes for shares in compact.layers) + compact._final_normed.nbytes
    capture = llama_run.capture
    tensors = capture.resid + capture.attn_out + capture.ffn_out + capture.values
    full = sum(t.numel() * t.element_size() for t in tensors)
    assert kept < full
    (token, probability), expected = compact.top_tokens(k=1)[0], llama_run.top_tokens(k=1)[0]
    assert token == expected[0] and probability == pytest.approx(expected[1], rel=1e-5)
    assert compact._capture is None  # the kept top predictions answered
    compact.residual(0, 0)  # a readout that needs activations: traced again, then kept
    assert compact.holds_activations


def test_a_copy_of_a_run_keeps_what_it_traces_to_itself_its_clean_runs_too(model, llama_run):
    import copy

    run = lw.analyze_many(model, [IOI])[0]
    ablated, _ = run.intervene([("head", 0, 1)])
    assert ablated.clean is run and not run.holds_activations
    shown = copy.copy(ablated)
    torch.testing.assert_close(shown.clean.residual(1, 2), llama_run.residual(1, 2))  # traced on the copy's clean run
    assert shown.clean.holds_activations and not run.holds_activations
    alone = copy.copy(run)
    alone.neuron_activations(1)
    assert alone.holds_activations and not run.holds_activations and run._neuron_cache == {}


def test_a_progress_bar_counts_the_prompts(model, monkeypatch):
    from lmtt_widget import many
    from lmtt_widget.progress import progress_counter

    bars = []

    def counted(**options):
        bars.append(progress_counter(**options))
        return bars[-1]
    monkeypatch.setattr(many, "progress_counter", counted)
    lw.analyze_many(model, PROMPTS, batch_size=2, progress=True)
    lw.analyze_many(model, (p for p in PROMPTS[:3]), progress=True)  # a generator: counted without a total
    lw.analyze_many(model, PROMPTS[:2], progress=False)
    (listed, generated, silent) = bars
    assert "tqdm" in type(listed).__name__ and listed.desc.startswith("prompts")
    assert (listed.total, listed.n) == (5, 5) and (generated.total, generated.n) == (None, 3)
    assert not hasattr(silent, "n")  # no bar at all


@pytest.mark.parametrize("padding", ["right", "left"])
def test_compact_shares_in_batches_through_the_simulated_remote_path(padding):
    model = tiny.load("gpt_neox")
    many = lw.analyze_compact_many(model, PROMPTS, remote="local", batch_size=3, padding=padding, floor=0.01)
    for shares, prompt in zip(many, PROMPTS):
        alone = lw.analyze_compact(model, prompt, floor=0.01)
        assert shares.tokens == alone.tokens and shares.floor == alone.floor
        for mine, theirs in zip(shares.layers, alone.layers):
            torch.testing.assert_close(mine.dense(), theirs.dense(), rtol=0, atol=1e-5)
            torch.testing.assert_close(mine.ffn, theirs.ffn, rtol=0, atol=1e-5)
        assert [t for t, _ in shares.top_tokens(k=3)] == [t for t, _ in alone.top_tokens(k=3)]
        assert shares.payload_bytes > 0


# -- 4. the model's own continuation --------------------------------------------------------------

def test_the_greedy_continuation_is_transformers_own_and_the_whole_text_is_analysed(model):
    prompt = "When Mary and John went to the store"
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    expected = model._module.generate(ids, max_new_tokens=9, do_sample=False, pad_token_id=0)[0]
    run = lw.generate(model, prompt, max_new_tokens=9)
    assert run.input_ids.tolist() == expected.tolist()
    assert run.generated == range(ids.shape[1], len(expected))
    assert run.prompt == model.tokenizer.decode(expected)
    alone = lw.analyze(model, expected, progress=False)
    torch.testing.assert_close(run.attention_contributions(1)[0], alone.attention_contributions(1)[0])
    for position in run.generated:  # every generated token's routes can be read
        assert run.graph(token=position, threshold=0.02).number_of_edges() > 0


def test_generate_options_go_to_transformers(model):
    prompt = "The capital of France is"
    short = lw.generate(model, prompt, max_new_tokens=6, min_new_tokens=6, eos_token_id=None)
    assert len(short.generated) == 6
    beams = lw.generate(model, prompt, max_new_tokens=4, num_beams=2)
    ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    expected = model._module.generate(ids, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)[0]
    assert beams.input_ids.tolist() == expected.tolist()


def test_generate_prepends_or_drops_bos_as_analyze_does(model):
    prompt = "The capital of France is"
    bos = model.tokenizer.bos_token_id
    ids = model.tokenizer(prompt)["input_ids"]
    assert ids[0] != bos  # this tokenizer adds none by itself
    with_bos = lw.generate(model, prompt, max_new_tokens=4, prepend_bos=True)
    given = torch.tensor([[bos] + ids])  # BOS is this tokenizer's pad token too: the mask says it is read
    expected = model._module.generate(given, attention_mask=torch.ones_like(given), max_new_tokens=4, do_sample=False,
                                      pad_token_id=0)[0]
    assert with_bos.input_ids.tolist() == expected.tolist()
    assert with_bos.input_ids[:len(ids) + 1].tolist() == lw.analyze(model, prompt, prepend_bos=True).input_ids.tolist()
    assert with_bos.generated.start == len(ids) + 1
    without = lw.generate(model, [bos] + ids, max_new_tokens=4, prepend_bos=False)
    assert without.input_ids[:len(ids)].tolist() == ids and without.generated.start == len(ids)
    assert lw.generate(model, [bos] + ids, max_new_tokens=4).input_ids[:len(ids) + 1].tolist() == [bos] + ids


def test_a_chat_prompt_keeps_or_drops_the_templates_bos():
    tokenizer = copy.deepcopy(tiny.tokenizer())
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}Q: {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} A:{% endif %}")
    chat_model = lw.load_model(tiny.hf_model("llama"), tokenizer=tokenizer)
    as_templated = lw.generate(chat_model, "Hello", max_new_tokens=2, chat=True)
    assert as_templated.input_ids[0] == tokenizer.bos_token_id
    dropped = lw.generate(chat_model, "Hello", max_new_tokens=2, chat=True, prepend_bos=False)
    n_prompt = as_templated.generated.start
    assert dropped.input_ids[:n_prompt - 1].tolist() == as_templated.input_ids[1:n_prompt].tolist()
    assert dropped.generated.start == n_prompt - 1

def test_generating_leaves_the_users_model_as_it_was(model):
    own = model._module.config._attn_implementation
    lw.generate(model, "Hello world", max_new_tokens=3)
    assert model._module.config._attn_implementation == own


@pytest.mark.parametrize("call, message", [
    (lambda m: lw.generate(m, "Hello", max_new_tokens=0), r"max_new_tokens must be a positive integer, got 0"),
    (lambda m: lw.generate(m, "Mary and John " * 20, max_new_tokens=30), r"with 30 new tokens it would pass the 64"),
    (lambda m: lw.generate(m, "Hello", chat=True), r"no chat template, which chat=True needs"),
    (lambda m: lw.generate(m, [1, 2], chat=True), r"chat=True takes the user's message as a string, got list"),
    (lambda m: lw.generate(m, "Hello", num_return_sequences=2, num_beams=2), r"gave 2 continuations"),
    (lambda m: lw.generate(m, "Hello", max_new_tokens=2, temprature=0.5),
     r"transformers' generate refused the options \['temprature'\]: .*not used by the model"),
    (lambda m: lw.generate(m, "Hello", max_new_tokens=2, do_sample=True, temperature=-1.0),
     r"transformers' generate refused the options \['do_sample', 'temperature'\]: .*temperature"),
])
def test_bad_generate_requests_are_refused(model, call, message):
    with pytest.raises(lw.LmttError, match=message):
        call(model)


def test_a_saved_continuation_keeps_its_generated_positions(model, tmp_path):
    run = lw.generate(model, "Hello world", max_new_tokens=4)
    assert lw.load_run(run.to_file(tmp_path / "g.lmtt")).generated == run.generated


@pytest.mark.demo
def test_the_demo_models_chat_answer_is_its_own_greedy_answer(demo_model):
    message = "What is the capital of France?"
    run = lw.generate(demo_model, message, max_new_tokens=10, chat=True)
    tokenizer = demo_model.tokenizer
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    expected = demo_model._module.generate(ids, max_new_tokens=10, do_sample=False)[0]
    assert run.input_ids.tolist() == expected.tolist()
    assert run.prompt.startswith("<|im_start|>") and message in run.prompt
    assert " Paris" in [run.tokens[i] for i in run.generated]


# -- 3. routes over a dataset ---------------------------------------------------------------------

IOI_VARIANTS = [f"When {a} and {b} went to the store, {b} gave a drink to" for a, b in
       [("Mary", "John"), ("John", "Mary"), ("Mary and Bob", "Tom"), ("Tom", "Alice")]]


@pytest.fixture(scope="module")
def ioi_runs(model):
    return lw.analyze_many(model, IOI_VARIANTS)


def aligned_dense(run, layer, positions):
    """[n, n, H]: a run's shares between the given positions (in that order)."""
    return run.layers[layer].dense()[positions][:, positions]


def test_aggregating_from_the_end_averages_the_shares_of_the_last_tokens(ioi_runs):
    agg = lw.aggregate(ioi_runs)
    n = min(run.n_tokens for run in ioi_runs)
    assert agg.n_tokens == n and agg.tokens[-1] == " to"
    assert any(name.startswith("[-") for name in agg.tokens)  # names differ there from prompt to prompt
    ends = [list(range(run.n_tokens - n, run.n_tokens)) for run in ioi_runs]
    for layer in range(agg.shape.n_layers):
        stack = torch.stack([aligned_dense(run, layer, at) for run, at in zip(ioi_runs, ends)])
        torch.testing.assert_close(agg.layers[layer].dense(), stack.mean(0))
        ffn = torch.stack([run.layers[layer].ffn[at] for run, at in zip(ioi_runs, ends)])
        torch.testing.assert_close(agg.layers[layer].ffn, ffn.mean(0))
        torch.testing.assert_close(agg.spread[layer].ffn, ffn.std(0, correction=0))
        edge_std = stack.sum(-1).std(0, correction=0)
        edges = agg.layers[layer].edges
        torch.testing.assert_close(agg.spread[layer].edges, edge_std[edges[:, 0], edges[:, 1]], atol=1e-6, rtol=1e-4)


def test_named_positions_line_up_roles_and_the_graph_says_how_many_prompts_hold_each_edge(ioi_runs):
    names = [{"IO": 1, "S1": 3, "S2": -5, "END": -1}, {"IO": 1, "S1": 3, "S2": -5, "END": -1},
             {"IO": 1, "S1": 5, "S2": -5, "END": -1}, {"IO": 1, "S1": 3, "S2": -5, "END": -1}]
    agg = lw.aggregate(ioi_runs, names)
    assert agg.tokens == ["IO", "S1", "S2", "END"]
    at = [[run.position(p) for p in n.values()] for run, n in zip(ioi_runs, names)]
    stack = torch.stack([aligned_dense(run, 1, a) for run, a in zip(ioi_runs, at)])
    torch.testing.assert_close(agg.layers[1].dense(), stack.mean(0))
    graph = agg.graph(threshold=0.01, renormalize=False)
    attention = [(u, v, d) for u, v, k, d in graph.edges(keys=True, data=True) if k == "attention"]
    assert attention
    for u, v, data in attention:
        assert data["weight"] == pytest.approx(data["share"])
        expected = [r for r, (run, a) in enumerate(zip(ioi_runs, at))
                    if run.graph(a[-1], threshold=0.01, renormalize=False).has_edge(
                        (u[0], u[1], a[u[2]]), (v[0], v[1], a[v[2]]), "attention")]
        assert data["prompts"] == expected and data["support"] == len(expected) / len(ioi_runs)
    table = agg.edges(threshold=0.01, renormalize=False)
    assert {"share", "std", "support"} <= set(table.columns) and len(table) == graph.number_of_edges()


def test_the_aggregate_of_one_run_is_that_runs_routes(llama_run):
    agg = lw.aggregate([llama_run])
    got, expected = agg.graph(threshold=0.02), llama_run.graph(threshold=0.02)
    assert set(got.edges(keys=True)) == set(expected.edges(keys=True))
    for u, v, key, data in expected.edges(keys=True, data=True):
        assert got.edges[u, v, key]["weight"] == pytest.approx(data["weight"], abs=1e-6)
        assert got.edges[u, v, key]["support"] == 1.0 and got.edges[u, v, key]["std"] == pytest.approx(0, abs=1e-6)


def test_the_prompts_behind_an_edge_are_listed_with_their_own_shares(ioi_runs):
    agg = lw.aggregate(ioi_runs)
    graph = agg.graph(threshold=0.02)
    u, v, data = next((u, v, d) for u, v, k, d in graph.edges(keys=True, data=True) if k == "attention")
    selection = {"kind": "attention", "layer": v[1], "source": u[2], "target": v[2]}
    rows = agg.rows(selection, agg.n_tokens - 1, 0.02, True)
    assert sorted(row["index"] for row in rows) == list(range(len(ioi_runs)))
    assert sorted(row["index"] for row in rows if row["in_routes"]) == data["prompts"]
    for row in rows:
        run, at = ioi_runs[row["index"]], agg.index[row["index"]]
        assert row["share"] == pytest.approx(float(run.edge_contributions(v[1], int(at[v[2]]), int(at[u[2]])).sum()))
        assert row["prompt"] == run.prompt
    assert sum(row["share"] for row in rows) / len(rows) == pytest.approx(data["share"], abs=1e-6)


@pytest.mark.parametrize("positions, message", [
    ([{"IO": 1}], r"a list of one dict per run \(4\), got a list of 1"),
    ({"IO": 1}, r"a list of one dict per run \(4\), got dict"),
    ([{"IO": 1, "S": 3}] * 3 + [{"S2": 3, "IO": 1}],
     r"positions\[3\] must name \['IO', 'S'\], in any order .*missing \['S'\], not in positions\[0\] \['S2'\]"),
    ([{"IO": 1, "S": 3}] * 3 + [{"IO": 3, "S": 3}], r"in prompt 3, 'IO' and 'S' are both at position 3"),
    ([{"IO": 1, "S": 99}] * 4, r"positions\[0\]\['S'\] 99 is out of range"),
    ([{}] * 4, r"positions\[0\] must be a dict of names"),
])
def test_bad_positions_are_refused_saying_which(ioi_runs, positions, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.aggregate(ioi_runs, positions)


def test_runs_of_different_models_or_things_that_are_not_runs_are_refused(ioi_runs):
    other = lw.analyze(tiny.load("gpt2"), IOI, progress=False)
    with pytest.raises(lw.LmttError, match="run 1 is of another model"):
        lw.aggregate([ioi_runs[0], other])
    with pytest.raises(lw.LmttError, match="item 1 is str"):
        lw.aggregate([ioi_runs[0], "text"])
    with pytest.raises(lw.LmttError, match="at least one run"):
        lw.aggregate([])


@pytest.mark.parametrize("family", ["gemma2", "mixtral", "falcon_new"])
def test_compact_batches_of_families_with_post_norms_experts_or_their_own_attention(family):
    model = tiny.load(family)
    many = lw.analyze_compact_many(model, PROMPTS[:3], remote="local", padding="left", floor=0.0)
    for shares, prompt in zip(many, PROMPTS):
        alone = lw.analyze(model, prompt, progress=False)
        for mine, theirs in zip(shares.layers, alone.layers):
            torch.testing.assert_close(mine.dense(), theirs.dense(), rtol=0, atol=1e-5)
            torch.testing.assert_close(mine.ffn, theirs.ffn, rtol=0, atol=1e-5)
        assert [t for t, _ in shares.top_tokens(k=3)] == [t for t, _ in alone.top_tokens(k=3)]
