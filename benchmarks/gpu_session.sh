#!/usr/bin/env bash
# Issue 19's GPU window as one prepared script: the engine's tests, the paper-shape bench rows and
# the `paper` profile's Part 3 through the headless runner, with what comes back written to $OUT.
#
# HERE (the CPU machine, repository root), before the GPU session:
#     benchmarks/gpu_session.sh prepare [BUNDLE ...]
#   copies MNIST ($HWUTILS_DATA_DIR, else ../shared/data/mnist) into gpu-data/mnist and ignores
#   gpu-data/ in .git/info/exclude, so that MNIST is never committed (by hand:
#   mkdir -p .git/info && echo /gpu-data/ >> .git/info/exclude); writes the commit to
#   gpu-data/COMMIT (the machine gets no .git); copies the bundles that earlier GPU sessions brought
#   back (paper-partial.json.gz) to gpu-data/resume/, imported there before the runner starts.
#
# THERE, with the device tool (one call; 600 s is the most one command may run):
#     run(command="bash benchmarks/gpu_session.sh run 570", carry=["gpu-data"], timeout_s=600)
#   1. the device and the versions;  2. tests/test_engine.py, test_precision.py and test_fused.py,
#   CUDA tests included (at most 120 s);  3. `bench_training.py --members-only`: the paper-shape
#   rows with their floors, FP32/TF32/bf16 products, the plain/fused/compiled update (at most
#   200 s);  4. the bundles in gpu-data/resume/ imported, `python -m hwutils.study --profile paper
#   --estimate` (at most 90 s);  5. the runner until 60 s before the end, then SIGINT: every
#   finished run is cached in results/gpu-paper (ignored), which stays while the machine is warm;
#   6. the bundle exported into $OUT (paper.json.gz when the profile is done, else
#   paper-partial.json.gz), with the bench results, the runner's log (study-runs.jsonl) and this
#   script's whole output (session.log): 6 files at most.
#   The runner trains with TF32 products (the CUDA default) and the plain update. To train with
#   what a bench showed pays, prefix the command: "HWUTILS_UPDATE=compiled bash ..." (the same
#   weights, another speed) or "PRECISION=bf16 bash ..." (the runner's and the export's
#   --precision: a bf16 run is another cached run than the TF32 one).
#
# IF THE PROFILE DID NOT FINISH: call again AT ONCE (a machine goes back 30 s after a call ends,
# and its cache with it) with what is left of the 15 device minutes (start-up counts, 1-2 min; the
# free status call gives budget_left_s: ask for about that less 60 s, e.g. 150 when 240 are left):
#     run(command="bash benchmarks/gpu_session.sh continue 150", carry=["gpu-data"], timeout_s=180)
#   (no tests, no bench: the runner resumes from the cache, then the export), then give_back.
#   A run stopped part-way is lost: the cache keeps whole runs, and a stacked group is one unit
#   (the control and the two dropout methods: 9 runs x 1,000,000 steps). A later session goes on
#   from the bundle this one brought back: `prepare path/to/paper-partial.json.gz` here, then `run`.
#
# HERE, to check this script's logic without a GPU (the smoke profile end to end on the CPU, into
# a temporary $OUT unless one is set; about 1.5 minutes on 2 busy cores):
#     benchmarks/gpu_session.sh smoke
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-help}
SECONDS_ASKED=${2:-570}
PY=${PYTHON:-python3}
BEGAN=$(date +%s)

