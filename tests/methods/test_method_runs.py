"""Textual inversion and pivotal tuning train on the tiny models: what trains in each step (every other embedding row,
and every frozen weight, bitwise as it was), the files, `generate` against plain diffusers, and resume in both phases."""

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import dreambooth.training.loop as loop_mod
from dreambooth.config import GenerateConfig, TrainConfig
from dreambooth.generation import generate
from dreambooth.lora.files import KOHYA_NAME, WEIGHT_NAME


def settings(out: Path, **kw) -> TrainConfig:
    from conftest import SAMPLE

    values = dict(model="tiny", instance_dir=str(SAMPLE), instance_prompt="a photo of TOK dog", output_dir=str(out),
                  rank=2, max_steps=4, num_samples=0, learning_rate=1e-2, text_encoder_lr=1e-2, initializer_word="dog")  # fmt: skip
    return TrainConfig(**{**values, **kw})


def watched(cfg: TrainConfig) -> tuple[Path, list[dict]]:
    """Train, and after every optimiser step check that each encoder's table keeps every row it had before the new
    tokens bitwise, and that no frozen weight moved; returns the folder and, per step, the new rows and LoRA weights."""
    seen: list[dict] = []
    real = loop_mod.optimizer_step
    start: dict = {}

    def step_and_check(run, step):
        if not start:
            start["frozen"] = {f"{c}.{k}": p.detach().clone() for c, m in run.named.items()
                               for k, p in m.named_parameters() if not p.requires_grad}  # fmt: skip
            start["tables"] = {n: getattr(run.pipe, n).get_input_embeddings().weight.detach().clone() for n in run.token_rows}
        loss = real(run, step)
        for name, rows in run.token_rows.items():
            table = getattr(run.pipe, name).get_input_embeddings().weight
            assert torch.equal(table, start["tables"][name]), f"step {step}: a row of {name}'s table moved"
        for key, p in ((f"{c}.{k}", p) for c, m in run.named.items() for k, p in m.named_parameters() if not p.requires_grad):
            assert torch.equal(p, start["frozen"][key]), f"step {step}: frozen {key} moved"
        seen.append({
            "rows": {n: r.weight.detach().clone() for n, r in run.token_rows.items()},
            "lora": {k: p.detach().clone() for c, m in run.named.items() for k, p in m.named_parameters()
                     if p.requires_grad and "lora" in k},
        })  # fmt: skip
        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod, "optimizer_step", step_and_check)
        out = loop_mod.train(cfg)
    return out, seen


@pytest.fixture(scope="module")
def inversion(tmp_path_factory):
    return watched(settings(tmp_path_factory.mktemp("ti") / "dog", method="textual-inversion", rank=16,
                            text_encoder_lr=1e-4, num_samples=1, sample_steps=2))  # fmt: skip


@pytest.fixture(scope="module")
def pivotal(tmp_path_factory):
    root = tmp_path_factory.mktemp("pivotal")
    cfg = settings(root / "dog", method="pivotal", with_prior_preservation=True, class_prompt="a photo of a dog",
                   num_class_images=2, class_image_steps=1, class_dir=str(root / "class"))  # fmt: skip
    return watched(cfg)


def test_textual_inversion_trains_the_new_rows_alone_and_writes_no_lora(inversion, capsys):
    out, seen = inversion
    assert len(seen) == 4 and all(not s["lora"] for s in seen)
    first, last = seen[0]["rows"]["text_encoder"], seen[-1]["rows"]["text_encoder"]
    assert not torch.equal(first, last)  # the rows learn, step after step
    assert not (out / WEIGHT_NAME).exists() and not (out / KOHYA_NAME).exists()
    emb = load_file(str(out / "dog_emb.safetensors"))
    assert set(emb) == {"clip_l"} and torch.equal(emb["clip_l"], last)
    with safe_open(str(out / "dog_emb.safetensors"), "pt") as f:
        assert f.metadata()["dreambooth.tokens"] == "<s0><s1>"
    card = (out / "README.md").read_text()
    assert "Textual inversion" in card and "`embedding:dog_emb`" in card and "load_lora_weights" not in card
    state = load_file(str(out / "checkpoints" / "step-000004" / "state.safetensors"))
    trained = [k for k in state if k.startswith("param.")]  # the two rows alone, not the table
    assert len(trained) == 1 and trained[0].endswith("embeddings.token_embedding.new_tokens.weight")
    assert state[trained[0]].shape == (2, 32)


