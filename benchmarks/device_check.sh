#!/usr/bin/env bash
# The GPU check, run on the device machine (see README "GPU checks"):
#   FASTLSTM_COMMIT=<sha> MODE=quick bash benchmarks/device_check.sh
# Every mode builds for sm_90 first and prints a short summary last; full logs go to $OUT (or
# /tmp/fastlstm-device). No mode has been timed end to end since the first look and
# racecheck were added; the estimates add up the steps' timeouts and run 7's times.
#   MODE=quick (QUICK=1 too; ~5 min): the persistent kernels' ptxas report; a first look at
#     p4 (benchmarks/persistent_smoke.py: S1/S2 forward against the step loop and cuDNN, in
#     its own process under a timeout, so a hang costs 90 s and names itself); an error
#     raised inside the op; the GPU tests; ctest; one benchmark pass (cuda, p4 and cuDNN at
#     S1 S2 S3 and the batch-1 step, fwd and fwd+bwd, fp32 and bf16; BENCH_BACKENDS
#     overrides the list).
#   MODE=full (the default; ~10-12 min, more than one 600-second device call): quick's steps
#     with every test instead of the GPU ones, the benchmarks twice (the spread between the
#     runs is the noise), the bf16 error spread, the sanitizers, an fp32 benchmark pass
#     with TF32 on, and the generation benchmark (the CUDA generation op's correctness is in
#     the GPU tests, which quick runs too).
#   MODE=sanitize (~4-6 min): compute-sanitizer memcheck on a small forward+backward and on
#     the CUDA ctest program, racecheck on the persistent kernels.
# So on a 15-minute lease: quick, then sanitize if the minutes allow. Tests run -v, so a
# cut-off run still names what it ran. Triton: fixed tiles unless FASTLSTM_TRITON_AUTOTUNE=1.
set -uo pipefail
OUT=${OUT:-/tmp/fastlstm-device}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
MODE=${MODE:-full}
[ "${QUICK:-0}" = 1 ] && MODE=quick
case $MODE in quick|full|sanitize) ;; *) echo "MODE must be quick, full or sanitize"; exit 2 ;; esac
summary=()
step() { echo; echo "=== $1 ($(date +%T))"; }
record() { summary+=("$1: $2"); }

build() {
  step "environment (mode $MODE)"
  echo "commit: ${FASTLSTM_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, '|', torch.cuda.get_device_name())"
  nvcc --version | tail -2
  step build
  if ! python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  python3 -m fastlstm.info
}

ptxas_report() {
  step "ptxas resource report of the persistent kernels (sm_90)"
  local cuda_inc
  cuda_inc=$(python3 -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))" \
    2> /dev/null || true)
  nvcc -std=c++17 -O3 -arch=sm_90 -Xptxas -v -Icsrc/core ${cuda_inc:+-I"$cuda_inc"} \
    -c csrc/core/lstm_persistent_cuda.cu \
    -o /tmp/lstm_persistent_cuda.o 2>&1 | grep -E "Compiling entry|registers|spill" \
    | sed -E 's/.*lstm_persistent_cuda_cu_[0-9a-f]+_[0-9]+([a-z_]+kernel)I([^E]*)E.*/\1 \2/' \
    | paste - - - | tee "$OUT/ptxas.log"
}

first_look() {
  step "persistent p4, first look (S1, S2 forward; in its own process)"
  timeout 90 python3 benchmarks/persistent_smoke.py --version 4 2>&1 | grep -v Warning \
    | tee -a "$OUT/smoke.log"
  record "persistent smoke p4" \
    "exit ${PIPESTATUS[0]}, $(grep -c MISMATCH "$OUT/smoke.log") mismatches"
}

raise_case() {
  step "an error raised inside the op"
  gcc --version | head -1
  readelf -lW fastlstm/_C*.so | grep -E "EH_FRAME|GNU_STACK"
  python3 benchmarks/raise_case.py > /tmp/raise.log 2>&1
  local rc=$?
  record "error raised inside the op" "exit $rc: $(tail -1 /tmp/raise.log)"
  head -5 /tmp/raise.log
  if [ $rc -ne 0 ] && command -v cuda-gdb > /dev/null; then
    timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 benchmarks/raise_case.py 2>&1 \
      | grep -E "^#|signal" | head -40
  fi
}

tests() {
  if [ "$MODE" = quick ]; then
    step "tests (GPU only)"
    COLUMNS=300 timeout 200 python3 -m pytest tests -n 8 -v -rfE -p no:cacheprovider \
      -k "cuda or triton or gpu" --durations=10 > "$OUT/pytest.log" 2>&1
  else
    step "tests (all, GPU included)"
    COLUMNS=300 timeout 330 python3 -m pytest tests -n 4 -v -rfE -p no:cacheprovider \
      --durations=15 > "$OUT/pytest.log" 2>&1
  fi
  record tests "$(tail -1 "$OUT/pytest.log")"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30
  tail -1 "$OUT/pytest.log"
}

