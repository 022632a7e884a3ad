#!/usr/bin/env bash
# GPU readiness in one run (under 8 minutes on one CUDA GPU):
#   1. the DARTS search step, first and second order, batch 64, with peak GPU memory
#      (against quark0/darts when REFERENCE names a copy of its cnn/ folder outside this repo);
#   2. child training: each speed switch of the training loop alone (autocast bf16, autocast fp16 with its
#      gradient scaler, channels-last, pinned copies, cuDNN's autotuner) and all of them (the default)
#      against fp32, images/s and peak GPU memory, an NB201 child at C=16, N=5 on CIFAR-sized inputs;
#      then the evaluator against a plain PyTorch loop at the defaults (its overhead);
#   3. a search with --gpus-per-child 0.25: 8 children in flight on one GPU (needs Ray).
#
#   benchmarks/gpu.sh [--dry-run]      # --dry-run: tiny sizes on the CPU, to check the script itself
#   REFERENCE=/tmp/quark0-darts/cnn benchmarks/gpu.sh
#
# Figures go to stdout as JSON lines and text; docs/benchmarks.md records them with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
ref=()
[[ -n "${REFERENCE:-}" ]] && ref=(--reference "$REFERENCE")

if (( dry )); then
  device=cpu; step=(--batch 2 --steps 1 --rounds 1); train=(--epochs 1 --repeats 1 --channels 4 --layers 1)
  switches=(--images 256 --batch-size 64 --epochs 1 --repeats 1 --channels 4 --layers 1)
  search=(--gpus-per-child 0 --cpus-per-child 0.5 --workers 2 --evaluations 4 --epochs 1 --channels 4 --layers 1)
else
  python - <<'PY' || { echo "gpu.sh: no CUDA device (use --dry-run on a CPU machine)" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY
  device=cuda; step=(--batch 64 --steps 3 --rounds 3); train=(--epochs 2 --repeats 3)
  switches=(--images 10000 --batch-size 256 --epochs 2 --repeats 3)
  search=(--gpus-per-child 0.25 --cpus-per-child 1 --workers 8 --evaluations 16 --epochs 2)
fi

echo "== DARTS search step ($device)"
python benchmarks/oneshot_step.py --device "$device" "${step[@]}" "${ref[@]}"

echo "== child training, each speed switch against fp32 ($device; cutout 16 gives pin_memory its copies)"
python benchmarks/train_throughput.py --switches --dataset random32 --cutout 16 --device "$device" "${switches[@]}" \
  | grep -v "^  round"
echo "== child training, TrainEvaluator against a plain loop, default settings ($device)"
python benchmarks/train_throughput.py --device "$device" "${train[@]}" | tail -5

echo "== search with fractional GPUs per child"
if python -c "import ray" 2>/dev/null; then
  out=$(mktemp -d)/run
  /usr/bin/time -f "search wall %e s" nas search --space nb201 --strategy random \
    "${search[@]}" --out "$out" --quiet --json \
    | python -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({k: r[k] for k in ('evaluations', 'failed', 'wall_time_s', 'scheme')}))"
else
  echo "skipped: Ray is not installed here (carry its wheels, see the device tool's README)"
fi
