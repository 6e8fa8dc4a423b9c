#!/usr/bin/env bash
# The fast path's GPU checks, prepared for a lent H100/H200 (about 8 minutes there).
#
#   bash bench/gpu_check.sh wheels   # here: the wheels the GPU machine lacks, and the lyric vocabulary, into .whl/
#   bash bench/gpu_check.sh run      # there (device tool: carry [".whl"], timeout_s 540)
#
# `run` prints and writes under $OUT: v1 at 10 and 240 s / 27 steps on the full-size architecture
# in bfloat16 (real-time factor, per-stage split, CUDA max allocated; the goal is >= 200x and
# <= 8 GB), the same 240 s with --compile and in offload mode, bfloat16 against float32 on the
# same GPU (the DiT's velocity and a whole song's latents), 1.5 XL turbo at 10 and 240 s / 8 steps
# (goal < 1 s), and last v1 at 10 s with the DiT's blocks streamed (sequential mode). The
# machine's image has torch but not diffusers nor our pins of transformers.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 transformers==5.23.0 tokenizers==0.23.3 huggingface_hub==2.4.0
        soundfile==0.14.0 pydub==0.25.1 py3langid==0.3.0 num2words==0.5.14
        pypinyin==0.53.0 hangul-romanize==0.1.0)

case "${1:-}" in
wheels)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" 2>/dev/null || exit 1
    vocab=${ACE_STEP_LYRIC_VOCAB:-../shared/fixtures/ace_step_v1_tiny/lyric_vocab.json}
    cp "$vocab" .whl/lyric_vocab.json
    du -sh .whl
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export ACE_STEP_LYRIC_VOCAB=$PWD/.whl/lyric_vocab.json
    out=${OUT:-/tmp/gpu-check}
    mkdir -p "$out"
    work=/tmp/ace-step-bench
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 bench/speed.py --device cuda --size full --durations 10 240 --work $work \
        --json "$out/v1.json" 2>&1 | tee "$out/v1.log"
    python3 bench/speed.py --device cuda --size full --durations 240 --compile --work $work \
        --json "$out/v1_compiled.json" 2>&1 | tee -a "$out/v1.log"
    python3 bench/speed.py --device cuda --size full --durations 240 --memory offload \
        --work $work --json "$out/v1_offload.json" 2>&1 | tee -a "$out/v1.log"
    python3 bench/bfloat16.py --device cuda --frames 323 2584 --work $work 2>&1 | tee "$out/bf16.log"
    python3 bench/speed_v15.py --device cuda --size xl --quick --work $work \
        --json "$out/v15.json" 2>&1 | tee "$out/v15.log"
    # Last, as the least needed figure: the DiT's blocks streamed (sequential mode).
    python3 bench/speed.py --device cuda --size full --durations 10 --memory sequential \
        --work $work --json "$out/v1_sequential.json" 2>&1 | tee -a "$out/v1.log"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh wheels|run" >&2
    exit 64
    ;;
esac
