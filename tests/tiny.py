"""Tiny random-initialised models of every supported family, built from transformers configs."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

import lmtt_widget

CORPUS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! Tokens, spaces and\nnewlines.",
]
VOCAB = 320


@functools.cache
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory (no download)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64)
CONFIGS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, n_positions=64,
                                               n_embd=32, n_layer=3, n_head=4)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                  num_attention_heads=4, num_key_value_heads=2)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, hidden_size=32, intermediate_size=48,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=1)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "smollm3": lambda: SmolLM3ForCausalLM(SmolLM3Config(**COMMON, hidden_size=32, intermediate_size=48,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2, pad_token_id=0, bos_token_id=0,
                                                        eos_token_id=0)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**COMMON, hidden_size=32, intermediate_size=48,
                                                         num_hidden_layers=3, num_attention_heads=4)),
    "gpt_neox_sequential": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**COMMON, hidden_size=32, intermediate_size=48,
                                                                    num_hidden_layers=2, num_attention_heads=4,
                                                                    use_parallel_residual=False)),
    "opt": lambda: OPTForCausalLM(OPTConfig(**COMMON, hidden_size=32, ffn_dim=48, num_hidden_layers=3,
                                            num_attention_heads=4, word_embed_proj_dim=32)),
}
FAMILIES = list(CONFIGS)


def hf_model(name: str, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = CONFIGS[name]().to(dtype).eval()
    _spread_biases(model, seed)
    return model


def _spread_biases(model, seed: int) -> None:
    """Random init leaves biases at 0; give them values so that bias handling is tested too."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def load(name: str, seed: int = 0, dtype=torch.float32):
    return lmtt_widget.load_model(hf_model(name, seed, dtype), tokenizer=tokenizer())
