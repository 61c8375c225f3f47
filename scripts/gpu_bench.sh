#!/usr/bin/env bash
# On the GPU machine (repo root, .whl carried): install the carried wheels, check the fast paths against the
# plain paths on CUDA, then take the GPU figures; everything lands in $OUT (or results/bench).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-results/bench}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/train/test_logps.py tests/eval/test_engine.py 2>&1 | tail -5 | tee "$out/cpu-tests.txt"
python3 -m kto_bench bench train --against trl --model-config qwen2.5-0.5b 2>&1 | tail -40
python3 -m kto_bench bench eval --against lm-eval-hf --model-config qwen2.5-0.5b 2>&1 | tail -20
cp results/bench/*qwen2.5-0.5b* "$out/" 2>/dev/null || true
