"""Bad input gets a clear LmttError that names the problem and the valid range."""

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, GPT2Config, GPT2Model

import lmtt_widget as lw
import tiny


@pytest.fixture(scope="module")
def run(model):
    return lw.analyze(model, "When Mary and John went")


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt(model, prompt):
    with pytest.raises(lw.LmttError, match="prompt is empty"):
        lw.analyze(model, prompt)


def test_prompt_longer_than_the_context(model):
    with pytest.raises(lw.LmttError, match=r"tokens long; this model reads at most 64"):
        lw.analyze(model, "Mary and John " * 60)


def test_unknown_model_id_and_missing_paths():
    with pytest.raises(lw.LmttError, match="could not load a causal LM from 'no-such-org/no-such-model'"):
        lw.load_model("no-such-org/no-such-model")
    with pytest.raises(lw.LmttError, match="model directory not found"):
        lw.load_model("/no/such/dir")
    with pytest.raises(lw.LmttError, match="GGUF file not found"):
        lw.load_model("/no/such/model.gguf")


def test_bad_dtype_and_distance(model):
    with pytest.raises(lw.LmttError, match="dtype must be one of"):
        lw.load_model(tiny.hf_model("llama"), tokenizer=tiny.tokenizer(), dtype="int3")
    with pytest.raises(lw.LmttError, match="distance must be one of"):
        lw.analyze(model, "Mary", distance="cosine")


@pytest.mark.parametrize("call, message", [
    (lambda r: r.attention_contributions(3), r"layer 3 is out of range: valid are 0..2"),
    (lambda r: r.ffn_contributions(-4), r"layer -4 is out of range"),
    (lambda r: r.top_tokens(position=99), r"position 99 is out of range: valid are 0..\d+"),
    (lambda r: r.head_logits(0, 4, -1), r"head 4 is out of range: valid are 0..3"),
    (lambda r: r.neuron_logits(0, 48, -1), r"neuron 48 is out of range: valid are 0..47"),
    (lambda r: r.logit_lens(0, 0, stage="attn"), r"stage must be 'embed', 'mid' or 'post'"),
    (lambda r: r.block_logits(0, 0, block="mlp"), r"block must be 'attention' or 'ffn'"),
    (lambda r: r.graph(threshold=0), r"threshold must be a number in \(0, 1\)"),
    (lambda r: r.graph(threshold=1.5), r"threshold must be a number in \(0, 1\)"),
    (lambda r: r.full_graph(threshold=float("nan")), r"threshold must be a number in \(0, 1\)"),
    (lambda r: r.graph(token=1.5), r"position must be an integer"),
])
def test_out_of_range_requests(run, call, message):
    with pytest.raises(lw.LmttError, match=message):
        call(run)


def test_a_model_without_a_causal_lm_head():
    with pytest.raises(lw.LmttError, match="has no causal-LM head"):
        lw.load_model(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=320)), tokenizer=tiny.tokenizer())


def test_an_unsupported_family_names_the_supported_ones():
    bloom = BloomForCausalLM(BloomConfig(vocab_size=320, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(lw.LmttError, match=r"model type 'bloom' is not supported. Supported model types: gpt2, "
                                           r"llama.*gemma2.*falcon.*mixtral.*olmoe.*To add a family, write a Family"):
        lw.load_model(bloom, tokenizer=tiny.tokenizer())


def test_a_loaded_model_needs_its_tokenizer():
    with pytest.raises(lw.LmttError, match="no tokenizer"):
        lw.load_model(tiny.hf_model("gpt2"))


def test_half_precision_computes_shares_in_float32():
    run = lw.analyze(lw.load_model(tiny.hf_model("llama"), tokenizer=tiny.tokenizer(), dtype="bfloat16"),
                     "Mary and John")
    heads, residual = run.attention_contributions(0)
    assert heads.dtype == torch.float32 and not torch.isnan(heads).any()
    torch.testing.assert_close(heads.sum((1, 2)) + residual, torch.ones(run.n_tokens))


ENTRY_POINTS = {  # every public function that takes a model, called as a user would
    "lw.analyze": lambda m: lw.analyze(m, "Mary"),
    "lw.analyze_many": lambda m: lw.analyze_many(m, ["Mary"]),
    "lw.analyze_compact": lambda m: lw.analyze_compact(m, "Mary"),
    "lw.analyze_compact_many": lambda m: lw.analyze_compact_many(m, ["Mary"]),
    "lw.generate": lambda m: lw.generate(m, "Mary", max_new_tokens=2),
}


@pytest.mark.parametrize("where", ENTRY_POINTS)
@pytest.mark.parametrize("given, message", [
    (lambda model: tiny.hf_model("llama"), r"model must be what lw.load_model returns, got LlamaForCausalLM: "
                                           r"wrap it with lw.load_model\(model, tokenizer=...\)"),
    (lambda model: "gpt2", r"model must be what lw.load_model returns, got the string 'gpt2': "
                           r"load it with lw.load_model\('gpt2'\)"),
    (lambda model: None, r"model must be what lw.load_model returns, got None: load one with lw.load_model\(\)"),
    (lambda model: model.model, r"model must be what lw.load_model returns, got an nnsight model of LlamaModel "
                                r"without a tokenizer"),  # a part of the model
    (lambda model: 3, r"model must be what lw.load_model returns, got int"),
], ids=["transformers", "string", "None", "a part", "int"])
def test_a_model_not_from_load_model_is_refused_by_every_entry_point(model, where, given, message):
    with pytest.raises(lw.LmttError, match=rf"^{where}: {message}"):
        ENTRY_POINTS[where](given(model))


def test_load_run_refuses_a_model_not_from_load_model(model, tmp_path):
    path = lw.analyze(model, "Mary").to_file(tmp_path / "run.lmtt")
    with pytest.raises(lw.LmttError, match=r"^lw.load_run: model must be what lw.load_model returns, got "
                                           r"LlamaForCausalLM"):
        lw.load_run(path, model=tiny.hf_model("llama"))
    with pytest.raises(lw.LmttError, match=r"got the string 'gpt2'"):
        lw.load_run(path, model="gpt2")
    assert lw.load_run(path).model is None  # no model is still fine: the run without its vocabulary readouts
