#!/usr/bin/env bash
# Submit the paper reproductions as Ray jobs to a running cluster (dashboard on 127.0.0.1:8265, or a
# tunnel to it: `ray dashboard experiments/cluster.yaml`). Each job is one Tune experiment; watch it
# in the dashboard's job page (its driver log), or with `ray job logs --follow <id>`.
set -euo pipefail
ADDRESS=${RAY_DASHBOARD:-http://127.0.0.1:8265}
PY=${PY:-$(pwd)/.venv/bin/python}   # the venv's python: a bare `python` may be the system one
STORAGE=${STORAGE:-/shared/ray_results}  # a path every node sees (NFS), or s3://bucket/prefix

submit() { ray job submit --address "$ADDRESS" --working-dir . -- "$PY" -m mezo_ray.tune --storage-path "$STORAGE" "$@"; }

case "${1:-help}" in
  table18)  submit --space roberta_table18 --gpus-per-trial 1 ;;          # 2526 trials
  table1)   submit --space opt13b_table1 ;;                              # 134 trials, 1 GPU each (FT: 4)
  table22)  submit --space opt_memory_table22 ;;
  ablation) submit --space roberta_table4_ablation --gpus-per-trial 1 ;;
  demo)     submit --space demo ;;
  *) echo "usage: $0 table18|table1|table22|ablation|demo" ;;
esac
