import math

import numpy as np
import pytest

from dreambooth.models import load_pipeline
from dreambooth.sampling import draw
from dreambooth.world import scores as S


def r(cls="dog", colour="purple", pattern="dotted", context="plain"):
    return {"cls": cls, "colour": colour, "pattern": pattern, "context": context}


def test_prompts_name_the_identifier_the_contexts_and_the_class():
    p = S.prompts("dog", contexts=("beach", "snow"))
    assert p == {
        "subject": "a photo of sks dog",
        "context:beach": "a photo of sks dog on the beach",
        "context:snow": "a photo of sks dog in the snow",
        "class": "a photo of a dog",
    }


def test_scores_count_what_the_reader_saw():
    readings = {
        "subject": [r(), r(), r(colour="red"), r(cls="cat")],  # 2 of 4 are the subject
        "context:beach": [r(context="beach"), r(context="beach", colour="blue"), r(), r()],  # 2 on the beach, 1 the subject there
        "class": [r(), r(colour="red", pattern="plain"), r(colour="blue", pattern="striped"), r(cls="vase")],
    }
    s = S.score(readings, "dog")
    assert s["subject_fidelity"] == 0.5
    assert s["context_fidelity"] == 0.5
    assert s["subject_in_context"] == 0.25
    assert s["class_fidelity"] == 0.75
    assert s["class_drift"] == 0.25  # the first class sample turned into the subject
    # three dogs, three different (colour, pattern) pairs of 24 possible: ln 3 / ln 24 (the vase does not count)
    assert s["class_diversity"] == pytest.approx(math.log(3) / math.log(24), abs=1e-4)


def test_diversity_is_zero_for_one_look_and_one_for_all_looks():
    assert S.diversity([r()] * 10) == 0
    every = [r(colour=c, pattern=p) for c in S.COLOURS for p in S.PATTERNS]
    assert S.diversity(every) == pytest.approx(1.0)


def test_a_subject_needs_class_colour_and_pattern():
    assert S.is_subject(r(), "dog")
    assert not S.is_subject(r(pattern="striped"), "dog")
    assert not S.is_subject(r(cls="cat"), "dog")


def test_free_written_prompts_are_read_as_the_subject_a_context_or_the_class():
    for name, prompt in S.prompts("dog", identifier="zwx").items():
        assert S.prompt_name(prompt, "dog", "zwx") == name
    assert S.prompt_name("A photo of zwx dog, in the snow", "dog", "zwx") == "context:snow"
    assert S.prompt_name("a photo of a cat", "dog", "zwx") is None  # another class: not scored
    assert S.prompt_name("a photo of a dog on the beach", "dog", "zwx") is None  # the class in a context: no score reads it


def test_only_the_scores_of_the_prompts_drawn_are_given():
    s = S.score({"context:beach": [r(context="beach"), r(context="snow")]}, "dog")
    assert s == {"context_fidelity": 0.5, "subject_in_context": 0.5}


def test_the_prompts_share_batches_and_each_sample_keeps_its_seed(monkeypatch):
    """The world's prompts are drawn in shared batches (a batch here holds samples of two prompts): sample i of each
    prompt is what drawing that prompt alone gives with seed + i, up to batched arithmetic's rounding."""
    pipe = load_pipeline("tiny")
    monkeypatch.setattr(S, "SHARED_BATCH", 4)
    asked = {"subject": "a photo of sks dog", "class": "a photo of a dog", "again": "a photo of sks dog"}
    drawn = S.draw_named(pipe, asked, 3, seed=5, steps=2, guidance=4.0)
    assert list(drawn) == list(asked) and [len(v) for v in drawn.values()] == [3, 3, 3]
    for name, prompt in asked.items():
        alone = draw(pipe, prompt, 3, seed=5, steps=2, guidance=4.0, resolution=32, batch_size=3)
        for a, b in zip(drawn[name], alone):
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2
    assert not np.array_equal(np.asarray(drawn["subject"][0]), np.asarray(drawn["subject"][1]))  # seeds differ
