#!/usr/bin/env bash
# Runs experiments/plan.py for every paper config x topology of docs/scaling.md, one compile at a time
# (nice -n $NICE, default 5; $PYTHON, default python), caching each finished phase in docs/plans/ (rerunning skips what is done).
#   bash experiments/plan_sweep.sh            # all
#   bash experiments/plan_sweep.sh 3          # only the first 3 entries
set -u
cd "$(dirname "$0")/.."
M=experiments/model_configs C=experiments/configs/paper
RUNS=(
  # every paper config on one 8-chip topology where it fits first, the 32-chip 7B/8B ones last
  "$M/qwen2.5-math-1.5b.json v5e:2x4 $C/dash_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-7b.json v5p:2x2x2 $C/nsr_qwen2.5_math_7b.py"
  "$M/qwen2.5-math-1.5b.json v5e:2x4 $C/prorl_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-1.5b.json v6e:2x4 $C/prorl_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-7b.json v6e:2x4 $C/nsr_qwen2.5_math_7b.py"
  "$M/qwen2.5-math-1.5b.json v5p:2x2x2 $C/prorl_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-1.5b.json v6e:2x4 $C/dash_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-1.5b.json v5p:2x2x2 $C/dash_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-7b.json v5e:2x4 $C/nsr_qwen2.5_math_7b.py"
  "$M/qwen2.5-0.5b-instruct.json v5e:2x4 $C/dash_qwen2.5_math_1.5b.py"
  "$M/qwen2.5-math-7b.json v5p:2x4x4 $C/nsr_qwen2.5_math_7b.py"
  "$M/qwen3-8b.json v5p:2x4x4 $C/nsr_qwen2.5_math_7b.py"
  "$M/llama-3.1-8b.json v5p:2x4x4 $C/nsr_qwen2.5_math_7b.py"
)
n=${1:-${#RUNS[@]}}
for r in "${RUNS[@]:0:$n}"; do
  set -- $r
  echo "=== $1 $2 $3 $(date -u +%H:%M:%S)"
  nice -n "${NICE:-5}" "${PYTHON:-python}" -m experiments.plan --model "$1" --topology "$2" --config "$3" --cache_dir docs/plans 2>&1 \
    | grep -v -E "^(WARNING|I0000|W0000|E0000|===|learning/)|Failed to find host|TPU_WORKER_HOSTNAMES|sampler.py"
done