bf16_spread() {
  step "bf16 error spread over seeds (wide_small_batch)"
  timeout 120 python3 benchmarks/bf16_error.py 2>&1 | grep -v Warning | tee "$OUT/bf16_error.log"
}

ctest_build_and_run() {
  step "ctest (sm_90)"
  cmake -S . -B /tmp/fastlstm-cmake -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/ctest.log" 2>&1 &&
    cmake --build /tmp/fastlstm-cmake >> "$OUT/ctest.log" 2>&1 &&
    ctest --test-dir /tmp/fastlstm-cmake --output-on-failure -V >> "$OUT/ctest.log" 2>&1
  record ctest "exit $?, $(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1)"
  grep -E "^[0-9]+: (ok|FAIL)|tests passed|tests failed" "$OUT/ctest.log" | grep -v "^[0-9]*: ok"
}

sanitizers() {
  step "compute-sanitizer memcheck"
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 benchmarks/sanitize_case.py > "$OUT/sanitizer.log" 2>&1
  local rc=$?
  record "memcheck (python fwd+bwd)" \
    "exit $rc, $(grep -c '^========= Invalid' "$OUT/sanitizer.log") invalid accesses"
  tail -3 "$OUT/sanitizer.log"
  [ -x /tmp/fastlstm-cmake/test_step_cuda ] || ctest_build_and_run
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
    /tmp/fastlstm-cmake/test_step_cuda >> "$OUT/sanitizer.log" 2>&1
  record "memcheck (test_step_cuda)" "exit $?"

  step "compute-sanitizer racecheck (shared memory hazards in the persistent kernels)"
  timeout 180 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 benchmarks/sanitize_case.py --persistent-only > "$OUT/racecheck.log" 2>&1
  record "racecheck (persistent)" \
    "exit $?, $(grep -c 'Race reported\|hazard' "$OUT/racecheck.log") hazard lines"
  tail -3 "$OUT/racecheck.log"
}

runs=""
benchmarks() {
  # p4 against cuda and cuDNN (Triton, cuda_eager and p1 were measured in run 7; name them
  # in BENCH_BACKENDS to include them).
  step "benchmarks ($1 pass(es))"
  local bench_args="--bench-backends=${BENCH_BACKENDS:-cuda,cuda_persistent4,cudnn}"
  runs=$(seq 1 "$1")
  for run in $runs; do
    timeout 150 python3 -m pytest benchmarks/test_bench_lstm.py -q -p no:cacheprovider \
      --bench-device=cuda \
      $bench_args --benchmark-json="$OUT/bench$run.json" --benchmark-columns=median,iqr,min \
      >> "$OUT/bench.log" 2>&1
    record "benchmarks run $run" "$(tail -1 "$OUT/bench.log")"
  done
}

generation_bench() {
  # The CUDA generation op (fused_cuda) against the per-character loop and a plain nn.LSTM
  # loop; its correctness is in the GPU tests (test_gpu.py: test_generate_op_*).
  step "generation benchmark"
  timeout 120 python3 -m pytest benchmarks/test_bench_generate.py -q -p no:cacheprovider \
    --bench-device=cuda --benchmark-json="$OUT/bench_generate.json" \
    --benchmark-columns=median,iqr,min >> "$OUT/bench.log" 2>&1
  record "generation benchmark" "$(tail -1 "$OUT/bench.log")"
  python3 benchmarks/compare.py "$OUT/bench_generate.json"
}

tf32_pass() {
  step "benchmarks with TF32 on (p4's fp32 on tensor cores; cuDNN with TF32)"
  timeout 90 python3 -m pytest benchmarks -q -p no:cacheprovider --bench-device=cuda \
    --bench-tf32=on --bench-shapes=S1,S2 --bench-dtypes=fp32 -k "fwd and not fwdbwd" \
    --bench-backends=cuda,cuda_persistent4,cudnn \
    --benchmark-json="$OUT/bench_tf32.json" --benchmark-columns=median,iqr,min \
    >> "$OUT/bench.log" 2>&1
  record "benchmarks with TF32" "$(tail -1 "$OUT/bench.log")"
}

build
case $MODE in
  quick) ptxas_report; first_look; raise_case; tests; ctest_build_and_run; benchmarks 1 ;;
  full) ptxas_report; first_look; raise_case; tests; bf16_spread; ctest_build_and_run
        sanitizers; benchmarks 2; tf32_pass; generation_bench ;;
  sanitize) sanitizers ;;
esac

step summary
printf '%s\n' "${summary[@]}"
if [ -f "$OUT/smoke.log" ]; then
  echo "--- persistent first look"
  grep -E "^p[0-9] " "$OUT/smoke.log"
fi
for run in $(echo $runs | tr ' ' '\n' | sort -r); do
  echo "--- benchmark run $run"
  python3 benchmarks/compare.py "$OUT/bench$run.json"
done
[ -f "$OUT/bench_tf32.json" ] && echo "--- TF32 on" && python3 benchmarks/compare.py "$OUT/bench_tf32.json"
exit 0
