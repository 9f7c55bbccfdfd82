"""Two subjects in one LoRA in the world: how bleeding is counted. The whole two-subject run (`dreambooth demo
--subjects dog cat`, about 10 minutes on 2 CPU cores) is a measurement, not a test: its figures are in the README."""

from dreambooth.world.several import subject_scores


def test_bleeding_counts_the_other_subjects_class_or_look():
    dog = {"cls": "dog", "colour": "purple", "pattern": "dotted"}  # the dog subject
    cat_look = {"cls": "dog", "colour": "green", "pattern": "striped"}  # a dog in the cat subject's look
    a_cat = {"cls": "cat", "colour": "red", "pattern": "plain"}
    scores = subject_scores({"dog": [dog, dog, cat_look, a_cat], "cat": [a_cat] * 4}, ["dog", "cat"])
    assert scores["dog"] == 0.5 and scores["dog_bleeding"] == 0.5
    assert scores["cat"] == 0.0 and scores["cat_bleeding"] == 0.0
