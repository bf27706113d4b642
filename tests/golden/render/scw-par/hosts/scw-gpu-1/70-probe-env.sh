#!/usr/bin/env bash
# 70-probe-env: what the post-deploy GPU health probe needs on the host: python3 and nvidia-ml-py
# (pynvml) at a pinned version, delivered with the step, so verification never installs anything.
# Shared by every step. Protocol lines on stdout, read by the executor:
#   SOVEREIGN-FACT key=value     something the step found (versions, devices)
#   SOVEREIGN-CHANGE text        one change made, in words
#   SOVEREIGN-DRIFT text         check mode: what an apply would change (then the step stops)
#   SOVEREIGN-REFUSED text       a precondition does not hold (exit 3); nothing was changed by it
#   SOVEREIGN-REBOOT text        a reboot is needed before the step can finish (exit 100)
#   SOVEREIGN-RESULT changed|unchanged|drift
# Human-readable progress goes to stderr.
set -euo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SOVEREIGN_STEP=70-probe-env
SOVEREIGN_MODE="${SOVEREIGN_MODE:-apply}"
SOVEREIGN_CHANGED=0

log() { printf '[%s] %s\n' "$SOVEREIGN_STEP" "$*" >&2; }
fact() { printf 'SOVEREIGN-FACT %s=%s\n' "$1" "$2"; }
refuse() { printf 'SOVEREIGN-REFUSED %s\n' "$*"; exit 3; }
reboot_required() { printf 'SOVEREIGN-REBOOT %s\n' "$*"; exit 100; }

# change DESCRIPTION COMMAND [ARG...]: the only way a step modifies the host. In check mode it
# reports the drift and stops instead, so `check` is an exact dry run of `apply`.
change() {
  local description="$1"
  shift
  if [ "$SOVEREIGN_MODE" = check ]; then
    printf 'SOVEREIGN-DRIFT %s\n' "$description"
    printf 'SOVEREIGN-RESULT drift\n'
    exit 0
  fi
  "$@"
  SOVEREIGN_CHANGED=1
  printf 'SOVEREIGN-CHANGE %s\n' "$description"
  log "changed: $description"
}

_write_file_atomically() {
  local path="$1" mode="$2" content="$3" tmp
  mkdir -p "$(dirname "$path")"
  tmp="$(mktemp "${path}.sovereign.XXXXXX")"
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

# ensure_file PATH MODE CONTENT: write only when content or mode differ; never half-written.
ensure_file() {
  local path="$1" mode="$2" content="$3"
  if [ -f "$path" ] && [ "$(<"$path")" = "$content" ] && [ "$(stat -c %a "$path")" = "$mode" ]; then
    return 0
  fi
  change "write $path" _write_file_atomically "$path" "$mode" "$content"
}

# ensure_unit_file PATH CONTENT: a systemd unit, with the manager reloaded when it changed.
ensure_unit_file() {
  local path="$1" content="$2"
  if [ -f "$path" ] && [ "$(<"$path")" = "$content" ]; then
    return 0
  fi
  change "write $path" _write_file_atomically "$path" 644 "$content"
  change "reload systemd units" systemctl daemon-reload
}

finish() {
  if [ "$SOVEREIGN_CHANGED" = 1 ]; then
    echo 'SOVEREIGN-RESULT changed'
  else
    echo 'SOVEREIGN-RESULT unchanged'
  fi
}

PROBE_DIR=/opt/sovereign/probe
PYNVML_VERSION=13.615.71
PYNVML_SHA256=2828e66b483bec218f461314f6da96c1e56330ed4b297a20b3444b4c43cdd14e
export DEBIAN_FRONTEND=noninteractive

install_python() {
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-minimal
}

install_pynvml() {
  local got
  got="$(sha256sum "${SOVEREIGN_PAYLOAD_DIR}/pynvml.py" | cut -d' ' -f1)"
  if [ "$got" != "$PYNVML_SHA256" ]; then
    refuse "pynvml payload damaged in transit: sha256 ${got}, expected ${PYNVML_SHA256}"
  fi
  mkdir -p "${PROBE_DIR}/lib"
  install -m 0644 "${SOVEREIGN_PAYLOAD_DIR}/pynvml.py" "${PROBE_DIR}/lib/pynvml.py.sovereign-new"
  mv -f "${PROBE_DIR}/lib/pynvml.py.sovereign-new" "${PROBE_DIR}/lib/pynvml.py"
}

apply() {
  if ! command -v python3 >/dev/null; then
    change "install python3 for the GPU probe" install_python
  fi
  # "python3 -V" prints the version without starting the interpreter proper (seconds on slow hosts)
  fact probe.python "$(python3 -V 2>&1 | cut -d' ' -f2)"
  if [ "$(sha256sum "${PROBE_DIR}/lib/pynvml.py" 2>/dev/null | cut -d' ' -f1)" != "$PYNVML_SHA256" ]; then
    change "install nvidia-ml-py ${PYNVML_VERSION} into ${PROBE_DIR}/lib" install_pynvml
  fi
  ensure_file "${PROBE_DIR}/VERSION" 644 "nvidia-ml-py ${PYNVML_VERSION}"
  fact probe.dir "$PROBE_DIR"
  fact probe.pynvml "$PYNVML_VERSION"
}

case "$SOVEREIGN_MODE" in
  apply | check) apply ;;
  teardown)
    if declare -F teardown >/dev/null; then
      teardown
    fi
    ;;
  *) refuse "unknown SOVEREIGN_MODE ${SOVEREIGN_MODE}; expected apply, check or teardown" ;;
esac
finish
