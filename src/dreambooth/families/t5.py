"""T5 text encoders (FLUX.1, SD3): the tiny models' T5, whose tokenizer is trained here, in code (a unigram model over
a small word list), so no download is needed. Prompts are tokenized by `clip.tokenize` (any tokenizer, to its
`model_max_length`: `--max-sequence-length` for T5)."""

from __future__ import annotations

import functools

import torch

# Words the tiny models' prompts are made of (subjects, classes, contexts, styles): the tokenizer's training text.
WORDS = """a an the of in on at with and photo picture painting sketch drawing render sks ohwx dog cat teapot cube
sphere toy backpack vase boot sneaker clock candle robot bear duck glasses red green blue purple yellow white black
orange pink brown grey dotted striped plain snow beach grass street city forest desert water lake river mountain
sky night sunset table floor wall room kitchen field garden sand jungle cave moon space in front behind wearing
hat scarf sitting lying standing jumping running swimming floating style watercolor oil pencil cartoon close up
wide shot high quality detailed of""".split()


@functools.cache
def tiny_tokenizer_json() -> str:
    """A unigram tokenizer over WORDS with T5's special tokens (<pad> 0, </s> 1, <unk> 2), as JSON."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=256, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    sentences = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 4)]
    tokenizer.train_from_iterator(sentences * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer.to_str()


def tiny_tokenizer(max_length: int = 32):
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]  # lazily exported

    tokenizer = T5TokenizerFast(
        tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )
    return tokenizer


def tiny_encoder(tokenizer, width: int, seed: int):
    """A 2-layer T5 v1.1-style encoder (gated GELU) of `width`, random weights (seeded)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)
