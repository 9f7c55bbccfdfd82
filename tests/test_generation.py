import numpy as np
from PIL import Image

from dreambooth.config import GenerateConfig
from dreambooth.generation import generate


def test_image_i_depends_on_seed_plus_i_not_on_batching(tmp_path):
    one = generate(
        GenerateConfig(prompt="a photo of a dog", num_images=3, steps=3, batch_size=3, seed=5, output_dir=str(tmp_path / "a"))
    )
    two = generate(
        GenerateConfig(prompt="a photo of a dog", num_images=2, steps=3, batch_size=1, seed=6, output_dir=str(tmp_path / "b"))
    )
    a = np.asarray(Image.open(one[1]), dtype=np.int16)
    b = np.asarray(Image.open(two[0]), dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # same seed (5 + 1 == 6 + 0); batching may move a pixel by a rounding step
    assert np.abs(np.asarray(Image.open(one[0]), dtype=np.int16) - a).mean() > 1  # other seeds differ


def test_base_model_defaults_to_the_one_the_lora_was_trained_on(photos, tmp_path):
    from dreambooth.config import TrainConfig
    from dreambooth.training.loop import train

    lora = train(
        TrainConfig(
            model="tiny-v",
            instance_dir=str(photos),
            instance_prompt="a photo of sks dog",
            output_dir=str(tmp_path / "lora"),
            rank=2,
            max_steps=1,
            num_samples=0,
        )
    )
    generate(GenerateConfig(lora=str(lora), prompt="a photo of sks dog", num_images=1, steps=2, output_dir=str(tmp_path / "g")))
    assert "model: tiny-v" in (tmp_path / "g" / "config.yaml").read_text()
