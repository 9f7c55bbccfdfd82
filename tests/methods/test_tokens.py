"""New tokens: their names, the prompts they replace the abstraction in, and their rows beside each family's frozen
embedding table (CLIP, T5, Qwen2.5-VL)."""

import pytest
import torch

from dreambooth.families import family_of
from dreambooth.methods.tokens import add_rows, new_tokens, rows_of, token_components


def test_each_subject_gets_its_own_tokens_in_place_of_the_whole_word():
    tokens = new_tokens("TOK", subjects=2, per_subject=2)
    assert tokens.per_subject == (("<s0>", "<s1>"), ("<s2>", "<s3>"))
    assert tokens.in_prompt("a photo of TOK dog, TOK on the beach") == "a photo of <s0><s1> dog, <s0><s1> on the beach"
    assert tokens.in_prompt("a photo of TOK cat", subject=1) == "a photo of <s2><s3> cat"
    assert tokens.in_prompt("TOKEN, sTOK and <TOK>") == "TOKEN, sTOK and <TOK>"  # whole words only


def encode(pipe, name, tokenizer_name, prompt):
    tokenizer = getattr(pipe, tokenizer_name)
    ids = tokenizer([prompt], padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return getattr(pipe, name)(ids, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("model", ["tiny", "tiny-flux", "tiny-qwen-image"])
def test_the_new_rows_are_read_in_place_of_the_frozen_table_whose_other_rows_stay_as_they_were(model):
    """On CLIP, T5 (whose encoder reads its own module over the shared table) and Qwen2.5-VL: the starting vectors
    are the initializer word's row, the table's old rows are bitwise the same, a prompt without the new tokens encodes
    as before, and one with them reads the trained vectors."""
    from dreambooth.models import load_pipeline

    pipe = load_pipeline(model)
    family = family_of(pipe)
    components = token_components(family, t5_tokens=True)
    before = {n: getattr(pipe, n).get_input_embeddings().weight.detach().clone() for n in components}
    plain = {n: encode(pipe, n, t, "a photo of a dog") for n, t in components.items()}
    tokens = new_tokens("TOK", 1, 2)
    rows = add_rows(pipe, family, tokens, "dog", seed=0, t5_tokens=True)
    assert set(rows) == set(components)
    for name, tokenizer_name in components.items():
        encoder, tokenizer = getattr(pipe, name), getattr(pipe, tokenizer_name)
        table = encoder.get_input_embeddings().weight
        old = before[name].shape[0]
        assert torch.equal(table[:old], before[name])  # every row it had, bitwise
        dog = tokenizer("dog", add_special_tokens=False).input_ids
        assert torch.equal(rows[name].weight, table[dog].float().mean(0).expand(2, -1))
        assert rows_of(encoder) is rows[name]
        assert torch.equal(encode(pipe, name, tokenizer_name, "a photo of a dog"), plain[name])
        with_tokens = encode(pipe, name, tokenizer_name, tokens.in_prompt("a photo of TOK dog"))
        with torch.no_grad():
            rows[name].weight.add_(1.0)
        moved = encode(pipe, name, tokenizer_name, tokens.in_prompt("a photo of TOK dog"))
        assert not torch.equal(with_tokens, moved)  # the prompt reads the rows, not the table
        assert torch.equal(table[:old], before[name])


def test_rows_read_detached_get_no_gradient():
    from dreambooth.methods.tokens import TokenRows

    rows = TokenRows([5, 6], torch.ones(2, 3))
    embedded = torch.zeros(1, 4, 3)
    ids = torch.tensor([[1, 5, 6, 2]])
    rows.substitute(ids, embedded).sum().backward()
    assert torch.equal(rows.weight.grad, torch.ones(2, 3))
    rows.weight.grad, rows.learning = None, False
    out = rows.substitute(ids, embedded)
    assert torch.equal(out[0, 1:3], torch.ones(2, 3)) and not out.requires_grad


def test_random_start_is_at_the_tables_own_scale_and_seeded():
    from dreambooth.methods.tokens import initial_vectors

    table = torch.randn(1000, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    a, b = initial_vectors(table, None, 2, "", seed=3), initial_vectors(table, None, 2, "", seed=3)
    assert torch.equal(a, b) and 0.01 < float(a.std()) < 0.03


def test_a_family_that_takes_no_new_tokens_is_refused_in_one_line():
    import dataclasses

    from dreambooth.errors import UsageError
    from dreambooth.families import sd
    from dreambooth.methods.tokens import check_family

    with pytest.raises(UsageError, match="--method pivotal: not available for Stable Diffusion 1.x/2.x yet"):
        check_family(dataclasses.replace(sd.FAMILY, embedding_keys={}), t5_tokens=False, method="pivotal")
    with pytest.raises(UsageError, match="--t5-tokens: Stable Diffusion 1.x/2.x has no T5 encoder"):
        check_family(sd.FAMILY, t5_tokens=True, method="pivotal")


def test_captions_without_the_abstraction_are_counted_in_one_warning(capsys):
    from dreambooth.methods.tokens import warn_uncaptioned

    warn_uncaptioned("TOK", ["a photo of TOK dog", "a dog on grass", "a dog asleep"])
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 photo captions do not contain it" in err and "'a dog on grass'" in err
