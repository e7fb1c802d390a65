#!/usr/bin/env bash
# GPU acceptance run for mmscale's Triton kernels, in under 5 minutes:
#   benchmarks/gpu_check.sh DIR
# writes under DIR: environment.txt, copy_bandwidth.json, pytest_gpu.log (+ .xml),
# kernel_speed.json/.log, attention_speed.json/.log and summary.txt. Every step has its
# own time limit, so one slow step cannot eat the others' time; the exit status is
# non-zero when a step failed or timed out (see summary.txt).
set -uo pipefail

DIR=${1:?usage: benchmarks/gpu_check.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.."

export MMSCALE_TEST_DEVICE=cuda        # tests/conftest.py: leave Triton's interpreter off
export TRITON_INTERPRET=0
export TRITON_DEFAULT_FP_FUSION=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/mmscale_triton_cache}"  # compiled once, shared by the steps
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# the interpreter that has torch: $PYTHON, else python3, else python
PY=${PYTHON:-$(command -v python3 || command -v python)}

status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc ($((SECONDS - t0)) s, limit $limit s)" | tee -a "$DIR/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

: > "$DIR/summary.txt"
{
    date -u
    nvidia-smi || true
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('triton', triton.__version__); print(torch.cuda.get_device_name())"
} > "$DIR/environment.txt" 2>&1

# pytest-xdist, where installed, compiles the tests' kernel variants in parallel
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
step copy_bandwidth 15 "$PY" benchmarks/kernel_speed.py --copy-only --json "$DIR/copy_bandwidth.json"
step pytest_gpu 90 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider $XDIST --junitxml="$DIR/pytest_gpu.xml"
# the benchmarks rewrite their JSON after every row: a step cut off at its limit keeps what it measured,
# so the shapes that matter most come first (each needs its own torch.compile of the naive block)
step attention_speed 120 "$PY" benchmarks/attention_speed.py --backends naive,compile,torch,triton \
    --shape 2,256,6,48,48 --shape 8,128,32,96,96 --shape 2,512,3,24,24 --shape 2,1024,2,12,12 \
    --json "$DIR/attention_speed.json"
step kernel_speed 60 "$PY" benchmarks/kernel_speed.py --json "$DIR/kernel_speed.json"

tail -n 3 "$DIR/pytest_gpu.log" | tee -a "$DIR/summary.txt"  # the step lines were printed as they ran
exit $status