def test_pivotal_tokens_train_for_the_first_fraction_then_stay_while_the_lora_trains_on(pivotal):
    out, seen = pivotal
    rows = [s["rows"]["text_encoder"] for s in seen]
    assert not torch.equal(rows[0], rows[1])  # step 2 of 4: still in the tokens' phase
    assert torch.equal(rows[1], rows[2]) and torch.equal(rows[2], rows[3])  # then fixed, bitwise
    loras = [s["lora"] for s in seen]
    assert all(any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(loras, loras[1:]))  # the LoRA every step
    assert torch.equal(load_file(str(out / "dog_emb.safetensors"))["clip_l"], rows[-1])
    with safe_open(str(out / KOHYA_NAME), "pt") as f:
        assert torch.equal(f.get_tensor("bundle_emb.dog_emb.clip_l"), rows[-1])  # as A1111 / Forge read it
    assert "Pivotal tuning" in (out / "README.md").read_text()


def drawn(paths) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(paths[0]))


def plain_diffusers(model: str, out: Path, prompt: str) -> np.ndarray:
    """The run loaded into the base as the model card says (diffusers' textual-inversion loader where the pipeline has
    it, else transformers' add_tokens / resize_token_embeddings), drawn as `generate` draws."""
    from diffusers.loaders import TextualInversionLoaderMixin

    from dreambooth.families import family_of
    from dreambooth.models import load_pipeline
    from dreambooth.sampling import draw

    pipe = load_pipeline(model)
    family = family_of(pipe)
    emb = load_file(str(next(out.glob("*_emb.safetensors"))))
    tokenizer_of = dict(zip(family.text_encoders, family.tokenizers))
    tokens = ["<s0>", "<s1>"]
    for name, key in family.embedding_keys.items():
        if key not in emb:
            continue
        encoder, tokenizer = getattr(pipe, name), getattr(pipe, tokenizer_of[name])
        if isinstance(pipe, TextualInversionLoaderMixin) and tokens[0] not in tokenizer.get_vocab():
            pipe.load_textual_inversion(emb[key], token=tokens, text_encoder=encoder, tokenizer=tokenizer)
            continue
        tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
        encoder.resize_token_embeddings(len(tokenizer))
        with torch.no_grad():
            encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(tokens)] = emb[key]
    if (out / WEIGHT_NAME).is_file():
        pipe.load_lora_weights(str(out))
    return np.asarray(draw(pipe, prompt, 1, 0, 2, 3.0, 64)[0])


def generated(model: str, out: Path, prompt: str, tmp_path: Path) -> np.ndarray:
    return drawn(generate(GenerateConfig(model=model, lora=str(out), prompt=prompt, num_images=1, steps=2, guidance=3.0,
                                         output_dir=str(tmp_path / "gen"))))  # fmt: skip


def test_generate_draws_with_the_learnt_tokens_what_plain_diffusers_draws(pivotal, tmp_path):
    out, _ = pivotal
    ours = generated("tiny", out, "a photo of <s0><s1> dog", tmp_path)
    assert np.array_equal(ours, plain_diffusers("tiny", out, "a photo of <s0><s1> dog"))
    base = drawn(generate(GenerateConfig(model="tiny", prompt="a photo of dog", num_images=1, steps=2, guidance=3.0,
                                         output_dir=str(tmp_path / "base"))))  # fmt: skip
    assert np.abs(ours.astype(float) - base).mean() > 0.5


@pytest.mark.parametrize(
    "model",
    [
        *(
            pytest.param(m, marks=pytest.mark.slow)
            for m in ("tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-z-image", "tiny-flux2-klein")
        ),
        "tiny-qwen-image",
    ],
)
@pytest.mark.parametrize("method", ["textual-inversion", "pivotal"])
def test_every_family_trains_both_methods_and_plain_diffusers_draws_what_generate_draws(model, method, tmp_path):
    extra = dict(rank=16, text_encoder_lr=1e-4) if method == "textual-inversion" else {}
    out, seen = watched(settings(tmp_path / "run", model=model, method=method, max_steps=2, **extra))
    assert len(seen) == 2 and all(s["rows"] for s in seen)
    prompt = "a photo of <s0><s1> dog"
    assert np.array_equal(generated(model, out, prompt, tmp_path), plain_diffusers(model, out, prompt))


