#!/usr/bin/env bash
# Train llava_jax on a Cloud TPU VM or pod slice.
#
# Creates (or reuses) the TPU, puts the code on every worker, installs jax[tpu] plus
# requirements.txt there, and runs `python -m llava_jax.main` on all workers at once
# with the workdir on a gs:// bucket. --dry-run prints every command instead of running it.
#
#   launch/tpu_pod.sh --name=llava-v5p --zone=us-east5-a --accelerator=v5p-64 \
#     --bucket=gs://my-bucket/llava --config=configs/finetune.py:llava15_7b --spot \
#     -- --config.data.path=gs://my-bucket/data/llava_v1_5_mix665k
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name=NAME --zone=ZONE --bucket=gs://BUCKET/PATH [options] [-- MAIN_FLAGS...]

  --name=NAME            TPU VM / queued resource name (required)
  --zone=ZONE            e.g. us-east5-a (required)
  --bucket=gs://...      where the workdir lives; checkpoints and metrics go there (required)
  --accelerator=TYPE     e.g. v4-32, v5litepod-16, v5p-64, v6e-16 (default v4-8)
  --version=RUNTIME      TPU software version (default tpu-ubuntu2204-base)
  --project=PROJECT      GCP project (default: gcloud's configured project)
  --config=PATH[:PRESET] training config (default configs/finetune.py:llava15_7b)
  --run-name=NAME        subfolder of --bucket for this run (default: --name)
  --repo=URL             git URL to clone on the workers (default: copy this checkout with scp)
  --branch=BRANCH        branch or commit to check out with --repo (default main)
  --spot                 spot capacity (cheapest, can be preempted)
  --preemptible          preemptible capacity (older TPU types)
  --queued               ask through a queued resource (waits for capacity) instead of creating now
  --dry-run              print every command, run nothing
Flags after `--` go to `python -m llava_jax.main` unchanged.
EOF
}

name="" zone="" bucket="" accelerator="v4-8" version="tpu-ubuntu2204-base" project=""
config="configs/finetune.py:llava15_7b" run_name="" repo="" branch="main"
spot=0 preemptible=0 queued=0 dry_run=0
main_flags=()

while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --run-name=*) run_name="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    --branch=*) branch="${1#*=}" ;;
    --spot) spot=1 ;;
    --preemptible) preemptible=1 ;;
    --queued) queued=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; main_flags=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

for required in name zone bucket; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_pod.sh: --${required} is required" >&2
    exit 2
  fi
done
if [[ "$bucket" != gs://* ]]; then
  echo "tpu_pod.sh: --bucket must be a gs:// path (every worker writes to it), got '$bucket'" >&2
  exit 2
fi
if ((spot && preemptible)); then
  echo "tpu_pod.sh: choose one of --spot and --preemptible" >&2
  exit 2
fi
run_name="${run_name:-$name}"
workdir="${bucket%/}/${run_name}"

# Runs a command, or prints it (shell-quoted, so it can be pasted) under --dry-run.
run() {
  if ((dry_run)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus)
common=(--zone="$zone")
if [[ -n "$project" ]]; then
  common+=(--project="$project")
fi
capacity=()
if ((spot)); then capacity+=(--spot); fi
if ((preemptible)); then capacity+=(--preemptible); fi

# 1. The TPU: reuse it when it exists (a dry run assumes it does not).
exists=0
if ((!dry_run)) && "${gcloud_tpu[@]}" tpu-vm describe "$name" "${common[@]}" >/dev/null 2>&1; then
  exists=1
  echo "tpu_pod.sh: reusing TPU '$name'"
fi
if ((!exists)); then
  if ((queued)); then
    run "${gcloud_tpu[@]}" queued-resources create "$name" "${common[@]}" \
      --node-id="$name" --accelerator-type="$accelerator" --runtime-version="$version" \
      "${capacity[@]}"
    if ((!dry_run)); then
      echo "tpu_pod.sh: waiting for queued resource '$name' to become ACTIVE"
      until [[ "$("${gcloud_tpu[@]}" queued-resources describe "$name" "${common[@]}" \
                 --format='value(state.state)')" == "ACTIVE" ]]; do
        sleep 30
      done
    fi
  else
    run "${gcloud_tpu[@]}" tpu-vm create "$name" "${common[@]}" \
      --accelerator-type="$accelerator" --version="$version" "${capacity[@]}"
  fi
fi

ssh_all=("${gcloud_tpu[@]}" tpu-vm ssh "$name" "${common[@]}" --worker=all)

# 2. The code on every worker.
if [[ -n "$repo" ]]; then
  run "${ssh_all[@]}" --command="rm -rf ~/llava_jax && git clone --quiet '$repo' ~/llava_jax && git -C ~/llava_jax checkout --quiet '$branch'"
else
  here="$(cd "$(dirname "$0")/.." && pwd)"
  archive="/tmp/llava_jax_${run_name}.tar.gz"
  run tar -C "$here" --exclude=.git --exclude=workdir -czf "$archive" .
  run "${gcloud_tpu[@]}" tpu-vm scp "$archive" "$name:/tmp/llava_jax.tar.gz" "${common[@]}" --worker=all
  run "${ssh_all[@]}" --command="rm -rf ~/llava_jax && mkdir -p ~/llava_jax && tar -C ~/llava_jax -xzf /tmp/llava_jax.tar.gz"
fi

# 3. Install on every worker into ~/venv. TPU images ship an older system Python, so uv
#    brings a Python 3.11 interpreter; jax[tpu] at requirements.txt's jax version pulls libtpu;
#    gcsfs lets Orbax and the metrics writer reach gs://.
jax_version="$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")"
run "${ssh_all[@]}" --command="cd ~/llava_jax && python3 -m pip install -q -U uv && python3 -m uv venv -q -p 3.11 ~/venv && python3 -m uv pip install -q -p ~/venv/bin/python -r requirements.txt 'jax[tpu]==${jax_version}' gcsfs"

# 4. Train: one process per worker; jax.distributed.initialize() finds the pod from the TPU metadata.
train_cmd="cd ~/llava_jax && ~/venv/bin/python -m llava_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")"
for flag in "${main_flags[@]}"; do
  train_cmd+=" $(printf '%q' "$flag")"
done
run "${ssh_all[@]}" --command="$train_cmd"

echo "tpu_pod.sh: workdir $workdir"
echo "tpu_pod.sh: delete the TPU when done: ${gcloud_tpu[*]} tpu-vm delete $name --zone=$zone"
