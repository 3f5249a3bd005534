#!/usr/bin/env bash
# Runs every GPU measurement in one go on the lent GPU machine (the `device` tool), e.g.
#   run(command="bash scripts/device_bench.sh", carry=[".whl"])
# Wheels for packages the GPU image lacks travel in .whl/ (see docs/BENCHMARKS.md for how they are
# fetched). Each step writes its output under $OUT; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kvstore-device-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/client:$PWD/kernels
else
  export PYTHONPATH=$PWD:$PWD/client:$PWD/kernels
fi
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 t=$2; shift 2
  echo "===== $name"
  timeout "$t" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "===== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, grpc; print('torch', torch.__version__, 'triton', triton.__version__, 'grpc', grpc.__version__, 'cuda', torch.cuda.is_available())"
STEPS=${STEPS:-"gpu_tests kernels quant store blend"}
for s in $STEPS; do
  case $s in
    gpu_recv) step gpu_recv 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/client/test_receive_gpu.py -o addopts="" --basetemp=/tmp/pt ;;
    remote) step remote ${REMOTE_TIMEOUT:-560} python3 -m kvstore.cli.main bench remote --json-out "$OUT/remote.json" ${REMOTE_ARGS:-} ;;
    gpu_tests) step gpu_tests 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu tests/kernels -o addopts="" ;;
    kernels) step kernels 120 python3 -m kvstore_kernels.bench_gpu ;;
    quant) [ -f kernels/kvstore_kernels/bench_quant_gpu.py ] && step quant 300 python3 -m kvstore_kernels.bench_quant_gpu ${QUANT_ARGS:-} --json-out "$OUT/quant.json" ;;
    store) step store 400 python3 -m kvstore.cli.main bench store --systems raw-socket kvstore kvstore-shm kvstore-alloc kvstore-grpc --mib-per-case 2048 ;;
    blend)  # KV served by a kvstore node's CPU tier on this machine, then in-process for contrast
      python3 -m kvstore.cli.main serve --port 50061 --data-port 50062 --gpu-device none --shared-memory \
        --cpu-capacity-bytes 24GiB --disk-capacity-bytes 0 --data-dir /tmp/kvs-blend \
        >"$OUT/blend_node.log" 2>&1 &
      node=$!
      python3 -c "from kvstore.procs import wait_port; wait_port('127.0.0.1', 50061, 60); wait_port('127.0.0.1', 50062, 60)" \
        || { echo "node did not start"; cat "$OUT/blend_node.log"; }
      step blend_node 420 python3 -m kvstore.bench.blend_gpu --store-address 127.0.0.1:50061 \
        --out "$OUT/blend_gpu_node.json" ${BLEND_ARGS:-}
      kill $node
      [ "${BLEND_INPROC:-0}" = 1 ] && step blend_inproc 300 python3 -m kvstore.bench.blend_gpu \
        --out "$OUT/blend_gpu_inproc.json" ;;
  esac
done
