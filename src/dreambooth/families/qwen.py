"""Qwen language models as text encoders (Z-Image and FLUX.2 [klein]: Qwen3; Qwen-Image: Qwen2.5-VL): the tiny
models' tokenizer, trained here in code (byte-level BPE over the tiny models' prompt words, with Qwen's special tokens)
and given the chat template the pipelines apply, so no download is needed."""

from __future__ import annotations

import functools

from .t5 import WORDS

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3's chat template as the pipelines use it (one user message, a generation prompt); `enable_thinking=False`
# adds the empty thinking block Qwen3's own template writes then.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

# what the pipelines' prompt templates say around the prompt (Qwen-Image's system line), so it tokenizes in words
TEMPLATE_WORDS = """system user assistant describe the image by detailing color shape size texture quantity text
spatial relationships objects and background""".split()


@functools.cache
def tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer over the prompt words with Qwen's special tokens first (ids 0-4), as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    words = WORDS + TEMPLATE_WORDS
    sentences = [" ".join(words[i : i + 8]) for i in range(0, len(words), 4)]
    tokenizer.train_from_iterator(sentences * 4, trainer)
    return tokenizer.to_str()


def tiny_tokenizer(max_length: int = 512):
    """The tiny Qwen-style tokenizer: pads with <|endoftext|> on the right, as Qwen's do."""
    from tokenizers import Tokenizer
    from transformers import Qwen2TokenizerFast  # type: ignore[attr-defined]  # lazily exported

    return Qwen2TokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_qwen3(tokenizer, width: int, layers: int, seed: int):
    """A Qwen3 language model without its head (what Z-Image and FLUX.2 [klein] read hidden states of): `layers`
    layers of `width`, grouped-query attention (2 query heads, 1 key/value head), random weights (seeded)."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=width // 2,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return Qwen3Model(config)


def chat_prompts(tokenizer, prompts: list[str], thinking: bool) -> list[str]:
    """Each prompt as one user turn of the chat template, with the assistant's turn opened (and, without
    `thinking`, the empty thinking block Qwen3 writes then), as the Qwen3-encoder pipelines wrap them."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        for p in prompts
    ]
