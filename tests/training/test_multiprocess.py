"""Data-parallel training on accelerate: two CPU processes (gloo) equal one process with twice the batch."""

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ARGS = [
    "--instance-prompt",
    "a photo of sks dog",
    "--max-steps",
    "4",
    "--num-samples",
    "0",
    "--rank",
    "4",
    "--train-text-encoder",
    "--with-prior-preservation",
    "--class-prompt",
    "a photo of a dog",
    "--num-class-images",
    "4",
    "--class-image-steps",
    "3",
    # a large Adam epsilon makes the update proportional to the gradient, so float noise is not blown up
    "--learning-rate",
    "0.5",
    "--text-encoder-lr",
    "0.5",
    "--adam-epsilon",
    "1",
    "--max-grad-norm",
    "0",
]


def run(cmd, tmp_path, env_cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DREAMBOOTH_CACHE": str(env_cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_match_one_process_with_twice_the_batch(photos, tmp_path):
    common = ["train", "--instance-dir", str(photos), *ARGS]
    two = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "dreambooth.cli",
            *common,
            "--batch-size",
            "1",
            "--output-dir",
            "two",
        ],
        tmp_path,
        tmp_path / "cache-two",
    )
    assert two.stdout.count("LoRA saved") == 1  # only the main process writes
    one = run(
        [sys.executable, "-m", "dreambooth.cli", *common, "--batch-size", "2", "--output-dir", "one"],
        tmp_path,
        tmp_path / "cache-one",
    )
    assert "LoRA saved" in one.stdout

    a = load_file(str(tmp_path / "two" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "one" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max(b[k].abs().max().item() for k in b) > 0.1  # the weights did move

    # the two processes split the class images between them and made the same ones one process makes
    banks = [next((tmp_path / c / "class-images").iterdir()) for c in ("cache-two", "cache-one")]
    made = [sorted(p.name for p in bank.iterdir()) for bank in banks]
    assert made[0] == made[1] == [f"class-{i:05d}.png" for i in range(4)]


def test_two_processes_train_sdxl_with_both_text_encoders(photos, tmp_path):
    """SDXL reads the first text encoder's penultimate layer: its last layer gets no gradient, which
    DistributedDataParallel refuses at the second step unless no adapter sits where no gradient flows."""
    two = run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
         "-m", "dreambooth.cli", "train", "--model", "tiny-sdxl", "--instance-dir", str(photos),
         "--instance-prompt", "a photo of sks dog", "--max-steps", "3", "--num-samples", "0", "--rank", "4",
         "--train-text-encoder", "--output-dir", "two"],
        tmp_path,
        tmp_path / "cache",
    )  # fmt: skip
    assert two.stdout.count("LoRA saved") == 1
    weights = load_file(str(tmp_path / "two" / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in weights) and any(k.startswith("text_encoder_2.") for k in weights)


def test_pivotal_in_two_processes_matches_one_process_in_both_phases(photos, tmp_path):
    """Pivotal tuning's new token rows train for the first 2 of the 4 steps beside the LoRA, then stay fixed while the
    LoRA trains on: in both phases two processes reduce their gradients to what one process with twice the batch
    computes, so the LoRA and the rows come out the same."""
    common = ["train", "--instance-dir", str(photos), "--method", "pivotal", "--instance-prompt", "a photo of TOK dog",
              "--initializer-word", "dog", "--max-steps", "4", "--num-samples", "0", "--rank", "4",
              "--learning-rate", "0.5", "--text-encoder-lr", "0.5", "--adam-epsilon", "1", "--max-grad-norm", "0"]  # fmt: skip
    two = run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
         "-m", "dreambooth.cli", *common, "--batch-size", "1", "--output-dir", "two"],
        tmp_path,
        tmp_path / "cache-two",
    )  # fmt: skip
    assert two.stdout.count("LoRA saved") == 1
    one = run([sys.executable, "-m", "dreambooth.cli", *common, "--batch-size", "2", "--output-dir", "one"], tmp_path,
              tmp_path / "cache-one")  # fmt: skip
    assert "LoRA saved" in one.stdout
    for name in ("pytorch_lora_weights.safetensors", "{}_emb.safetensors"):
        a = load_file(str(tmp_path / "two" / name.format("two")))
        b = load_file(str(tmp_path / "one" / name.format("one")))
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name
    lora = load_file(str(tmp_path / "one" / "pytorch_lora_weights.safetensors"))
    assert max(v.abs().max().item() for v in lora.values()) > 0.1  # the weights did move
