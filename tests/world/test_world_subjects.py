"""Two subjects in one LoRA in the world (`dreambooth demo --subjects dog cat`): each identifier draws its own
subject and seldom the other. Thresholds sit below what one CPU run measured (in the comments; 32 samples per prompt
with fixed seeds, one sample about 3 points)."""

import json

import pytest

from dreambooth.world.several import run_several, subject_scores

pytestmark = pytest.mark.slow


def test_each_identifier_draws_its_own_subject_and_seldom_the_other(tmp_path):
    scores = run_several(str(tmp_path), ["dog", "cat"], n=32)
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    assert scores["dog"] >= 0.7 and scores["cat"] >= 0.75  # measured 0.81 and 0.88
    assert scores["dog_bleeding"] <= 0.07 and scores["cat_bleeding"] <= 0.07  # 0.00 and 0.00
    assert scores["dog_class_drift"] <= 0.16 and scores["cat_class_drift"] <= 0.16  # 0.06 and 0.00: a prior per class


def test_bleeding_counts_the_other_subjects_class_or_look():
    dog = {"cls": "dog", "colour": "purple", "pattern": "dotted"}  # the dog subject
    cat_look = {"cls": "dog", "colour": "green", "pattern": "striped"}  # a dog in the cat subject's look
    a_cat = {"cls": "cat", "colour": "red", "pattern": "plain"}
    scores = subject_scores({"dog": [dog, dog, cat_look, a_cat], "cat": [a_cat] * 4}, ["dog", "cat"])
    assert scores["dog"] == 0.5 and scores["dog_bleeding"] == 0.5
    assert scores["cat"] == 0.0 and scores["cat_bleeding"] == 0.0
