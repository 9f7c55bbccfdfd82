import pytest
import torch

from dreambooth.cli import main
from dreambooth.families import family_of, text_encoders, tokenizers
from dreambooth.models import load_pipeline
from dreambooth.training import identifier_prior as P


@pytest.fixture(scope="module")
def tiny():
    pipe = load_pipeline("tiny")
    return pipe, family_of(pipe)


def give_a_prior(pipe, family, word: str, factor: float = 40) -> None:
    """Make `word` mean something to the tiny model's random text encoder: its embedding row, large."""
    tokenizer, encoder = tokenizers(pipe, family)[0], next(iter(text_encoders(pipe, family).values()))
    (token_id,) = tokenizer(word, add_special_tokens=False).input_ids
    with torch.no_grad():
        encoder.get_input_embeddings().weight[token_id] *= factor


def test_the_shift_is_zero_for_the_class_prompt_itself_and_grows_with_a_prior(tiny):
    pipe, family = tiny
    before = P.shifts(pipe, family, ["a", "sks", "blue"], "dog")
    assert before == {"a": 0.0, "sks": 0.0442, "blue": 0.0255}  # the tiny model's random encoder
    give_a_prior(pipe, family, "blue")
    assert P.shifts(pipe, family, ["blue"], "dog")["blue"] > 3 * before["blue"]


def test_sdxl_shifts_are_finite_and_grow_with_a_prior():
    """SDXL's pooled embedding is one position a prompt: measured through the sequences alone, not as NaN."""
    pipe = load_pipeline("tiny-sdxl")
    family = family_of(pipe)
    before = P.shifts(pipe, family, ["a", "sks", "blue"], "dog")
    assert before["a"] == 0.0 and 0 < before["sks"] < 1 and 0 < before["blue"] < 1
    give_a_prior(pipe, family, "blue", 1000)
    assert P.shifts(pipe, family, ["blue"], "dog")["blue"] > 3 * before["blue"]


def test_train_warns_of_an_identifier_with_a_prior_in_one_line(tiny, capsys):
    pipe, family = tiny
    P.check_prior(pipe, family, "a photo of sks dog", "sks")
    P.check_prior(pipe, family, "a photo of jpg dog", "jpg")
    assert capsys.readouterr().err == ""
    give_a_prior(pipe, family, "jpg", 1000)
    P.check_prior(pipe, family, "a photo of jpg dog", "jpg")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'jpg' as a word with a prior" in err and "identifier --measure --class-noun dog" in err


def test_the_class_noun_is_the_word_after_the_identifier():
    assert P.noun_after("a photo of sks dog", "sks") == "dog"
    assert P.noun_after("a sks teapot, on a table", "SKS") == "teapot"
    assert P.noun_after("a photo of sks", "sks") == "" and P.noun_after("a photo of a dog", "sks") == ""


def test_identifier_measure_lists_the_weakest_candidates_then_the_compared_words(capsys):
    assert main(["identifier", "--model", "tiny", "--measure", "--count", "3", "--compare", "dog", "red"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("measured priors on tiny, weakest first") and out[1].split() == ["identifier", "kind", "shift"]
    rows = [line.split() for line in out[2:]]
    assert [r[1] for r in rows].count("rare") == 3 and sorted(r[0] for r in rows if r[1] == "compared") == ["dog", "red"]
    assert [float(r[2]) for r in rows] == sorted(float(r[2]) for r in rows)
    assert main(["identifier", "--measure", "--class-noun", "stuffed animal"]) == 2


@pytest.mark.slow
def test_on_the_world_rare_tokens_rank_above_words_with_a_prior(capsys):
    """The world's base learnt colours, patterns and classes from its captions, never `sks`-like tokens."""
    argv = ["identifier", "--model", "world", "--measure", "--count", "4", "--samples", "8"]
    assert main([*argv, "--compare", "sks", "red", "striped", "cat"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {r[0]: r for r in (line.split() for line in out[3:])}
    assert out[2].split()[-4:] == ["as", "dog", "same", "draw"]
    order = list(rows)
    assert max(order.index(w) for w in ("sks", *(w for w in rows if rows[w][1] == "rare"))) < min(
        order.index(w) for w in ("red", "striped", "cat")
    )
