#!/usr/bin/env bash
# Every GPU figure of bench/RESULTS.md in one go, on one CUDA machine:
#
#   bench/gpu_all.sh OUT_DIR [DIFFUSERS_SCRIPT]
#
# OUT_DIR gets one JSON file per job and log.txt with everything printed. DIFFUSERS_SCRIPT is a
# copy of diffusers' examples/dreambooth/train_dreambooth_lora.py; without it only our tool is measured. FLUX_SCRIPT
# and SD3_SCRIPT are copies of train_dreambooth_lora_flux.py and _sd3.py (default: those names beside
# DIFFUSERS_SCRIPT, when there). PYTHON (default python3) must import torch with CUDA, diffusers, transformers, peft,
# accelerate and this package (PYTHONPATH=src is enough), bitsandbytes for the 8-bit AdamW and nf4/int8 figures;
# THEIR_PYTHON (default PYTHON) runs diffusers' scripts and needs torchvision, tensorboard, sentencepiece too.
# SD15_DIR, FLUX_DIR and SD35_DIR (default: a temporary folder) hold the models with random weights of SD 1.5's,
# FLUX.1 [dev]'s and SD3.5 Medium's shapes; each is written when first needed if missing (2, 24 and 5 GB).
#
# JOBS (default "flow sd") picks the groups and their order: flow = FLUX.1 [dev] and SD3.5 Medium's whole jobs with
# both tools (bench/flow_speed.py: batch 1, 1024 px, bf16, 25 steps, no prior preservation), then the tool's FLUX.1
# step with the base in nf4 and int8 beside the same step unquantized (gpu_step.py); sd = the SD 1.5 / SDXL figures and the transformer families' one-step figures
# (gpu_step.py). BUDGET (seconds, default 540) bounds the whole script: the jobs run most important first, and one
# that would not finish in what is left is skipped and named in the log. The flow group's estimates below (guesses
# until a GPU run: most of it is writing and reading the 24 GB FLUX.1-shaped folder) add up to about 17 minutes:
# by them BUDGET=540 reaches FLUX.1 with both tools and the SD3.5 folder, BUDGET=1020 the whole group.
#
# DEVICE=cpu bench/gpu_all.sh OUT_DIR [SCRIPT] runs the same sequence at smoke size on a CPU, to check
# the script itself: the SD 1.5-sized jobs are left out there (one 512 px step takes minutes on a CPU), and the
# flow jobs run on the tiny models (tiny-flux, tiny-sd3) at 64 px.
set -uo pipefail
OUT=${1:?usage: bench/gpu_all.sh OUT_DIR [DIFFUSERS_SCRIPT]}
SCRIPT=${2:-}
PY=${PYTHON:-python3}
THEIR_PY=${THEIR_PYTHON:-$PY}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-flow sd}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
absolute() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
[ -n "$SCRIPT" ] && SCRIPT=$(absolute "$SCRIPT")
FLUX_SCRIPT=${FLUX_SCRIPT:-$([ -n "$SCRIPT" ] && echo "$(dirname "$SCRIPT")/train_dreambooth_lora_flux.py")}
SD3_SCRIPT=${SD3_SCRIPT:-$([ -n "$SCRIPT" ] && echo "$(dirname "$SCRIPT")/train_dreambooth_lora_sd3.py")}
[ -f "$FLUX_SCRIPT" ] && FLUX_SCRIPT=$(absolute "$FLUX_SCRIPT") || FLUX_SCRIPT=
[ -f "$SD3_SCRIPT" ] && SD3_SCRIPT=$(absolute "$SD3_SCRIPT") || SD3_SCRIPT=
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
SD15=${SD15_DIR:-$WORK/sd15}
FLUX=${FLUX_DIR:-$WORK/flux}
SD35=${SD35_DIR:-$WORK/sd35}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0

BUDGET=${BUDGET:-$([ "$DEVICE" = cpu ] && echo 1800 || echo 540)}
job() {  # job NAME SECONDS COMMAND...: run one measurement if SECONDS (its usual length) fit in what is left
  local name=$1 need=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$need" ]; then
    echo "== $name: skipped, $left s left of the budget and it takes about $need s" | tee -a "$OUT/log.txt"
    failed=1
    return
  fi
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  timeout --kill-after=10 "$left" "$@" 2>&1 | tee -a "$OUT/log.txt" | grep -v -e '%|' -e '^Loading' | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
  [ "$rc" = 0 ] || failed=1
}

