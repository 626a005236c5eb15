#!/usr/bin/env bash
# Train llava_jax on a SLURM GPU cluster: one JAX process per node, all GPUs of the node in it.
#
#   sbatch --nodes=4 launch/gpu_slurm.sh --config=configs/finetune.py:llava15_7b \
#     --workdir=/shared/runs/llava15_7b -- --config.data.path=/shared/data/llava_v1_5_mix665k
#
# llava_jax.main calls jax.distributed.initialize() when SLURM reports several tasks.
# --dry-run prints the srun command instead of running it (outside SLURM it fills in a
# 2-node example environment).
#SBATCH --job-name=llava_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

config="configs/finetune.py:llava15_7b"
workdir=""
python="${PYTHON:-python3}"
dry_run=0
main_flags=()
while (($#)); do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    *) echo "gpu_slurm.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$workdir" ]]; then
  echo "gpu_slurm.sh: --workdir is required (a folder every node can write, e.g. on shared storage)" >&2
  exit 2
fi

if ((dry_run)) && [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # Example allocation so a dry run outside SLURM shows the real command line.
  export SLURM_JOB_ID=0 SLURM_JOB_NODELIST="gpu-node-[01-02]" SLURM_NNODES=2 SLURM_NTASKS=2
fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "gpu_slurm.sh: not inside a SLURM allocation; submit with sbatch (or use --dry-run)" >&2
  exit 2
fi

# jax.distributed.initialize() takes the coordinator (first node), process count and id from
# SLURM_STEP_NODELIST / SLURM_NTASKS / SLURM_PROCID inside srun: nothing to pass by hand.
echo "gpu_slurm.sh: ${SLURM_NTASKS:-1} processes on ${SLURM_JOB_NODELIST}"

# Let XLA overlap collectives with compute on NVIDIA GPUs.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

cmd=(srun --kill-on-bad-exit=1 "$python" -m llava_jax.main --config="$config" --workdir="$workdir"
     "${main_flags[@]}")
if ((dry_run)); then
  printf '+'
  printf ' %q' "${cmd[@]}"
  printf '\n'
else
  "${cmd[@]}"
fi
