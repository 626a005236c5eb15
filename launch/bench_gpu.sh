#!/usr/bin/env bash
# The training benchmark on one GPU (sized for an 80 GB H100; a few minutes end to end):
#   1. decoder7b: a LLaMA-2-7B-shaped decoder (d=4096, FFN 11008, 32 heads, vocab 32000) with its
#      layers cut to fit (--layers, default 8), batch 8 x 2048, bf16 compute, cuDNN attention,
#      text only;
#   2. stage1:    a LLaVA-1.5-7B-shaped stage-1 step (CLIP ViT-L/14-336 + Vicuna-7B, all 32 layers,
#      only the projector trained), 576 image tokens + text per row, bf16 compute;
#      (LLaVA-1.5 pretrains at 576 image tokens + a short caption; 640 holds both);
# then prints one table of both (also written to bench_results/gpu_table.md).
#
#   launch/bench_gpu.sh                 # on the GPU machine, from anywhere
#   launch/bench_gpu.sh --small         # the same runs on tiny shapes (checks the script on CPU)
#   launch/bench_gpu.sh --variants      # + 4 decoder rows that show each optimization's effect
#   launch/bench_gpu.sh --dry-run       # print the commands only
#
# Needs jax (with CUDA), flax, optax, orbax-checkpoint and ml_collections (no Grain, no dataset);
# if ml_collections is missing it is imported from its wheel in .whl/ (see BUILD.md). A run that
# fails (e.g. out of memory) is retried once with safer settings; the others still run.
set -euo pipefail

cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
small=0
variants=0
dry_run=0
layers=8
steps=5
out_dir="bench_results"
while (($#)); do
  case "$1" in
    --small) small=1 ;;
    --variants) variants=1 ;;
    --dry-run) dry_run=1 ;;
    --layers=*) layers="${1#*=}" ;;
    --steps=*) steps="${1#*=}" ;;
    --out=*) out_dir="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench_gpu.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

run() {
  echo "+ $*"
  if ((dry_run)); then return 0; fi
  "$@"
}

# ml_collections is pure Python: where it is not installed, import it straight from its wheel
# (no pip, no network; works on externally managed Pythons too).
if ! "$python" -c "import ml_collections" 2>/dev/null; then
  wheels=(.whl/ml_collections-*.whl)
  if [[ ! -f "${wheels[0]}" ]]; then
    echo "bench_gpu.sh: ml_collections is not installed and no .whl/ml_collections-*.whl" >&2
    exit 2
  fi
  export PYTHONPATH="$PWD/${wheels[0]}${PYTHONPATH:+:$PYTHONPATH}"
  echo "using ${wheels[0]}"
fi
# Let XLA use most of the GPU's memory (the default preallocates 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

if ((small)); then
  # Tiny shapes, f32, no cuDNN: only checks that every run and the table work (CPU is fine).
  decoder=(--config=configs/finetune.py:demo --config.train.batch_size=2 --config.data.max_len=128)
  stage1=(--config=configs/pretrain.py:demo --config.train.batch_size=2 --config.data.max_len=96)
  fast=()
else
  # Batch 8 x 2048 with `dots` remat (matmul outputs kept, elementwise work recomputed): the
  # larger batch halves the optimizer update's share of the step.
  decoder=(--config=configs/finetune.py:llava15_7b --config.train.batch_size=8
           --config.data.max_len=2048 --config.model.llm.layers="$layers"
           --config.model.llm.vocab_size=32000 --config.model.image_token_id=31999
           --config.model.remat=dots)
  stage1=(--config=configs/pretrain.py:llava15_7b --config.train.batch_size=8
          --config.data.max_len=640 --config.model.remat=dots)
  fast=(--config.model.dtype=bfloat16 --config.model.attention=cudnn)
fi
common=(--steps="$steps" --warmup=2 --torch=no)

mkdir -p "$out_dir"
results=()
failed=()
bench() {
  local name="$1"
  shift
  if run "$python" -m llava_jax.bench.train_step --name="$name" --out="$out_dir/gpu_$name.json" "$@"; then
    results+=("$out_dir/gpu_$name.json")
  else
    failed+=("$name")
    return 1
  fi
}

# If cuDNN attention is refused or memory runs out, one retry with the safer setting (the later
# flag wins), so a single try on a fresh machine still yields a table.
bench decoder7b "${decoder[@]}" "${fast[@]}" "${common[@]}" --images_per_row=0 \
  || bench decoder7b_retry_b4_xla "${decoder[@]}" "${fast[@]}" "${common[@]}" \
       --images_per_row=0 --config.train.batch_size=4 --config.model.attention=xla || true
bench stage1 "${stage1[@]}" "${fast[@]}" "${common[@]}" \
  || bench stage1_retry_full_remat "${stage1[@]}" "${fast[@]}" "${common[@]}" \
       --config.model.attention=xla --config.model.remat=full || true
expected=2
if ((variants)); then
  # One change each against decoder7b, except the XLA-attention row, which changes one thing
  # against the batch-4 row: at batch 8, XLA attention's [B, H, T, T] float32 scores would not fit.
  bench decoder7b_remat_none "${decoder[@]}" "${fast[@]}" "${common[@]}" --images_per_row=0 \
    --config.model.remat=none || true
  bench decoder7b_ce_chunk512 "${decoder[@]}" "${fast[@]}" "${common[@]}" --images_per_row=0 \
    --loss_chunk=512 || true
  bench decoder7b_b4 "${decoder[@]}" "${fast[@]}" "${common[@]}" --images_per_row=0 \
    --config.train.batch_size=4 || true
  bench decoder7b_b4_xla_attention "${decoder[@]}" "${fast[@]}" "${common[@]}" \
    --images_per_row=0 --config.train.batch_size=4 --config.model.attention=xla || true
  expected=6
fi

if ((dry_run)); then exit 0; fi
if ((${#failed[@]})); then echo "bench_gpu.sh: failed runs: ${failed[*]}" >&2; fi
if ((${#results[@]})); then
  echo
  "$python" -m llava_jax.bench.train_step --table "${results[@]}" | tee "$out_dir/gpu_table.md"
fi
# Success if every benchmark produced a row (possibly from its retry).
((${#results[@]} == expected))
