#!/usr/bin/env bash
# A LoRA this tool writes must load and apply in the older diffusers stack many people still run (transformers 4,
# diffusers 0.32, peft 0.17) exactly as it does here. This makes that stack in a virtual environment of its own, trains
# a tiny LoRA (UNet and text encoder, alpha twice the rank) with the active environment's python, and compares what
# each of its files does in both stacks (scripts/old_stack_check.py). Exit status 1 on any difference.
#     scripts/old_stack_check.sh [OLD_VENV]        (default .venv-old; made when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:-.venv-old}
[ -x "$OLD/bin/python" ] || python3 -m venv "$OLD"
"$OLD/bin/python" -m pip install --quiet --upgrade pip
"$OLD/bin/python" -m pip install --quiet torch==2.13.0 "transformers<5" "diffusers==0.32.*" "peft==0.17.*" accelerate safetensors
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python bench/save_tiny_model.py "$WORK/base"
python -m dreambooth.cli train --model "$WORK/base" --instance-dir src/dreambooth/assets/sample_subject/dog \
  --instance-prompt "a photo of sks dog" --train-text-encoder --rank 4 --lora-alpha 8 --learning-rate 1e-2 \
  --text-encoder-lr 1e-2 --max-steps 4 --num-samples 0 --output-dir "$WORK/lora"
python scripts/old_stack_check.py reference "$WORK/base" "$WORK/lora" "$WORK/reference.safetensors"
"$OLD/bin/python" scripts/old_stack_check.py check "$WORK/base" "$WORK/lora" "$WORK/reference.safetensors"
