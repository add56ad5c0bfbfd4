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

IOI = "When Mary and John went to the store, John gave a drink to"  # the prompt most tests analyse
IOI_CORRUPTED = IOI.replace(" John gave", " Mary gave")  # as long in tokens, the other name giving: to patch from
CORPUS = [  # what the tokenizer is trained on
    IOI + " Mary.",
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
    if dtype == torch.float64 and getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
        model.set_experts_implementation("eager")  # the grouped matrix product has no float64 kernel
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


# -- the families added later (kept apart from FAMILIES, whose tests assume none of their features) ----------
# Larger weights than transformers' default initialisation, so that attention is far from uniform and
# soft-caps, sliding windows and clamps change what the model computes; every norm's weight is spread too.
WIDE = dict(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, pad_token_id=0, bos_token_id=0,
            eos_token_id=0)
GEMMA = dict(WIDE, head_dim=8, query_pre_attn_scalar=8, sliding_window=4, attention_bias=True,
             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
MOE = dict(WIDE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


def _falcon(**kwargs):
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32,
                                          num_hidden_layers=3, num_attention_heads=4, bias=True,
                                          initializer_range=0.2, bos_token_id=0, eos_token_id=0, **kwargs))


def _gemma3_multimodal():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=8, patch_size=4)
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=Gemma3TextConfig(**GEMMA), vision_config=vision,
                                                       mm_tokens_per_image=4, initializer_range=0.2))


def _new_config(model: str, config: str, **kwargs):
    import transformers

    return lambda: getattr(transformers, model)(getattr(transformers, config)(**kwargs))


NEW_CONFIGS = {
    "gemma2": _new_config("Gemma2ForCausalLM", "Gemma2Config", **GEMMA, attn_logit_softcapping=2.0,
                          final_logit_softcapping=1.5),
    "gemma3_text": _new_config("Gemma3ForCausalLM", "Gemma3TextConfig", **GEMMA,
                               final_logit_softcapping=1.5),
    "gemma3": _gemma3_multimodal,
    "phi3": _new_config("Phi3ForCausalLM", "Phi3Config", **WIDE),
    "olmo2": _new_config("Olmo2ForCausalLM", "Olmo2Config", **WIDE, attention_bias=True),
    "olmo3": _new_config("Olmo3ForCausalLM", "Olmo3Config", **WIDE, sliding_window=4,
                         layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "gptj": _new_config("GPTJForCausalLM", "GPTJConfig", vocab_size=VOCAB, n_positions=64, n_embd=32,
                        n_layer=3, n_head=4, rotary_dim=4, initializer_range=0.2, bos_token_id=0, eos_token_id=0),
    "falcon": lambda: _falcon(),  # parallel attention, multi-query, rotary, one norm
    "falcon_new": lambda: _falcon(new_decoder_architecture=True, num_kv_heads=2),  # grouped KV, two norms
    "falcon_new_one_norm": lambda: _falcon(new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1),
    "falcon_alibi": lambda: _falcon(parallel_attn=False, alibi=True, multi_query=False),  # sequential, as falcon-rw
    "cohere": _new_config("CohereForCausalLM", "CohereConfig", **WIDE, attention_bias=True),
    "cohere2": _new_config("Cohere2ForCausalLM", "Cohere2Config", **WIDE, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "mixtral": _new_config("MixtralForCausalLM", "MixtralConfig",
                           **{**WIDE, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": _new_config("Qwen2MoeForCausalLM", "Qwen2MoeConfig", **MOE,
                             shared_expert_intermediate_size=24, mlp_only_layers=[1]),
    "qwen3_moe": _new_config("Qwen3MoeForCausalLM", "Qwen3MoeConfig", **MOE, norm_topk_prob=True),
    "olmoe": _new_config("OlmoeForCausalLM", "OlmoeConfig",
                         **{**WIDE, "num_experts": 4, "num_experts_per_tok": 2}, clip_qkv=0.5),
}
NEW_FAMILIES = list(NEW_CONFIGS)
CONFIGS.update({name: lambda make=make: _spread_norms(make()) for name, make in NEW_CONFIGS.items()})


def _spread_norms(model):
    """Norms start at weight 1 (Gemma's at 0, meaning 1): spread them, so that a norm's weight matters."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=generator))
    return model
