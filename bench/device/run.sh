#!/usr/bin/env bash
# bench/device/run.sh — the CUDA backend's proof on a GPU machine (one run, about 6 minutes):
# the test suite with the cuda backend beside native (conv arithmetic in fp32 so that the 1e-4
# tolerances of the CPU tests hold; test/cuda.test.ts checks TF32, fp16 and bf16 against stated
# tolerances), then the GPU benchmark beside PyTorch and CuPy on the same card in the same run.
# The machine has no Node.js and no registry: `node scripts/device-pack.mjs` makes .devpack/
# here (Node, the test and runtime dependencies), and the call carries it
# with dist/ and the two built addons. Logs and bench.md go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bhsd-out}
mkdir -p "$OUT"
P=.devpack
T0=$(date +%s)
step() { echo "== $(( $(date +%s) - T0 ))s: $*"; }

step unpack
mkdir -p /tmp/bhsd-node && xz -dc $P/node.xz >/tmp/bhsd-node/node && chmod +x /tmp/bhsd-node/node
export PATH=/tmp/bhsd-node:$PATH
[ -d node_modules ] || { mkdir node_modules && xz -dc $P/nm.tar.xz | tar -x -C node_modules; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
node -e "import('./dist/index.js').then(m=>console.log(JSON.stringify(m.backendInfo(),null,1)))" 2>&1 | tee "$OUT/backends.json"

step "tests (native and cuda)"
FILES=$(ls test/*.test.ts | grep -v -e native-core -e package)
BHSD_TEST_BACKENDS=native,cuda BHSD_CUDA_PRECISION=fp32 BHSD_SKIP_TSC=1 timeout "${TEST_TIMEOUT:-240}" \
  node scripts/run-tests.mjs $FILES >"$OUT/tests.log" 2>&1
echo "tests exit $?"
grep -E "^not ok|^# |passed," "$OUT/tests.log" | head -60
grep -A12 "^not ok" "$OUT/tests.log" | head -120

step "benchmark inputs"
TSX="node node_modules/tsx/dist/cli.mjs"
$TSX bench/device/gpu.ts inputs /tmp/bhsd-dev 2>&1 | tail -3
step "PyTorch and CuPy references"
PYTHONUNBUFFERED=1 timeout "${REF_TIMEOUT:-180}" python3 bench/device/reference.py /tmp/bhsd-dev 2>&1 | tee "$OUT/reference.log" | tail -20
step "bhsd on the GPU"
timeout "${BENCH_TIMEOUT:-180}" $TSX bench/device/gpu.ts bench /tmp/bhsd-dev 2>&1 | tee "$OUT/bench.log"
cp /tmp/bhsd-dev/bench.md "$OUT/" 2>/dev/null
if [ "${VARIANTS:-0}" = 1 ]; then
  step "where a convolution's time goes"
  timeout 120 $TSX bench/device/variants.ts 2>&1 | tee "$OUT/variants.log"
fi
step done
