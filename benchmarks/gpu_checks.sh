#!/usr/bin/env bash
# The GPU parts of adamlab's benchmarks as one script, for one GPU machine and a short lease.
#
#   bash benchmarks/gpu_checks.sh              # results under benchmarks/results/gpu_<date>/
#   OUT=/some/dir bash benchmarks/gpu_checks.sh
#   SIZES=1e5 REPEATS=2 STEPS=2 DISPATCH=1,2 TRAIN_REPEATS=1 OUT=/tmp/g \
#     bash benchmarks/gpu_checks.sh                    # a smoke run, on any machine
#
# Needs jax (with its CUDA plugin), flax, optax and ml_collections; no TensorFlow, no datasets
# (every batch is a synthetic in-memory array). Where ml_collections is missing and nothing can
# be installed from the network, carry its wheel (pure Python) and install it first:
#   pip download --no-deps ml_collections -d .whl      # on a machine with a registry
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# What it measures (each a JSON with the machine, plus log.txt with everything printed):
#   optimizer_step.json        ours vs optax, adam/adamw/amsgrad, 1M/10M/50M params as one
#                              array and as ~200 leaves, one step per call and 10 per call,
#                              against the device's own triad (read a, b; write a)
#   optimizer_step_fused.json  the same with ours = the fused variants (optim.create(...,
#                              fused=True)): the share of HBM bandwidth at 200 leaves
#   train_step_digits.json     the digits CNN's train step (8x8x1, batch 64) at 1, 10 and 100
#                              steps per call: steps/s, against one step per call
#   train_step_mnist.json      the same at MNIST's shape (28x28x1, batch 128)
#   train_step_digits_padded.json  the digits step at 100 steps per call as a loop of traced
#                              length (`--padded_chunks`, what CPU/TPU engines run: one program
#                              for every chunk length) instead of a scan of known length: what
#                              XLA's per-iteration host sync costs on the GPU
# Sized for a few minutes on an H100 or H200, most of it compiling (estimated: not yet run there).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu_$(date +%Y%m%d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
sizes=${SIZES:-1e6,1e7,5e7}
repeats=${REPEATS:-30}
steps=${STEPS:-200}
dispatch=${DISPATCH:-1,10,100}
train_repeats=${TRAIN_REPEATS:-11}
log="$out/log.txt"
status=0

run() {
  echo "== $*" | tee -a "$log"
  "$@" 2>&1 | grep -v "^ " | tee -a "$log"  # The JSON is in the file; keep the log short.
  local code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || { echo "== exit $code: $*" | tee -a "$log"; status=1; }
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || true
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$log"

run "$python" benchmarks/optimizer_step.py --optimizers adam,adamw,amsgrad --sizes "$sizes" \
  --repeats "$repeats" --out "$out/optimizer_step.json"
run "$python" benchmarks/optimizer_step.py --optimizers adam,adamw,nadam,amsgrad,adamax --fused \
  --sizes "$sizes" --repeats "$repeats" --out "$out/optimizer_step_fused.json"
for shape in "8,8,1 64 digits" "28,28,1 128 mnist"; do
  set -- $shape
  run "$python" benchmarks/train_step.py --image_shape "$1" --batch_size "$2" \
    --steps_per_dispatch "$dispatch" --steps "$steps" --repeats "$train_repeats" \
    --out "$out/train_step_$3.json"
done
run "$python" benchmarks/train_step.py --image_shape 8,8,1 --batch_size 64 --padded_chunks \
  --steps_per_dispatch "${dispatch##*,}" --steps "$steps" --repeats "$train_repeats" \
  --out "$out/train_step_digits_padded.json"
exit $status
