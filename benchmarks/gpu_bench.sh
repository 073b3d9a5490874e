#!/usr/bin/env bash
# The whole benchmark on one GPU in one call of under 8 minutes:
#   1. layer bench (CSRConv vs rolled scan vs naive step-by-step vs nn.Conv), batch 128;
#   2. model bench, preset gpu: training throughput, compile time and peak memory of ordinary vs
#      CSR MobileNetV2 (CIFAR b128/b512, ImageNet 224 b128), ResNet-56 and ResNet-50, fp32/bf16,
#      one process per network (clean peak_bytes_in_use), cases in priority order, stopped at a
#      deadline so the call ends in time (cases not reached are listed as skipped).
# The model table is printed last. JSON rows go to $OUT (the device tool's output folder) or /tmp.
#
# Usage (from the repository root):  bash benchmarks/gpu_bench.sh
# Environment: BUDGET_S (default 450) total seconds for both parts; LAYER_BATCH (default 128).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
budget="${BUDGET_S:-450}"
start=$(date +%s)

python - <<'PY'
import jax
print(f"# jax {jax.__version__}  devices {jax.devices()}", flush=True)
PY

# Layer bench: ~1 minute on an H100; capped so the model bench keeps most of the budget.
timeout 150 python -m benchmarks.layer_bench --batch "${LAYER_BATCH:-128}" --repeats 20 \
  --json "$out/layer_bench.jsonl" > "$out/layer_bench.txt" 2>&1
echo "# layer_bench exit $? after $(( $(date +%s) - start )) s"

left=$(( budget - ($(date +%s) - start) - 15 ))
python -m benchmarks.model_bench --preset gpu --isolate --repeats 5 --deadline-s "$left" \
  --json "$out/model_bench.jsonl" > "$out/model_bench.txt" 2>&1
echo "# model_bench exit $? after $(( $(date +%s) - start )) s"

echo
echo "## layer bench (forward+backward of one layer, ms)"
sed -n '/^| case/,$p' "$out/layer_bench.txt"
[ -s "$out/layer_bench.txt" ] && grep -q '^| case' "$out/layer_bench.txt" || tail -20 "$out/layer_bench.txt"
echo
echo "## model bench (training step, images/s)"
grep -v '^{' "$out/model_bench.txt" | tail -n 40