{ date -u; nvidia-smi 2>/dev/null | head -15; $PY -c "import torch, diffusers, transformers, peft, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"; } 2>&1 | tee "$OUT/log.txt"

flow() {  # FLUX.1 [dev]'s and SD3.5 Medium's whole jobs, ours then theirs, then ours with a quantized base
  local size=(--device cuda --steps 25 --warmup 5) tiny=()
  [ "$DEVICE" = cpu ] && size=(--device cpu --quick) tiny=(--tiny)
  est() { if [ "$DEVICE" = cpu ]; then echo "$1"; else echo "$2"; fi; }  # seconds a job takes: on the CPU, on an H200
  local run=("$PY" bench/flow_speed.py "${size[@]}" --our-python "$PY" --python "$THEIR_PY" --workdir "$WORK/flow")
  # the folders: the tool's tiny models on a CPU; on a GPU the real shapes, built there in bf16
  [ -f "$FLUX/model_index.json" ] || job flux-model "$(est 60 90)" "$PY" bench/save_flow_model.py "$FLUX" \
      --shape flux "${tiny[@]}"
  job ours-flux "$(est 120 150)" "${run[@]}" --shape flux --tool ours --model-dir "$FLUX" --json "$OUT/ours_flux.json"
  [ -n "$FLUX_SCRIPT" ] && job theirs-flux "$(est 120 210)" "${run[@]}" --shape flux --tool theirs \
      --script "$FLUX_SCRIPT" --model-dir "$FLUX" --json "$OUT/theirs_flux.json"
  [ -f "$SD35/model_index.json" ] || job sd35-model "$(est 60 40)" "$PY" bench/save_flow_model.py "$SD35" \
      --shape sd35 "${tiny[@]}"
  job ours-sd35 "$(est 120 80)" "${run[@]}" --shape sd35 --tool ours --model-dir "$SD35" --json "$OUT/ours_sd35.json"
  [ -n "$SD3_SCRIPT" ] && job theirs-sd35 "$(est 120 110)" "${run[@]}" --shape sd35 --tool theirs \
      --script "$SD3_SCRIPT" --model-dir "$SD35" --json "$OUT/theirs_sd35.json"
  if [ "$DEVICE" != cpu ]; then  # bitsandbytes quantizes on CUDA only
    # The tool quantizes through a temporary copy of the denoiser as loaded: from a folder that is fp32, 48 GB for
    # FLUX.1, which beside the 24 GB folder would fill a 64 GB disk. gpu_step.py builds it on the GPU in bf16 (a
    # 24 GB copy) and runs the same quantization and step; the folder, when it is this script's own, goes first.
    [ -z "${FLUX_DIR:-}" ] && rm -rf "$FLUX"
    job step-flux-quantized 330 "$PY" bench/gpu_step.py --device cuda --shape flux --no-prior --no-text-encoder \
        --warmup 3 --steps 10 --variants b1 b1:nf4 b1:int8 --json "$OUT/step_flux_quantized.json"
  fi
}

