#!/usr/bin/env bash
# One run of bench/gpu_extract.py on the lent GPU machine, as the `device` tool's command:
#   run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=540)
# after bench/device_wheels.sh filled .whl/ here. Installs the wheels, prints the machine,
# then JAX (float32, bfloat16; batches 64-512; 16 decode threads, then fewer, to find how many
# cores feed the chip), then PyTorch, each table also saved under $OUT. About 5 minutes.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
timeout 300 python3 -m bench.gpu_extract --backend jax --threads 16 8 4 \
  2>&1 | grep -v "^I0000\|^WARNING" | tee "$out/jax.txt"
timeout 180 python3 -m bench.gpu_extract --backend torch --threads 16 --batch-sizes 128 512 \
  2>&1 | grep -v "^I0000\|^WARNING" | tee "$out/torch.txt"
