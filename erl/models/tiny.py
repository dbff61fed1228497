"""A tiny byte-level chat tokenizer and a random Llama built from a config.

Nothing is downloaded: tests and smoke runs build both in milliseconds. The tokenizer
speaks ChatML (the template SmolLM2 and Qwen use), tool schemas and tool calls included,
so multi-turn and tool-calling code paths are exercised exactly as with a real model.
"""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_KEYS = ("hidden", "layers", "heads", "max_positions")  # the `model.tiny:` settings

# ChatML with Qwen-style tools: schemas in the system turn, calls as <tool_call> JSON,
# results as <tool_response> inside a user turn.
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "To call a function, reply with <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>"
    "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% if not tools %}"
    "<|im_start|>system\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "\n<tool_call>\n{\"name\": \"{{ fn['name'] }}\", \"arguments\": "
    "{{ fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer() -> Any:
    """Byte-level BPE with no merges: 256 byte tokens + 3 specials; eos = <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, additional_special_tokens=["<|im_start|>"],
                                  padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHATML_TEMPLATE
    tok.name_or_path = "erl-tiny-bytes"
    return tok


def check_tiny_sizes(sizes: dict) -> dict:
    """The `model.tiny:` section: known keys, integers >= 1, hidden divisible by heads."""
    from erl.core.config import ConfigError, check_keys

    sizes = check_keys("model.tiny", sizes, TINY_KEYS)
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.tiny.{key} must be an integer >= 1, got {value!r}")
    hidden, heads = sizes.get("hidden", 64), sizes.get("heads", 4)
    if hidden % heads:
        raise ConfigError(f"model.tiny.hidden ({hidden}) must be divisible by model.tiny.heads ({heads})")
    return sizes


def build_tiny_model(tokenizer: Any, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                     max_positions: int = 4096) -> Any:
    """A randomly initialised Llama sized for the tokenizer (seeded: same seed, same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    check_tiny_sizes({"hidden": hidden, "layers": layers, "heads": heads, "max_positions": max_positions})
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model