usage() { sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
left() { echo $(( BEGAN + SECONDS_ASKED - $(date +%s) )); }
say() { echo "== $(date -u +%H:%M:%S) [+$(( $(date +%s) - BEGAN ))s] $*"; }
# capped N CMD...: CMD with a limit of N seconds, never past what is left less the export's reserve
capped() { local cap=$1; shift; local t; t=$(( $(left) - RESERVE )); (( t > cap )) && t=$cap
           if (( t < 10 )); then say "skipped (no time left): $*"; return 124; fi
           timeout -k 10 "$t" "$@"; }

prepare() {
    local data=${HWUTILS_DATA_DIR:-../shared/data/mnist}
    if [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
        echo "prepare: no MNIST files in $data: set HWUTILS_DATA_DIR" >&2; exit 2
    fi
    mkdir -p .git/info gpu-data/mnist gpu-data/resume
    grep -qxF /gpu-data/ .git/info/exclude 2>/dev/null || echo /gpu-data/ >> .git/info/exclude
    cp "$data"/*-ubyte.gz gpu-data/mnist/
    git rev-parse HEAD | tr -d '\n' > gpu-data/COMMIT
    [ -n "$(git status --porcelain --untracked-files=no)" ] && echo -n "+changes" >> gpu-data/COMMIT
    rm -f gpu-data/resume/*.json.gz
    for b in "${@:2}"; do cp "$b" gpu-data/resume/; done
    if ! git check-ignore -q gpu-data/mnist/train-images-idx3-ubyte.gz; then
        echo "prepare: gpu-data/ is not ignored: add /gpu-data/ to .git/info/exclude" >&2; exit 2
    fi
    echo "prepare: $(du -sh gpu-data | cut -f1) in gpu-data, $(ls gpu-data/resume | wc -l) bundles" \
         "to resume from; commit $(cat gpu-data/COMMIT)"
    echo 'now: run(command="bash benchmarks/gpu_session.sh run 570", carry=["gpu-data"], timeout_s=600)'
}

case "$MODE" in
    prepare) prepare "$@"; exit $? ;;
    run|continue) PROFILE=paper; RESULTS=results/gpu-paper; DATA=gpu-data/mnist; BENCH_ROUNDS=2 ;;
    smoke) PROFILE=smoke; RESULTS=$(mktemp -d); DATA=${HWUTILS_DATA_DIR:-../shared/data/mnist}
           BENCH_ROUNDS=1; SECONDS_ASKED=${2:-300}; export CUDA_VISIBLE_DEVICES=""
           OUT=${OUT:-$(mktemp -d)}
           [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python} ;;
    *) usage; [ "$MODE" = help ] && exit 0 || exit 2 ;;
esac
if [ -z "${OUT:-}" ]; then
    echo "gpu_session.sh $MODE: \$OUT is not set (the device tool sets it; here use 'smoke')" >&2; exit 2
fi
mkdir -p "$OUT" "$RESULTS"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HWUTILS_DATA_DIR=$(cd "$DATA" && pwd)
[ -f gpu-data/COMMIT ] && [ "$MODE" != smoke ] && export HWUTILS_COMMIT=$(cat gpu-data/COMMIT)
RESERVE=60  # seconds kept for the export at the end
PICK=(--profile "$PROFILE" --results-dir "$RESULTS" ${PRECISION:+--precision "$PRECISION"})
STUDY=(-m hwutils.study "${PICK[@]}")

say "gpu_session.sh $MODE: profile $PROFILE, $SECONDS_ASKED s, results in $RESULTS, out $OUT," \
    "update ${HWUTILS_UPDATE:-plain}, precision ${PRECISION:-the device default}"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY - <<'EOF'
import platform, numpy, pandas, torch
try:
    import triton; tri = triton.__version__
except ImportError:
    tri = "absent"
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {tri}, numpy {numpy.__version__}, pandas {pandas.__version__}; device: {cuda}; "
      f"{torch.get_num_threads()} threads")
EOF
(( $? == 0 )) || { say "stopped: $PY cannot import torch, numpy and pandas"; exit 2; }

if [ "$MODE" != continue ]; then
    TESTS=(tests/test_engine.py tests/test_precision.py tests/test_fused.py)
    [ "$MODE" = smoke ] && TESTS=(tests/test_roofline.py)  # the suite runs here anyway: the step only
    say "tests: ${TESTS[*]}"
    capped 120 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"; say "tests: rc $?"
    say "bench: the paper-shape rows and their floors"
    capped 200 $PY benchmarks/bench_training.py --members-only --rounds "$BENCH_ROUNDS" \
        --results-dir "$OUT"
    say "bench: rc $?"
fi
for b in gpu-data/resume/*.json.gz; do  # runs already in the folder are left as they are
    [ -f "$b" ] && [ "$MODE" != smoke ] || continue
    $PY -m hwutils.study import "$b" --results-dir "$RESULTS"; say "import $b: rc $?"
done
if [ "$MODE" != continue ]; then
    say "estimate"
    capped 90 $PY "${STUDY[@]}" --estimate; say "estimate: rc $?"
fi

say "runner: until $RESERVE s before the end ($(( $(left) - RESERVE )) s)"
RUN_FOR=$(( $(left) - RESERVE ))
if (( RUN_FOR >= 30 )); then
    timeout -s INT -k 20 "$RUN_FOR" $PY "${STUDY[@]}"; RC=$?
    say "runner: rc $RC (0: the profile is done; 124: stopped at the time limit, finished runs cached)"
else
    say "runner: skipped, $RUN_FOR s left"
fi

say "export"
if $PY -m hwutils.study export "${PICK[@]}" --out "$OUT/$PROFILE.json.gz"; then
    say "export: the whole profile in $OUT/$PROFILE.json.gz"
else
    $PY -m hwutils.study export "${PICK[@]}" --out "$OUT/$PROFILE-partial.json.gz" --partial
    say "export (partial): rc $?; 'prepare' $PROFILE-partial.json.gz for the next session"
fi
[ -f "$RESULTS/study-runs.jsonl" ] && cp "$RESULTS/study-runs.jsonl" "$OUT/"
[ "$MODE" = smoke ] && rm -rf "$RESULTS"
say "done; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
sleep 1  # tee writes the last lines of session.log
