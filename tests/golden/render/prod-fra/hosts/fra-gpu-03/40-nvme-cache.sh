#!/usr/bin/env bash
# 40-nvme-cache: the local NVMe drives named by id -> mdadm RAID0 (or the single drive) -> a
# filesystem mounted by UUID with noatime, persistent across reboots. An existing array of the
# same drives is re-used; a drive that holds anything else is refused unless the stack marks it
# wipeable. Teardown unmounts and stops the array but never destroys data.
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
SOVEREIGN_STEP=40-nvme-cache
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

NVME_IDS=(nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W100301 nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W100302 nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W100303 nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W100304)
WIPEABLE_IDS=()
ARRAY_NAME=sovereign-cache
RAID_LEVEL=0
FILESYSTEM=xfs
MOUNT_POINT=/var/lib/sovereign/weights
FSTAB_OPTIONS="defaults,noatime,nofail,x-systemd.device-timeout=30s"
MDADM_CONF=/etc/mdadm/mdadm.conf

DEVICES=()
TARGET=""

is_wipeable() {
  local id
  for id in "${WIPEABLE_IDS[@]}"; do
    if [ "$id" = "$1" ]; then
      return 0
    fi
  done
  return 1
}

resolve_devices() {
  local id dev seen=" "
  for id in "${NVME_IDS[@]}"; do
    if [ ! -e "/dev/disk/by-id/${id}" ]; then
      refuse "cache drive /dev/disk/by-id/${id} not found"
    fi
    dev="$(readlink -f "/dev/disk/by-id/${id}")"
    if [ ! -b "$dev" ]; then
      refuse "cache drive ${id} resolves to ${dev}, which is not a block device"
    fi
    case "$seen" in
      *" ${dev} "*) refuse "two cache drive ids resolve to the same device ${dev}" ;;
    esac
    seen="${seen}${dev} "
    DEVICES+=("$dev")
    fact "cache.drive.${id}" "$dev"
  done
}

sorted_names() {
  local item
  for item in "$@"; do
    printf '%s\n' "${item##*/}"
  done | sort | tr '\n' ' '
}

# The assembled md array whose members are exactly our drives, if any.
assembled_array() {
  local md slave members want
  want="$(sorted_names "${DEVICES[@]}")"
  for md in /sys/block/md*; do
    [ -d "$md/slaves" ] || continue
    members=()
    for slave in "$md"/slaves/*; do
      members+=("$slave")
    done
    if [ "$(sorted_names "${members[@]}")" = "$want" ]; then
      echo "/dev/${md##*/}"
      return 0
    fi
  done
  return 0
}

# The md UUID shared by all our drives when they carry a complete array of exactly these drives.
complete_superblock_set() {
  local dev uuid="" this count
  for dev in "${DEVICES[@]}"; do
    this="$(mdadm --examine --export "$dev" 2>/dev/null | sed -n 's/^MD_UUID=//p')"
    count="$(mdadm --examine --export "$dev" 2>/dev/null | sed -n 's/^MD_DEVICES=//p')"
    if [ -z "$this" ] || [ "$count" != "${#DEVICES[@]}" ]; then
      return 0
    fi
    if [ -n "$uuid" ] && [ "$uuid" != "$this" ]; then
      return 0
    fi
    uuid="$this"
  done
  echo "$uuid"
}

describe_contents() {
  local dev="$1" name signatures parts
  name="${dev##*/}"
  signatures="$(wipefs --noheadings --output TYPE "$dev" 2>/dev/null | sort -u | tr '\n' ' ')"
  parts="$(find "/sys/block/${name}" -maxdepth 1 -name "${name}p*" -printf '%f ' 2>/dev/null || true)"
  printf '%s' "${signatures}${parts:+partitions: ${parts}}"
}

in_use_by() {
  local dev="$1" name holders mounts
  name="${dev##*/}"
  holders="$(find "/sys/block/${name}/holders" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null || true)"
  mounts="$(lsblk -nro MOUNTPOINT "$dev" 2>/dev/null | sed '/^$/d' | tr '\n' ' ')"
  printf '%s' "${holders:+held by ${holders}}${mounts:+mounted at ${mounts}}"
}

wipe_device() {
  mdadm --zero-superblock --force "$1" 2>/dev/null || true
  wipefs --all --quiet "$1"
}

# Refuse any drive that is busy or holds data, unless the stack says it may be wiped; then wipe.
clear_drives_for_new_cache() {
  local i id dev contents busy
  for i in "${!DEVICES[@]}"; do
    id="${NVME_IDS[$i]}"
    dev="${DEVICES[$i]}"
    busy="$(in_use_by "$dev")"
    if [ -n "$busy" ]; then
      refuse "cache drive ${id} (${dev}) is in use (${busy}); release it first"
    fi
    contents="$(describe_contents "$dev")"
    if [ -n "$contents" ]; then
      if ! is_wipeable "$id"; then
        refuse "cache drive ${id} (${dev}) holds data (${contents}); refusing to touch it. Set wipe: true for this drive in the stack to allow destroying it"
      fi
      change "wipe ${id} (${dev}: ${contents})" wipe_device "$dev"
    fi
  done
}

create_array() {
  mdadm --create "/dev/md/${ARRAY_NAME}" --run --metadata=1.2 --name="$ARRAY_NAME" \
    --level="$RAID_LEVEL" --raid-devices="${#DEVICES[@]}" "${DEVICES[@]}" </dev/null
  udevadm settle
  # a new array can expose a stale signature from an earlier array on the same drives
  wipefs --all --quiet "/dev/md/${ARRAY_NAME}"
}