sd() {
if [ "$DEVICE" = cpu ]; then
  job step-smoke 60 "$PY" bench/gpu_step.py --device cpu --smoke --variants b1 b1:8bit --json "$OUT/step_smoke.json"
  job ours-tiny 60 "$PY" bench/train_speed.py --device cpu --setting a --quick --json "$OUT/ours_tiny.json"
  [ -n "$SCRIPT" ] && job theirs-tiny 60 "$PY" bench/diffusers_baseline.py --device cpu --quick --script "$SCRIPT" \
      --python "$THEIR_PY" --model-dir "$WORK/tiny-model" --json "$OUT/theirs_tiny.json"
else
  # one training step of SD 1.5's shape at 512 px, the tool's own step in one process: rate, FLOPs, MFU, peak memory
  job step-sd15 150 "$PY" bench/gpu_step.py --device cuda --warmup 3 --steps 15 \
      --variants b1 b8 b1:fp16 b8:fp16 b8:8bit b8:gc --json "$OUT/step_sd15.json"
  [ -f "$SD15/model_index.json" ] || job sd15-model 40 "$PY" bench/save_sd15_model.py "$SD15"
  # the seed's job: 512 px, batch 1 + 1, text-encoder LoRA rank 16, 300 steps, 100 class images, 4 samples, fp16
  job ours-sd15 150 "$PY" bench/train_speed.py --device cuda --setting a --model "$SD15" --resolution 512 \
      --mixed-precision fp16 --num-class-images 100 --json "$OUT/ours_sd15.json"
  [ -n "$SCRIPT" ] && job theirs-sd15 200 "$PY" bench/diffusers_baseline.py --device cuda --script "$SCRIPT" \
      --python "$THEIR_PY" --model-dir "$SD15" --resolution 512 --mixed-precision fp16 --num-class-images 100 \
      --workdir "$WORK/theirs" --json "$OUT/theirs_sd15.json"
  # SDXL's shape at 1024 px: the step, batch 1 + 1
  job step-sdxl 90 "$PY" bench/gpu_step.py --device cuda --shape sdxl --warmup 3 --steps 10 --variants b1 b1:8bit \
      --json "$OUT/step_sdxl.json"
  # FLUX.1 [dev]'s and SD3.5 Medium's shapes at 1024 px (random weights, built on the GPU in bf16): batch 1 + 1, with
  # and without gradient checkpointing
  job step-flux 150 "$PY" bench/gpu_step.py --device cuda --shape flux --warmup 2 --steps 8 --variants b1 b1:gc \
      --json "$OUT/step_flux.json"
  job step-sd35 120 "$PY" bench/gpu_step.py --device cuda --shape sd35 --warmup 2 --steps 8 --variants b1 b1:gc \
      --json "$OUT/step_sd35.json"
  # Qwen-Image's shape at 1024 px (20.4 B transformer, 8.3 B Qwen2.5-VL cached then off the GPU): batch 1 + 1 with
  # gradient checkpointing
  job step-qwen-image 180 "$PY" bench/gpu_step.py --device cuda --shape qwen-image --warmup 2 --steps 6 --variants b1:gc \
      --json "$OUT/step_qwen_image.json"
  # Z-Image's and FLUX.2 [klein] 4B's / 9B's shapes at 1024 px (Qwen3 cached, never trained): the 16-24 GB settings
  job step-z-image 150 "$PY" bench/gpu_step.py --device cuda --shape z-image --warmup 2 --steps 8 \
      --variants b1 b1:gc b1:gc:8bit --json "$OUT/step_z_image.json"
  job step-klein-4b 120 "$PY" bench/gpu_step.py --device cuda --shape flux2-klein-4b --warmup 2 --steps 8 \
      --variants b1 b1:gc b1:gc:8bit --json "$OUT/step_klein_4b.json"
  job step-klein-9b 150 "$PY" bench/gpu_step.py --device cuda --shape flux2-klein-9b --warmup 2 --steps 8 \
      --variants b1:gc b1:gc:8bit --json "$OUT/step_klein_9b.json"
  # the script at batch 8 (its class images of theirs-sd15 reused): the rate to set against step-sd15's b8
  [ -n "$SCRIPT" ] && [ -d "$WORK/theirs/class" ] && job theirs-sd15-b8 90 "$PY" bench/diffusers_baseline.py \
      --device cuda --script "$SCRIPT" --python "$THEIR_PY" --model-dir "$SD15" --resolution 512 --mixed-precision fp16 \
      --num-class-images 100 --steps 40 --warmup 10 --workdir "$WORK/theirs" --json "$OUT/theirs_sd15_b8.json" \
      -- --train_batch_size 8
  # last, as compiling takes a minute or two before the first step
  job step-sd15-compile 150 "$PY" bench/gpu_step.py --device cuda --warmup 3 --steps 15 --variants b8:compile \
      --json "$OUT/step_sd15_compile.json"
fi
}

for group in $JOBS; do
  case $group in
    flow | sd) $group ;;
    *) echo "JOBS: unknown group $group (flow, sd)" | tee -a "$OUT/log.txt"; failed=1 ;;
  esac
done
rm -rf "$WORK"
echo "done: $OUT (failures: $failed)" | tee -a "$OUT/log.txt"
exit $failed
