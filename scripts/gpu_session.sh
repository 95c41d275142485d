#!/usr/bin/env bash
# Everything that needs a GPU, in one place, for a session that has one (see DEVELOPERS notes):
#   bash scripts/gpu_session.sh [doctor|tests|videos|decode|prune|attention|logprobs|all]   (default: all)
# Results (pytest-benchmark JSON, logs) go to $OUT (the device tool's output folder) or bench/.gpu.
# Needs a CUDA build of torch and, for the decode case, nvidia-dali-cuda120 and a CUDA torchcodec;
# flash-attn is used by the attention bench when installed. Each step fits in 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/.gpu}"
mkdir -p "$out"
step="${1:-all}"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
run() { echo "== $*" | tee -a "$out/session.log"; "$@" 2>&1 | tee -a "$out/session.log"; }
if [[ $step == doctor || $step == all ]]; then
  run sage-fast doctor
  run nvidia-smi
fi
if [[ $step == tests || $step == all ]]; then
  # GPU-marked tests fail instead of skipping; kernel tests run compiled (no interpreter on a GPU)
  SAGE_FAST_FAIL_WITHOUT_CUDA=1 run python3 -m pytest -q -m gpu tests
  run python3 -m pytest -q tests/kernels tests/models/test_token_pruning_model.py tests/models/test_packed_attention_model.py
fi
if [[ $step == videos || $step == all ]]; then
  run python3 -m bench.videos  # the decode videos (git-ignored, ~4 GB): made once per machine
fi
if [[ $step == decode || $step == all ]]; then
  run python3 -m pytest bench/bench_decode.py -k "gpu or (uniform_128 and exact)" --benchmark-only \
    --benchmark-json "$out/decode_gpu.json"
fi
if [[ $step == prune || $step == all ]]; then
  run python3 -m pytest bench/bench_token_prune.py --benchmark-only --benchmark-json "$out/token_prune_gpu.json"
fi
if [[ $step == attention || $step == all ]]; then
  run python3 -m pytest bench/bench_packed_attention.py --benchmark-only --benchmark-json "$out/packed_attention_gpu.json"
fi
if [[ $step == logprobs || $step == all ]]; then
  run python3 -m pytest bench/bench_logprobs.py --benchmark-only -s --benchmark-json "$out/logprobs_gpu.json"
fi
echo "results in $out"