assemble_array() {
  mdadm --assemble --run "/dev/md/${ARRAY_NAME}" "${DEVICES[@]}" </dev/null
  udevadm settle
}

prepare_block_device() {
  if [ "${#DEVICES[@]}" -eq 1 ]; then
    TARGET="${DEVICES[0]}"
    if [ "$(blkid -p -s TYPE -o value "$TARGET" 2>/dev/null || true)" != "$FILESYSTEM" ]; then
      clear_drives_for_new_cache
    fi
    return 0
  fi
  TARGET="$(assembled_array)"
  if [ -n "$TARGET" ]; then
    log "re-using assembled array ${TARGET}"
    return 0
  fi
  local uuid
  uuid="$(complete_superblock_set)"
  if [ -n "$uuid" ]; then
    change "assemble existing array ${uuid} from ${#DEVICES[@]} drives" assemble_array
  else
    clear_drives_for_new_cache
    change "create RAID${RAID_LEVEL} /dev/md/${ARRAY_NAME} from ${#DEVICES[@]} drives" create_array
  fi
  TARGET="$(assembled_array)"
  if [ -z "$TARGET" ]; then
    refuse "array of ${DEVICES[*]} did not come up"
  fi
}

make_filesystem() {
  if [ "$FILESYSTEM" = xfs ]; then
    mkfs.xfs -q -L sov-weights "$TARGET"
  else
    mkfs.ext4 -q -L sov-weights "$TARGET"
  fi
  udevadm settle
}

ensure_filesystem() {
  local found
  found="$(blkid -p -s TYPE -o value "$TARGET" 2>/dev/null || true)"
  if [ -z "$found" ]; then
    change "make ${FILESYSTEM} on ${TARGET}" make_filesystem
  elif [ "$found" != "$FILESYSTEM" ]; then
    refuse "${TARGET} holds a ${found} filesystem, expected ${FILESYSTEM}; refusing to reformat it"
  fi
}

ensure_mdadm_conf() {
  [ "${#DEVICES[@]}" -gt 1 ] || return 0
  local uuid line current
  uuid="$(mdadm --detail --export "$TARGET" | sed -n 's/^MD_UUID=//p')"
  line="ARRAY /dev/md/${ARRAY_NAME} metadata=1.2 UUID=${uuid}"
  current=""
  if [ -f "$MDADM_CONF" ]; then
    current="$(grep -v -e "^ARRAY /dev/md/${ARRAY_NAME} " "$MDADM_CONF" || true)"
  fi
  ensure_file "$MDADM_CONF" 644 "${current:+${current}
}${line}"
  fact cache.array_uuid "$uuid"
}

reload_systemd() {
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
}

ensure_fstab() {
  local uuid line others wanted
  uuid="$(blkid -p -s UUID -o value "$TARGET")"
  line="UUID=${uuid} ${MOUNT_POINT} ${FILESYSTEM} ${FSTAB_OPTIONS} 0 2"
  others="$(awk -v mp="$MOUNT_POINT" '$2 != mp' /etc/fstab)"
  wanted="${others:+${others}
}${line}"
  if [ "$(</etc/fstab)" != "$wanted" ]; then
    ensure_file /etc/fstab 644 "$wanted"
    change "reload systemd mount units" reload_systemd
  fi
  fact cache.fs_uuid "$uuid"
}

mount_cache() {
  mkdir -p "$MOUNT_POINT"
  mount "$MOUNT_POINT"
}

ensure_mounted() {
  local uuid mounted
  uuid="$(blkid -p -s UUID -o value "$TARGET")"
  mounted="$(findmnt -n -o UUID --mountpoint "$MOUNT_POINT" 2>/dev/null || true)"
  if [ -z "$mounted" ]; then
    change "mount ${TARGET} at ${MOUNT_POINT}" mount_cache
  elif [ "$mounted" != "$uuid" ]; then
    refuse "${MOUNT_POINT} already has another filesystem mounted (UUID ${mounted}); expected ${uuid}"
  fi
  fact cache.device "$TARGET"
  fact cache.mount_point "$MOUNT_POINT"
  fact cache.size_bytes "$(blockdev --getsize64 "$TARGET")"
}

apply() {
  resolve_devices
  prepare_block_device
  ensure_filesystem
  ensure_mdadm_conf
  ensure_fstab
  ensure_mounted
}

stop_array() {
  mdadm --stop "$1"
}

teardown() {
  local others
  if findmnt -n --mountpoint "$MOUNT_POINT" >/dev/null 2>&1; then
    change "unmount ${MOUNT_POINT} (data is kept on the drives)" umount "$MOUNT_POINT"
  fi
  others="$(awk -v mp="$MOUNT_POINT" '$2 != mp' /etc/fstab)"
  if [ "$(</etc/fstab)" != "$others" ]; then
    ensure_file /etc/fstab 644 "$others"
  fi
  if [ -f "$MDADM_CONF" ] && grep -q -e "^ARRAY /dev/md/${ARRAY_NAME} " "$MDADM_CONF"; then
    ensure_file "$MDADM_CONF" 644 "$(grep -v -e "^ARRAY /dev/md/${ARRAY_NAME} " "$MDADM_CONF" || true)"
  fi
  if [ "${#NVME_IDS[@]}" -gt 1 ]; then
    resolve_devices
    TARGET="$(assembled_array)"
    if [ -n "$TARGET" ]; then
      change "stop array ${TARGET} (superblocks and data are kept)" stop_array "$TARGET"
    fi
  fi
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