@pytest.mark.slow
def test_flux_t5_takes_tokens_with_t5_tokens(tmp_path):
    out, seen = watched(settings(tmp_path / "run", model="tiny-flux", method="textual-inversion", rank=16,
                                 text_encoder_lr=1e-4, t5_tokens=True, max_steps=2))  # fmt: skip
    assert set(seen[-1]["rows"]) == {"text_encoder", "text_encoder_2"}
    assert set(load_file(str(out / "run_emb.safetensors"))) == {"clip_l", "t5"}
    prompt = "a photo of <s0><s1> dog"
    assert np.array_equal(generated("tiny-flux", out, prompt, tmp_path), plain_diffusers("tiny-flux", out, prompt))


def interrupted_then_resumed(cfg_of, tmp_path: Path, micro: int) -> Path:
    """Ctrl-C in optimiser step `micro` + 1, then --resume (the loop saves that step first)."""
    real = loop_mod.step_loss

    def ctrl_c(cfg, family, denoiser, sched, examples, m):
        if m == micro:
            signal.raise_signal(signal.SIGINT)
        return real(cfg, family, denoiser, sched, examples, m)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod, "step_loss", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            loop_mod.train(cfg_of(tmp_path / f"split{micro}" / "dog"))
    return loop_mod.train(cfg_of(tmp_path / f"split{micro}" / "dog", resume=True))


def same_files(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow  # seconds of three runs: the full suite keeps it, the fast lane does not
def test_resume_in_either_pivotal_phase_equals_an_uninterrupted_run(tmp_path):
    def cfg_of(out, **kw):
        return settings(out, method="pivotal", with_prior_preservation=True, class_prompt="a photo of a dog",
                        num_class_images=2, class_image_steps=1, class_dir=str(tmp_path / "class"), random_flip=True,
                        lr_scheduler="cosine", **kw)  # fmt: skip

    whole = loop_mod.train(cfg_of(tmp_path / "whole" / "dog"))
    for micro in (0, 2):  # stopped after step 1 (the tokens' phase) and after step 3 (the LoRA's alone)
        split = interrupted_then_resumed(cfg_of, tmp_path, micro)
        assert same_files(whole / "dog_emb.safetensors", split / "dog_emb.safetensors")
        assert same_files(whole / WEIGHT_NAME, split / WEIGHT_NAME)


def test_several_subjects_each_get_their_own_tokens_and_files(photos, tmp_path):
    import yaml

    (tmp_path / "subjects.yaml").write_text(yaml.safe_dump([
        {"instance_dir": str(photos), "instance_prompt": "a photo of TOK dog"},
        {"instance_dir": str(photos), "instance_prompt": "a photo of TOK cat"},
    ]))  # fmt: skip
    cfg = settings(tmp_path / "pets", method="pivotal", subjects=str(tmp_path / "subjects.yaml"), instance_dir="",
                   instance_prompt="", max_steps=2, batch_size=2)  # fmt: skip
    out, seen = watched(cfg)
    emb = load_file(str(out / "pets_emb.safetensors"))["clip_l"]
    assert emb.shape == (4, 32)
    for k in (0, 1):
        part = out / f"pets_emb{k + 1}.safetensors"
        assert torch.equal(load_file(str(part))["clip_l"], emb[2 * k : 2 * k + 2])
        with safe_open(str(out / KOHYA_NAME), "pt") as f:
            assert torch.equal(f.get_tensor(f"bundle_emb.pets_emb{k + 1}.clip_l"), emb[2 * k : 2 * k + 2])
    assert "<s2><s3>" in (out / "README.md").read_text()


def test_pivotal_with_the_text_encoder_lora_saves_the_adapter_without_the_grown_table(tiny_base, tmp_path):
    """The tiny CLIP table has no spare rows, so the new tokens grow it; from a base in a folder (whose config peft
    compares the vocabulary with), peft's state dict of the text encoder's LoRA would then carry the whole grown table,
    which no LoRA layout holds: the LoRA keeps the adapter, the _emb file the rows."""
    cfg = settings(tmp_path / "run", model=str(tiny_base), method="pivotal", train_text_encoder=True, max_steps=2)
    out, seen = watched(cfg)
    lora = load_file(str(out / WEIGHT_NAME))
    assert any(k.startswith("text_encoder.") and "lora" in k for k in lora)
    assert not [k for k in lora if "embed" in k]
    assert torch.equal(load_file(str(out / "run_emb.safetensors"))["clip_l"], seen[-1]["rows"]["text_encoder"])
