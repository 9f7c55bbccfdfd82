"""What `dreambooth demo` trains: its flags become one train config that `train`'s own checks accept."""

from dreambooth.config import check_train
from dreambooth.world import DEMO_STEPS
from dreambooth.world.demo import demo_settings


def test_the_demo_trains_its_defaults_and_plain_dreambooth_when_they_are_turned_off(tmp_path):
    cfg = demo_settings("cat", tmp_path)
    check_train(cfg)
    assert (cfg.instance_dir, cfg.output_dir) == (str(tmp_path / "subject"), str(tmp_path / "lora"))
    assert cfg.masked_loss and cfg.mask_background_weight == 0.1 and cfg.max_steps == DEMO_STEPS
    assert (cfg.num_class_images, cfg.class_caption_dropout, cfg.preserve_unconditional) == (400, 0.2, True)
    assert cfg.prior_loss_weight == 2.0 and cfg.validation_steps == DEMO_STEPS // 5
    prompts = (tmp_path / "class-prompts.txt").read_text().splitlines()
    assert prompts[0] == "a photo of a cat" and "a photo of a cat on the beach" in prompts and len(prompts) == 7
    asked = (tmp_path / "validation-prompts.txt").read_text().splitlines()
    assert asked[0] == "a photo of sks cat" and asked[-1] == "a photo of a cat" and len(asked) == 8

    # --no-masked-loss --no-class-contexts --class-images 100 --class-caption-dropout 0: prior preservation alone,
    # and --preserve-unconditional (on by default) has nothing to act on, so it is off rather than an error
    plain = demo_settings("cat", tmp_path / "plain", masked_loss=False, class_contexts=False, class_images=100,
                          class_caption_dropout=0.0)  # fmt: skip
    check_train(plain)
    assert not plain.masked_loss and plain.class_prompts_file == "" and not plain.preserve_unconditional
    assert (plain.num_class_images, plain.class_caption_dropout) == (100, 0.0)


def test_the_demo_with_new_tokens_trains_and_validates_the_token_abstraction(tmp_path):
    from dreambooth.methods import plan_of
    from dreambooth.world.demo import drawn_word

    for method in ("textual-inversion", "pivotal"):
        cfg = demo_settings("dog", tmp_path / method, method=method)
        check_train(cfg)
        plan = plan_of(cfg)  # the method's own checks: the world's recommended LoRA settings are not "given"
        assert plan.lora == (method == "pivotal") and cfg.train_text_encoder == (method == "pivotal")
        assert (cfg.instance_prompt, cfg.initializer_word) == ("a photo of TOK dog", "dog")
        asked = (tmp_path / method / "validation-prompts.txt").read_text().splitlines()
        assert asked[0] == "a photo of TOK dog" and asked[-1] == "a photo of a dog"
        assert drawn_word(method) == "<s0><s1>"
    assert drawn_word("dreambooth") == "sks" and demo_settings("dog", tmp_path / "db").instance_prompt == "a photo of sks dog"
