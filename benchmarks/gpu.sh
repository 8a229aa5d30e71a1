#!/usr/bin/env bash
# The GPU checks of a session lent a GPU, in one run (about 8 minutes on one H100 / H200): the CUDA
# tests and the GPU figures of benchmarks/README.md, each into a file of its own under $OUT.
#   OUT=gpu-out bash benchmarks/gpu.sh        (PY=python3 by default; the package's deps importable)
set -uo pipefail
OUT=${OUT:-gpu-out}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.csv"
# The Triton kernels on the GPU (no interpreter there), the CUDA trial
$PY -m pytest -q -p no:cacheprovider tests/zo/test_triton.py tests/train/test_cuda_trial.py \
    2>&1 | tee "$OUT/tests.txt"
# Step time and memory: roberta-base fp32 (the CPU's config) and opt-1.3b bf16, in place and in the forward
$PY benchmarks/zo_step.py --device cuda --json >"$OUT/zo_step_roberta.json"
$PY benchmarks/zo_step.py --device cuda --model-config opt-1.3b --dtype bfloat16 --seq 512 --json \
    >"$OUT/zo_step_opt1.3b.json"
# bf16 sweeps against the bandwidth floor (Triton), updates kept, lr-0 drift
$PY benchmarks/precision.py --device cuda --model-config opt-1.3b --drift-steps 200 --skip-learning \
    --json >"$OUT/precision_opt1.3b.json"
# Table 22 as max_memory_allocated (fp16, the paper's dtype)
$PY benchmarks/memory.py --device cuda --dtype float16 --sizes 125m 1.3b 2.7b 6.7b 13b \
    --max-gib 120 --json >"$OUT/memory.json"
# A population of N low-rank probes in one batched forward against N sequential perturbed forwards
$PY benchmarks/population_forward.py --device cuda --json >"$OUT/population_forward.json"
ls -l "$OUT"
