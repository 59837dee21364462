#!/usr/bin/env bash
# Every GPU check of issues 5 and 6 in ONE call on a lent GPU machine (torch with CUDA, cuda-python, ONNX
# Runtime for the CPU, no TensorRT, no network), in stages with hard time limits. Each stage writes its log
# and JSON as it goes, and after each stage everything is packed into $OUT/gpu_session.tgz (the device tool
# brings back at most 8 files) with $OUT/summary.txt beside it, so a stage that runs out of time, or a call
# stopped from outside, loses only that stage. Unpack: tar -xzf gpu_session.tgz -C DIR
#
# Here, once:       bash benchmarks/gpu_wheels.sh                    (the wheels that machine lacks -> .whl/)
# The device call:  command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 570
# Dry run (CPU):    GPU_SESSION_DEVICE=cpu OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh   (from a clone:
#                   tiny sizes, the same plumbing; the CUDA-graph rows then compare eager with eager)
#
# Stages (seconds at most; all together stay under GPU_SESSION_BUDGET, default 540), files in the archive:
#   env        GPU, driver, python and package versions                        env.log
#   tests      the test files with CUDA-only tests (they unskip there)         tests.log, tests.xml
#   graphs     benchmarks/gpu_check.py: CUDA-graph parity and speed-ups,       gpu_check.json, graphs.log
#              shapes, digits, random ViT-B-32 + DCGAN-64, batch 1, 8, 32
#   reference  the reference loop vs tr0n-rt on random ViT-B-32 + StyleGAN2-1024, T = 100, A = 50:
#              batch 1 latency and batch 16 throughput (the 30x / 3x targets)  reference.json/.log
#   flops      the step's FLOPs and the achieved fraction of the GPU's peak    speed-b*.json, flops.json/.log
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
: "${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT"
RES=$(mktemp -d /tmp/gpu-session.XXXX)  # every log and JSON; packed into $OUT after each stage
pack() { tar -czf "$OUT/.gpu_session.tgz" -C "$RES" . && mv "$OUT/.gpu_session.tgz" "$OUT/gpu_session.tgz"; }
trap 'pack; rm -rf "$RES"' EXIT  # also when stopped from outside: the stage in flight keeps its rows so far
DEVICE=${GPU_SESSION_DEVICE:-cuda}
BUDGET=${GPU_SESSION_BUDGET:-540}
START=$(date +%s)
export PYTHONUNBUFFERED=1 TR0N_RT_CACHE=/tmp/tr0n-rt-cache

# stage NAME SECONDS CMD...: runs CMD for at most min(SECONDS, what is left of the budget), log in $RES/NAME.log
stage() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then echo "== $name: skipped, ${left}s of the budget left" | tee -a "$OUT/summary.txt"; return; fi
  echo "== $name (at most ${limit}s)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$RES/$name.log" 2>&1  # "$@" may be a function
  local rc=$?
  { echo "== $name: exit $rc in $(( $(date +%s) - t0 ))s"; tail -n 25 "$RES/$name.log"; } | tee -a "$OUT/summary.txt"
  pack
}

# The project without pip (the GPU machine): tr0n_rt.export is the folder export/ (pyproject's package-dir),
# so link it in there. Where the project is installed, it is importable already and nothing is linked.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import tr0n_rt.export" 2>/dev/null || [ -e tr0n_rt/export ] || ln -s ../export tr0n_rt/export
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

env_report() {
  date -u; uname -a; nvidia-smi 2>&1 | head -n 15
  python3 - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "numpy", "onnx", "onnxruntime", "open_clip", "safetensors", "cuda.bindings", "tensorrt", "polygraphy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "present"))
    except Exception as e:
        print(m, "missing:", type(e).__name__, e)
import torch
print("cuda available", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
}
export -f env_report
stage env 60 env_report

if [ "$DEVICE" = cuda ]; then
  SG2_RES=1024; REF_PROMPTS=16; REF_LATENCY=4; STEPS=100; COPIES=50; FLOP_BATCH="1 16"; CPU_PEAK=""
  GC_ARGS="--batch 1 8 32 --steps 10 --copies 4 --warmup 2 --repeats 5"
else  # dry run: the same stages at toy sizes
  SG2_RES=64; REF_PROMPTS=2; REF_LATENCY=1; STEPS=2; COPIES=2; FLOP_BATCH="1 2"; CPU_PEAK="--measure-cpu"
  GC_ARGS="--batch 1 2 --steps 2 --copies 2 --warmup 1 --repeats 1"
fi

stage tests 90 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graphs.py tests/test_dlpack.py \
  --junitxml="$RES/tests.xml"

stage graphs 150 python3 benchmarks/gpu_check.py --device "$DEVICE" $GC_ARGS --budget 130 --out "$RES/gpu_check.json"

SG2=/tmp/vitb32-sg2-$SG2_RES
stage pipeline 60 python3 benchmarks/random_pipeline.py --out "$SG2" --clip ViT-B-32 --generator stylegan2 \
  --resolution "$SG2_RES"

stage reference 180 python3 benchmarks/reference_speed.py --pipeline "$SG2" --device "$DEVICE" --preset paper \
  --steps "$STEPS" --copies "$COPIES" --prompts "$REF_PROMPTS" --latency-prompts "$REF_LATENCY" --backends torch \
  --json "$RES/reference.json"

flops() {  # one speed.py per batch (each writes its JSON when done), so a timeout keeps the batches before it
  for b in $FLOP_BATCH; do
    python3 benchmarks/speed.py --pipeline "$SG2" --device "$DEVICE" --backends torch --batch "$b" \
      --copies "$COPIES" --warmup 2 --repeats 5 --json "$RES/speed-b$b.json" || break
  done
  python3 benchmarks/flops.py --pipeline "$SG2" --batch $FLOP_BATCH --copies "$COPIES" \
    --timings "$RES"/speed-b*.json $CPU_PEAK --json "$RES/flops.json"
}
export -f flops
export SG2 DEVICE COPIES FLOP_BATCH CPU_PEAK RES
stage flops 90 flops

echo "== done in $(( $(date +%s) - START ))s of a ${BUDGET}s budget" | tee -a "$OUT/summary.txt"
ls -la "$OUT" "$RES"
