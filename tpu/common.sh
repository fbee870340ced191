# Helpers sourced by tpu/create.sh, setup.sh and launch.sh (each sets DRY_RUN before calling `run`).

SCRIPT_NAME="$(basename "$0")"

die() {
  echo "$SCRIPT_NAME: $*" >&2
  echo "Run tpu/$SCRIPT_NAME -h for usage." >&2
  exit 2
}

# Prints its arguments as one shell-quoted command line (safe to copy into a shell).
quote_command() {
  local arg quoted=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

run() {
  if ((DRY_RUN)); then
    quote_command "$@"
  else
    "$@"
  fi
}
