#!/usr/bin/env bash
# Every GPU figure of bench/RESULTS.md in one go, on one CUDA machine (about 10 minutes on an H100/H200):
#
#   bench/gpu_all.sh OUT_DIR [DIFFUSERS_SCRIPT]
#
# OUT_DIR gets one JSON file per job and log.txt with everything printed. DIFFUSERS_SCRIPT is a copy of diffusers'
# examples/dreambooth/train_dreambooth_lora.py; without it only our tool is measured. PYTHON (default python3)
# must import torch with CUDA, diffusers, transformers, peft, accelerate and this package (PYTHONPATH=src is
# enough), and torchvision for the diffusers script. SD15_DIR (default: a temporary folder) holds the
# SD 1.5-shaped model with random weights; it is written first if missing (about 2 GB).
#
# DEVICE=cpu bench/gpu_all.sh OUT_DIR [SCRIPT] runs the same sequence at smoke size on a CPU, to check
# the script itself: the SD 1.5-sized jobs are left out there (one 512 px step takes minutes on a CPU).
set -uo pipefail
OUT=${1:?usage: bench/gpu_all.sh OUT_DIR [DIFFUSERS_SCRIPT]}
SCRIPT=${2:-}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -n "$SCRIPT" ] && SCRIPT=$(cd "$(dirname "$SCRIPT")" && pwd)/$(basename "$SCRIPT")
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
SD15=${SD15_DIR:-$WORK/sd15}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0

job() {  # job NAME COMMAND...: run one measurement, log it, keep going if it fails
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$OUT/log.txt" | grep -v -e '%|' -e '^Loading' | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
  [ "$rc" = 0 ] || failed=1
}

{ date -u; nvidia-smi 2>/dev/null | head -15; $PY -c "import torch, diffusers, transformers, peft, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"; } 2>&1 | tee "$OUT/log.txt"

if [ "$DEVICE" = cpu ]; then
  job step-smoke "$PY" bench/gpu_step.py --device cpu --smoke --json "$OUT/step_smoke.json"
  job ours-tiny "$PY" bench/train_speed.py --device cpu --setting a --quick --json "$OUT/ours_tiny.json"
  [ -n "$SCRIPT" ] && job theirs-tiny "$PY" bench/diffusers_baseline.py --device cpu --quick --script "$SCRIPT" --python "$PY" \
      --model-dir "$WORK/tiny-model" --json "$OUT/theirs_tiny.json"
else
  # (b) one training step of SD 1.5's shape at 512 px: rate, FLOPs, MFU, peak memory
  for b in 1 8; do
    job "step-b$b" "$PY" bench/gpu_step.py --device cuda --batch "$b" --dtype bf16 --json "$OUT/step_b$b.json"
  done
  job step-b1-vae "$PY" bench/gpu_step.py --device cuda --batch 1 --dtype bf16 --vae-encode --json "$OUT/step_b1_vae.json"
  [ -f "$SD15/model_index.json" ] || job sd15-model "$PY" bench/save_sd15_model.py "$SD15"
  # the seed's job: 512 px, batch 1 + 1, text-encoder LoRA rank 16, 300 steps, 100 class images, 4 samples, fp16
  job ours-sd15 "$PY" bench/train_speed.py --device cuda --setting a --model "$SD15" --resolution 512 \
      --mixed-precision fp16 --num-class-images 100 --json "$OUT/ours_sd15.json"
  [ -n "$SCRIPT" ] && job theirs-sd15 "$PY" bench/diffusers_baseline.py --device cuda --script "$SCRIPT" --python "$PY" \
      --model-dir "$SD15" --resolution 512 --mixed-precision fp16 --num-class-images 100 --json "$OUT/theirs_sd15.json"
  # (a) the tiny model at 64 px on the GPU, both tools
  job ours-tiny "$PY" bench/train_speed.py --device cuda --setting a --json "$OUT/ours_tiny.json"
  [ -n "$SCRIPT" ] && job theirs-tiny "$PY" bench/diffusers_baseline.py --device cuda --script "$SCRIPT" --python "$PY" \
      --model-dir "$WORK/tiny-model" --json "$OUT/theirs_tiny.json"
fi
rm -rf "$WORK"
echo "done: $OUT (failures: $failed)" | tee -a "$OUT/log.txt"
exit $failed
