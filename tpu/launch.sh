#!/usr/bin/env bash
# Runs one command on every worker of a TPU VM / pod slice at once (the SPMD launch of a JAX program).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tpu/launch.sh --name NAME --zone ZONE [options] -- COMMAND [ARGS...]
       tpu/launch.sh --name NAME --zone ZONE [options] --command 'SHELL SNIPPET'

Runs the same command on all workers (gcloud compute tpus tpu-vm ssh --worker=all), from the code
directory, with the venv of tpu/setup.sh first on PATH. COMMAND and ARGS reach the workers verbatim
(each argument quoted); --command passes a shell snippet as written (pipes, &&, variables).

  tpu/launch.sh --name my-tpu --zone us-central2-b -- \
    python -m mmrag_jax.main --config=configs/stage2.py:7b --workdir=/mnt/gcs/runs/stage2-7b

Environment on every worker: HF_HUB_OFFLINE=1 and TOKENIZERS_PARALLELISM=false, then each --env. On a
multi-host slice, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are read from the VM
metadata (worker 0 coordinates), so mmrag_jax.parallel.maybe_initialize_distributed() starts the
process group; --no-distributed-env leaves that to jax's own detection.

The workdir must be storage that every worker sees: on a multi-host slice each process writes its
own checkpoint shards. Use the bucket mounted by tpu/setup.sh --bucket (e.g. /mnt/gcs/...); a local
directory only works on single-host slices (v4-8, v5p-8, v5litepod-8).

Required:
  --name NAME            TPU name
  --zone ZONE            its zone

Options:
  --project PROJECT      Cloud project (default: gcloud's core/project)
  --dir DIR              code directory on the workers, relative to home (default: mmrag_jax)
  --env KEY=VALUE        extra environment variable (repeatable)
  --worker WORKERS       all (default), or e.g. 0 or 1,3
  --log-dir DIR          local directory for one log per worker, DIR/<worker>.log
                         (default: logs/tpu/NAME-<time>; `-` streams all workers to this terminal)
  --detach               start the command under nohup and return; each worker logs to
                         DIR/tpu_logs/<time>.log on its own disk
  --no-distributed-env   do not export the JAX_* process-group variables
  --coordinator-port N   port of the jax coordinator on worker 0 (default: 8482)
  --dry-run              print the gcloud commands instead of running them
  -h, --help             this text
EOF
}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" PROJECT="" DIR="mmrag_jax" WORKER="all" LOG_DIR="" SNIPPET="" PORT=8482
DETACH=0 DISTRIBUTED_ENV=1 DRY_RUN=0
ENVS=(HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false)
ARGV=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --env) ENVS+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a value}"; shift 2 ;;
    --command) SNIPPET="${2:?--command needs a value}"; shift 2 ;;
    --coordinator-port) PORT="${2:?--coordinator-port needs a value}"; shift 2 ;;
    --name=* | --zone=* | --project=* | --dir=* | --env=* | --worker=* | --log-dir=* | --command=* | \
      --coordinator-port=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --detach) DETACH=1; shift ;;
    --no-distributed-env) DISTRIBUTED_ENV=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; ARGV=("$@"); break ;;
    *) die "unknown argument '$1' (the command goes after --)" ;;
  esac
done
if [[ -z $NAME || -z $ZONE ]]; then
  usage >&2
  die "--name and --zone are required"
fi
if [[ -n $SNIPPET && ${#ARGV[@]} -gt 0 ]]; then die "give the command either after -- or with --command, not both"; fi
if [[ -z $SNIPPET && ${#ARGV[@]} -eq 0 ]]; then usage >&2; die "no command to run"; fi
[[ $PORT =~ ^[0-9]+$ ]] || die "--coordinator-port must be a number, got '$PORT'"
for assignment in "${ENVS[@]}"; do
  [[ $assignment =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$assignment'"
done

COMMAND="${SNIPPET:-$(quote_command ${ARGV[@]+"${ARGV[@]}"})}"
STAMP="$(date +%Y%m%d-%H%M%S)"

# The script each worker runs: code directory, venv, environment, process-group variables, command.
SCRIPT="set -euo pipefail; cd $(quote_command "$DIR"); export VIRTUAL_ENV=\"\$PWD/.venv\"; \
export PATH=\"\$VIRTUAL_ENV/bin:\$PATH\"; export $(quote_command "${ENVS[@]}")"
if ((DISTRIBUTED_ENV)); then
  # The same facts jax's Cloud TPU cluster detection reads: the worker list and this worker's index.
  SCRIPT+="; if [ -z \"\${JAX_COORDINATOR_ADDRESS:-}\" ]; then \
md=\"http://\${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes\"; \
if endpoints=\$(curl -sf -m 10 -H \"Metadata-Flavor: Google\" \"\$md/worker-network-endpoints\") \
&& [[ \$endpoints == *,* ]]; then first=\${endpoints%%,*}; \
export JAX_COORDINATOR_ADDRESS=\"\${first##*:}:$PORT\"; \
export JAX_NUM_PROCESSES=\$(( \$(tr -cd , <<<\"\$endpoints\" | wc -c) + 1 )); \
export JAX_PROCESS_ID=\$(curl -sf -m 10 -H \"Metadata-Flavor: Google\" \"\$md/agent-worker-number\"); fi; fi"
fi
if ((DETACH)); then
  REMOTE_LOG="tpu_logs/$STAMP.log"
  SCRIPT+="; mkdir -p tpu_logs; nohup bash -c $(quote_command "$COMMAND") > $REMOTE_LOG 2>&1 < /dev/null & \
echo \"\$(hostname): pid \$! logs to $DIR/$REMOTE_LOG\""
else
  SCRIPT+="; $COMMAND"
fi

SSH=(gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE")
if [[ -n $PROJECT ]]; then SSH+=(--project="$PROJECT"); fi
SSH+=(--worker="$WORKER" --command="bash -c $(quote_command "$SCRIPT")")
if [[ $LOG_DIR != "-" ]]; then
  LOG_DIR="${LOG_DIR:-logs/tpu/$NAME-$STAMP}"
  run mkdir -p "$LOG_DIR"
  SSH+=(--output-directory="$LOG_DIR")
  echo "Logs: $LOG_DIR/<worker>.log (e.g. tail -f $LOG_DIR/0.log)" >&2
fi
run "${SSH[@]}"
