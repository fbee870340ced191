#!/usr/bin/env bash
# Puts the code on every worker of a TPU VM / pod slice and installs it into a venv with jax[tpu].
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tpu/setup.sh --name NAME --zone ZONE [options]

On every worker (gcloud compute tpus tpu-vm ssh/scp --worker=all):
  1. the code: a copy of this checkout (tracked and untracked, not ignored, files), or `git clone --repo`
  2. Python 3.11 (apt, deadsnakes PPA as fallback) and a venv DIR/.venv with `pip install -e .` and
     jax[tpu] pinned to the jax version in pyproject.toml (jax[tpu]==0.10.2 pulls libtpu 0.0.42.* from PyPI)
  3. optionally Cloud Storage FUSE, mounting a bucket at the same path on every worker (shared workdirs)
  4. a check that prints each worker's process index and device counts

Required:
  --name NAME        TPU name
  --zone ZONE        its zone

Options:
  --project PROJECT  Cloud project (default: gcloud's core/project)
  --repo URL         git clone URL on the workers instead of copying this checkout (needs access from them)
  --ref REF          branch, tag or commit to check out with --repo (default: the remote's HEAD)
  --source DIR       checkout to copy (default: the repository holding this script)
  --dir DIR          code directory on the workers, relative to the home directory (default: mmrag_jax)
  --python PYTHON    interpreter on the workers (default: python3.11)
  --bucket BUCKET    install gcsfuse and mount gs://BUCKET on every worker
  --mount DIR        mount point for --bucket (default: /mnt/gcs)
  --worker WORKERS   workers to set up: all (default), or e.g. 0 or 1,3
  --no-check         skip the device check
  --dry-run          print the commands instead of running them
  -h, --help         this text
EOF
}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Runs a bash script on the selected workers, all at once.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${COMMON[@]}" --worker="$WORKER" \
    --command="bash -c $(quote_command "set -euo pipefail; $1")"
}

NAME="" ZONE="" PROJECT="" REPO="" REF="" DIR="mmrag_jax" PYTHON="python3.11" BUCKET="" MOUNT="/mnt/gcs"
WORKER="all" CHECK=1 DRY_RUN=0
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --repo) REPO="${2:?--repo needs a value}"; shift 2 ;;
    --ref) REF="${2:?--ref needs a value}"; shift 2 ;;
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
    --bucket) BUCKET="${2:?--bucket needs a value}"; shift 2 ;;
    --mount) MOUNT="${2:?--mount needs a value}"; shift 2 ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --name=* | --zone=* | --project=* | --repo=* | --ref=* | --source=* | --dir=* | --python=* | --bucket=* | \
      --mount=* | --worker=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --no-check) CHECK=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
if [[ -z $NAME || -z $ZONE ]]; then
  usage >&2
  die "--name and --zone are required"
fi
[[ -n $REF && -z $REPO ]] && die "--ref needs --repo"
[[ $PYTHON =~ ^python3\.[0-9]+$ ]] || die "--python must be a pythonX.Y name such as python3.11, got '$PYTHON'"
COMMON=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then COMMON+=(--project="$PROJECT"); fi
Q_DIR="$(quote_command "$DIR")"
APT="sudo apt-get -o DPkg::Lock::Timeout=600"  # waits for the unattended upgrades of a fresh VM

# 1. The code.
if [[ -n $REPO ]]; then
  on_workers "if [ -d $Q_DIR/.git ]; then git -C $Q_DIR fetch --tags origin; \
else git clone $(quote_command "$REPO") $Q_DIR; fi; \
git -C $Q_DIR fetch origin $(quote_command "${REF:-HEAD}"); git -C $Q_DIR checkout --detach FETCH_HEAD"
else
  [[ -f $SOURCE/pyproject.toml ]] || die "--source '$SOURCE' holds no pyproject.toml"
  ARCHIVE="mmrag_jax_code.tar.gz"
  if ((DRY_RUN)); then
    LOCAL_ARCHIVE="/tmp/$ARCHIVE"
    echo "# pack $SOURCE: git ls-files --cached --others --exclude-standard | tar -czf $LOCAL_ARCHIVE --null -T -"
  else
    LOCAL_ARCHIVE="$(mktemp -d)/$ARCHIVE"
    trap 'rm -rf "$(dirname "$LOCAL_ARCHIVE")"' EXIT
    (
      cd "$SOURCE"
      if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # tracked files that still exist, plus untracked files that are not ignored
        git ls-files -z --cached --others --exclude-standard |
          while IFS= read -r -d '' file; do [[ -e $file ]] && printf '%s\0' "$file"; done |
          tar -czf "$LOCAL_ARCHIVE" --null -T -
      else
        tar -czf "$LOCAL_ARCHIVE" --exclude=.git --exclude=.venv --exclude=__pycache__ .
      fi
    )
  fi
  run gcloud compute tpus tpu-vm scp "$LOCAL_ARCHIVE" "$NAME:$ARCHIVE" "${COMMON[@]}" --worker="$WORKER"
  on_workers "mkdir -p $Q_DIR; tar -xzf $ARCHIVE -C $Q_DIR; rm -f $ARCHIVE"
fi

# 2. Python, venv, package with jax[tpu] at the version pinned in pyproject.toml.
on_workers "cd $Q_DIR; \
if ! command -v $PYTHON >/dev/null 2>&1 || ! $PYTHON -c \"import ensurepip\" >/dev/null 2>&1; then \
$APT update; $APT install -y $PYTHON $PYTHON-venv || { sudo add-apt-repository -y ppa:deadsnakes/ppa; \
$APT update; $APT install -y $PYTHON $PYTHON-venv; }; fi; \
jax_version=\$(sed -n \"s/^ *.jax==\\([0-9.]*\\).,*\$/\\1/p\" pyproject.toml); \
[ -n \"\$jax_version\" ] || { echo \"pyproject.toml pins no jax version\" >&2; exit 1; }; \
$PYTHON -m venv .venv; .venv/bin/python -m pip install --upgrade pip; \
.venv/bin/python -m pip install -e . \"jax[tpu]==\$jax_version\""

# 3. A bucket mounted at the same path everywhere, for workdirs that all workers write.
if [[ -n $BUCKET ]]; then
  Q_MOUNT="$(quote_command "$MOUNT")"
  KEYRING=/usr/share/keyrings/cloud.google.asc
  on_workers "if ! command -v gcsfuse >/dev/null 2>&1; then \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $KEYRING >/dev/null; \
echo \"deb [signed-by=$KEYRING] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; $APT update; $APT install -y gcsfuse; fi; \
sudo mkdir -p $Q_MOUNT; sudo chown \"\$(id -u):\$(id -g)\" $Q_MOUNT; \
mountpoint -q $Q_MOUNT || gcsfuse --implicit-dirs $(quote_command "$BUCKET") $Q_MOUNT"
fi

# 4. Every worker sees its chips, and all workers form one slice.
if ((CHECK)); then
  on_workers "cd $Q_DIR; .venv/bin/python -c \"import jax; print(dict(process=jax.process_index(), \
processes=jax.process_count(), local_devices=jax.local_device_count(), devices=jax.device_count(), \
kind=jax.devices()[0].device_kind))\""
fi
echo "Next: tpu/launch.sh --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT} -- python -m mmrag_jax.main ..." >&2
