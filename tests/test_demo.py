"""The offline demo model (SmolLM2-135M-Instruct): predictions and routes a researcher can check."""

import pytest
import torch

import lmtt_widget as lw
from lmtt_widget.models import cache_dir, demo_gguf_path

pytestmark = pytest.mark.demo


def test_ioi_predicts_mary_and_routes_read_mary_into_the_last_token(ioi_run):
    token, probability = ioi_run.top_tokens(k=1)[0]
    assert token == " Mary" and probability > 0.5
    mary = ioi_run.tokens.index(" Mary")
    last = ioi_run.n_tokens - 1
    g = ioi_run.graph()
    from_mary = [(u, v, d) for u, v, d in g.edges(data=True)
                 if d["kind"] == "attention" and u[2] == mary and v[2] == last]
    assert from_mary, "no attention edge from ' Mary' into the last token"
    strongest = max(from_mary, key=lambda e: e[2]["weight"])
    assert strongest[2]["weight"] > 0.2


def test_capital_of_france_is_paris(demo_model):
    run = lw.analyze(demo_model, "The capital of France is")
    assert run.top_tokens(k=1)[0][0] == " Paris"
    assert run.tokens == ["The", " capital", " of", " France", " is"]


def test_logit_lens_reaches_the_prediction_at_the_top(ioi_run):
    last = ioi_run.shape.n_layers - 1
    lens = ioi_run.logit_lens(last, -1, k=5)
    assert lens[0].token == " Mary" and lens[0].rank == 0
    assert lens[0].probability == pytest.approx(ioi_run.top_tokens(k=1)[0][1], rel=1e-4)
    early = ioi_run.logit_lens(0, -1, stage="mid", k=5)
    assert all(t.rank_change is not None for t in early)
    assert ioi_run.logit_lens(0, -1, stage="embed")[0].rank_change is None


def test_the_strongest_mary_head_promotes_mary(ioi_run):
    mary, last = ioi_run.tokens.index(" Mary"), ioi_run.n_tokens - 1
    heads, _ = ioi_run.attention_contributions(23)
    head = int(heads[last, mary].argmax())
    effect = ioi_run.head_logits(23, head, last, source=mary, k=10)
    assert " Mary" in [t for t, _ in effect.promoted]


def test_prepend_bos_is_the_users_choice(demo_model):
    plain = lw.analyze(demo_model, "The capital of France is")
    with_bos = lw.analyze(demo_model, "The capital of France is", prepend_bos=True)
    bos = demo_model.tokenizer.bos_token_id
    assert int(plain.input_ids[0]) != bos
    assert int(with_bos.input_ids[0]) == bos and torch.equal(with_bos.input_ids[1:], plain.input_ids)


def test_cached_directory_and_sdpa_model_give_the_same_shares(ioi_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = cache_dir() / "SmolLM2-135M-Instruct"
    sdpa = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    model = lw.load_model(sdpa, tokenizer=AutoTokenizer.from_pretrained(directory))
    run = lw.analyze(model, ioi_run.prompt)
    torch.testing.assert_close(run.attention_contributions(23)[0], ioi_run.attention_contributions(23)[0],
                               rtol=1e-4, atol=1e-5)
    assert lw.load_model(model) is model  # an nnsight model is taken as it is


def test_a_gguf_file_loads(ioi_run):
    model = lw.load_model(demo_gguf_path())
    run = lw.analyze(model, ioi_run.prompt)
    assert run.top_tokens(k=1)[0][0] == " Mary"
    torch.testing.assert_close(run.logits, ioi_run.logits, rtol=1e-4, atol=1e-4)


def test_a_directory_loads_with_dtype_and_device_map_passed_through(ioi_run):
    model = lw.load_model(cache_dir() / "SmolLM2-135M-Instruct", dtype="bfloat16", device_map="cpu")
    assert model._module.dtype == torch.bfloat16
    run = lw.analyze(model, ioi_run.prompt)
    assert run.top_tokens(k=1)[0][0] == " Mary"
    heads, residual = run.attention_contributions(23)
    assert heads.dtype == torch.float32
    torch.testing.assert_close(heads, ioi_run.attention_contributions(23)[0], atol=0.05, rtol=0)
