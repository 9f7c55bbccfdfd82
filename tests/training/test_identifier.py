from dreambooth.families.clip import load_clip_tokenizer
from dreambooth.training.identifier import candidates, check_identifier, english_short_words, guess_identifier, tokenise


def test_real_vocabulary_tokenises_the_paper_prompt():
    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    ids = tok("a photo of sks dog").input_ids
    assert ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert tokenise(tok, "sks dog") == [("sks", [("sks", 48136)]), ("dog", [("dog", 1929)])]


def test_a_made_up_word_splits_into_several_tokens():
    tok = load_clip_tokenizer()
    ((_, pieces),) = tokenise(tok, "zwxqvk")
    assert len(pieces) > 1


def test_candidates_are_rare_short_single_tokens_and_not_english():
    tok = load_clip_tokenizer()
    found = candidates(tok, count=30, max_chars=3, min_id=35000, seed=1)
    assert len(found) == 30
    words = english_short_words()
    for word, token_id in found:
        assert token_id >= 35000 and 2 <= len(word) <= 3 and word.isalpha()
        assert word not in words
        assert tok(word, add_special_tokens=False).input_ids == [token_id]
    assert candidates(tok, count=30, seed=1) == found  # seeded
    assert candidates(tok, count=30, seed=2) != found


def test_guess_identifier():
    assert guess_identifier("a photo of sks dog", "a photo of a dog") == "sks"
    assert guess_identifier("a photo of zwx teapot") == "zwx"


def test_an_identifier_is_counted_as_it_tokenizes_inside_the_prompt(capsys):
    """Byte-level BPE (Qwen's) has ' sks' as one token and 'sks' alone as three: the prompt has the first."""
    from dreambooth.families.qwen import tiny_tokenizer

    qwen = tiny_tokenizer()
    assert len(tokenise(qwen, "sks")[0][1]) > 1 and tokenise(qwen, "sks", in_prompt=True)[0][1] == [
        ("sks", qwen(" sks").input_ids[0])
    ]
    check_identifier(qwen, "a photo of sks dog", "a photo of a dog")
    check_identifier(load_clip_tokenizer(), "a photo of sks dog", "a photo of a dog")
    assert capsys.readouterr().err == ""
    check_identifier(qwen, "a photo of zwxqvk dog", "a photo of a dog")
    assert "identifier 'zwxqvk' splits into" in capsys.readouterr().err
