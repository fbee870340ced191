#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice, directly or through a queued resource.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tpu/create.sh --name NAME --zone ZONE --type ACCELERATOR_TYPE [options] [-- EXTRA_GCLOUD_FLAGS...]

Creates a TPU VM / pod slice with `gcloud compute tpus tpu-vm create`, or with --queued a queued
resource (`gcloud compute tpus queued-resources create`) that waits for capacity.

Required:
  --name NAME          TPU name (with --queued also the queued-resource id)
  --zone ZONE          a zone that offers the type (gcloud compute tpus accelerator-types list --zone=ZONE)
  --type TYPE          accelerator type, e.g. v4-8, v4-32, v5litepod-16, v5litepod-64, v5p-8, v5p-32, v6e-16

Options:
  --version VERSION    TPU software (runtime) version; default from the type:
                         v2/v3/v4: tpu-ubuntu2204-base   v5litepod (v5e): v2-alpha-tpuv5-lite
                         v5p: v2-alpha-tpuv5             v6e: v2-alpha-tpuv6e
  --project PROJECT    Cloud project (default: gcloud's core/project)
  --spot               Spot capacity: cheaper, may be preempted at any time, cannot be restarted
  --queued             request the slice as a queued resource (check it with the printed describe command)
  --dry-run            print the gcloud commands instead of running them
  -h, --help           this text

Anything after `--` is appended to the gcloud command (e.g. -- --network=NET --reserved).
EOF
}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

default_runtime_version() {
  case "$1" in
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    *) die "no default --version for accelerator type '$1'; pass --version" ;;
  esac
}

NAME="" ZONE="" TYPE="" VERSION="" PROJECT="" SPOT=0 QUEUED=0 DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --type) TYPE="${2:?--type needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --name=* | --zone=* | --type=* | --version=* | --project=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
if [[ -z $NAME || -z $ZONE || -z $TYPE ]]; then
  usage >&2
  die "--name, --zone and --type are required"
fi
VERSION="${VERSION:-$(default_runtime_version "$TYPE")}"

COMMON=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then COMMON+=(--project="$PROJECT"); fi

if ((QUEUED)); then
  CMD=(gcloud compute tpus queued-resources create "$NAME" "${COMMON[@]}" --node-id="$NAME"
       --accelerator-type="$TYPE" --runtime-version="$VERSION")
else
  CMD=(gcloud compute tpus tpu-vm create "$NAME" "${COMMON[@]}" --accelerator-type="$TYPE" --version="$VERSION")
fi
if ((SPOT)); then CMD+=(--spot); fi
# ${a[@]+...}: an empty array expands to nothing under `set -u` in every bash, 3.2 (macOS) included.
run "${CMD[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

if ((QUEUED)); then
  echo "Queued. The slice exists once its state is ACTIVE; check with:" >&2
  quote_command gcloud compute tpus queued-resources describe "$NAME" "${COMMON[@]}" >&2
fi
echo "Next: tpu/setup.sh --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT}" >&2
