"""The tiny Qwen-style tokenizer: built in code, its chat template renders as Qwen3's does for one user message."""

from dreambooth.families.qwen import tiny_tokenizer


def test_the_chat_template_renders_as_qwen3s_with_and_without_thinking():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "user", "content": "a photo of sks dog"}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert plain == "<|im_start|>user\na photo of sks dog<|im_end|>\n<|im_start|>assistant\n"
    quiet = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert quiet == plain + "<think>\n\n</think>\n\n"


def test_special_tokens_are_single_ids_and_padding_is_endoftext_on_the_right(tmp_path):
    tokenizer = tiny_tokenizer()
    ids = tokenizer("<|im_start|>user\na photo of sks dog<|im_end|>", padding="max_length", max_length=16)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tokenizer.pad_token_id == 0
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert len(tokenizer("a photo of sks dog")["input_ids"]) <= 8  # the prompt words are whole tokens
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a photo of sks dog")["input_ids"] == tokenizer("a photo of sks dog")["input_ids"]
    assert again.chat_template == tokenizer.chat_template
