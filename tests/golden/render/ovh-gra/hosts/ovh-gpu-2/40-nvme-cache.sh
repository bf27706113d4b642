#!/usr/bin/env bash
# 40-nvme-cache: the local NVMe drives named by id -> mdadm RAID0 (or the single drive) -> a
# filesystem mounted by UUID with noatime, persistent across reboots. Teardown unmounts and stops
# the array but never destroys data.
#
# Data safety: every check runs before the first change, for every drive. A drive is used only when
# it exists, is a whole disk, nothing holds it or any of its partitions (md, LVM, LUKS, mounts), and it
# is blank (no signature, no partition, zeros in its first and last MiB) or the stack marks it
# wipeable. An existing array is adopted only when its name and RAID level are this stack's, an
# existing filesystem only when it carries this stack's cache label. /etc/fstab is written only once
# the mount point is known free or already ours. No tool reads this script (our stdin) as its input.
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

NVME_IDS=(nvme-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0T701311 nvme-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0T701312)
WIPEABLE_IDS=(nvme-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0T701311 nvme-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0T701312)
ARRAY_NAME=sovereign-cache
RAID_LEVEL=0
FILESYSTEM=xfs
FS_LABEL=sov-weights
MOUNT_POINT=/var/lib/sovereign/weights
FSTAB_OPTIONS="defaults,noatime,nofail,x-systemd.device-timeout=30s"
# The warmer refuses a cache directory without this file. Written on the mounted filesystem only,
# so a mount point left bare (nofail, array missing) has none.
CACHE_MARKER=.sovereign-cache-filesystem
MDADM_CONF=/etc/mdadm/mdadm.conf
MIB=1048576

DEVICES=()
TARGET=""
PLAN=""          # reuse (assembled array or labelled drive), assemble (array on disk) or new
TO_WIPE=()       # indices into DEVICES of wipeable drives that hold something
WIPE_CONTENTS=() # what each of those holds, for the change line
MAKE_FS=""       # set when TARGET is blank and gets a new filesystem

is_wipeable() {
  local id
  for id in "${WIPEABLE_IDS[@]}"; do
    if [ "$id" = "$1" ]; then
      return 0
    fi
  done
  return 1
}

all_wipeable() {
  local id
  for id in "${NVME_IDS[@]}"; do
    if ! is_wipeable "$id"; then
      return 1
    fi
  done
  return 0
}

join_problems() {
  local text
  text="$(printf '%s; ' "$@")"
  printf '%s' "${text%; }"
}

resolve_devices() {
  local id dev name kind seen=" "
  for id in "${NVME_IDS[@]}"; do
    if [[ "$id" =~ -part[0-9]+$ ]]; then
      refuse "cache drive ${id} names a partition; list the whole drive (its /dev/disk/by-id name without -partN)"
    fi
    if [ ! -e "/dev/disk/by-id/${id}" ]; then
      refuse "cache drive /dev/disk/by-id/${id} not found"
    fi
    dev="$(readlink -f "/dev/disk/by-id/${id}")"
    if [ ! -b "$dev" ]; then
      refuse "cache drive ${id} resolves to ${dev}, which is not a block device"
    fi
    name="${dev##*/}"
    if [ -e "/sys/class/block/${name}/partition" ]; then
      refuse "cache drive ${id} resolves to ${dev}, a partition; list the whole drive"
    fi
    kind="$(lsblk -dno TYPE "$dev" </dev/null 2>/dev/null || true)"
    if [ "$kind" != disk ]; then
      refuse "cache drive ${id} resolves to ${dev}, which is not a whole disk (type ${kind:-unknown})"
    fi
    case "$seen" in
      *" ${dev} "*) refuse "two cache drive ids resolve to the same device ${dev}" ;;
    esac
    seen="${seen}${dev} "
    DEVICES+=("$dev")
    fact "cache.drive.${id}" "$dev"
  done
}

# The kernel names of the partitions of a disk, one a line.
partitions_of() {
  local name="${1##*/}" part
  for part in "/sys/block/${name}/${name}"*; do
    if [ -e "${part}/partition" ]; then
      printf '%s\n' "${part##*/}"
    fi
  done
}

# "dm-0 (LVM vg-data)", "dm-1 (CRYPT luks-…)", "md127": what a holder is, for messages.
describe_holder() {
  local holder="$1" kind
  if [ -r "/sys/block/${holder}/dm/name" ]; then
    kind="$(cat "/sys/block/${holder}/dm/uuid" 2>/dev/null || true)"
    kind="${kind%%-*}"
    printf '%s (%s%s)' "$holder" "${kind:+${kind} }" "$(<"/sys/block/${holder}/dm/name")"
  else
    printf '%s' "$holder"
  fi
}

# What holds a disk or any of its partitions (md, device-mapper: LVM, LUKS, multipath), and where
# the disk or its partitions are mounted or swapped on; empty when nothing does. The holder named in
# $2 (the array being adopted) and a mount at our mount point (the drive being adopted) are ours.
in_use_by() {
  local dev="$1" allowed_holder="${2:-}" allowed_mount="${3:-}" part parts holder mount
  local holders="" mounts=""
  mapfile -t parts < <(partitions_of "$dev")
  for part in "${dev##*/}" "${parts[@]}"; do
    for holder in "/sys/class/block/${part}/holders/"*; do
      if [ ! -e "$holder" ] || [ "${holder##*/}" = "$allowed_holder" ]; then
        continue
      fi
      holders="${holders}${part}: $(describe_holder "${holder##*/}"), "
    done
    while read -r mount; do
      if [ -n "$mount" ] && [ "$mount" != "$allowed_mount" ]; then
        mounts="${mounts}${mount} "
      fi
    done < <(lsblk -dnro MOUNTPOINT "/dev/${part}" </dev/null 2>/dev/null || true)
  done
  mounts="${mounts% }"
  holders="${holders%, }"
  printf '%s' "${holders:+held by ${holders}}${holders:+${mounts:+; }}${mounts:+mounted at ${mounts}}"
}

# The signature types libblkid finds on a device, space separated.
signatures_of() {
  wipefs --noheadings --output TYPE "$1" </dev/null 2>/dev/null | sort -u | tr '\n' ' ' || true
}

# Succeeds when the MiB at byte offset $2 of device $1 reads back as zeros; a read error is not zero.
zero_mib_at() {
  dd if="$1" bs="$MIB" count=1 skip="$2" iflag=skip_bytes,fullblock status=none </dev/null 2>/dev/null |
    cmp -s -n "$MIB" - /dev/zero
}

edges_are_zero() {
  local size
  size="$(blockdev --getsize64 "$1" </dev/null)"
  zero_mib_at "$1" 0 && zero_mib_at "$1" "$((size > MIB ? size - MIB : 0))"
}

# What a disk holds, in words: signatures (filesystems, md/LVM/LUKS headers, partition tables), its
# partitions and theirs, or unlabelled bytes at either end; empty when it is blank.
describe_contents() {
  local dev="$1" text part parts signatures array label
  text="$(signatures_of "$dev")"
  case " ${text}" in
    *" linux_raid_member "*)
      array="$(mdadm --examine --export "$dev" </dev/null 2>/dev/null || true)"
      text="${text}(array $(sed -n 's/^MD_NAME=//p' <<<"$array") $(sed -n 's/^MD_LEVEL=//p' <<<"$array")) "
      ;;
    *)
      label="$(blkid -p -s LABEL -o value "$dev" </dev/null 2>/dev/null || true)"
      text="${text}${label:+labelled ${label} }"
      ;;
  esac
  mapfile -t parts < <(partitions_of "$dev")
  for part in "${parts[@]}"; do
    signatures="$(signatures_of "/dev/${part}")"
    text="${text}partition ${part}${signatures:+ (${signatures% })} "
  done
  if [ -z "$text" ] && ! edges_are_zero "$dev"; then
    text="unlabelled data: non-zero bytes in the first or last MiB"
  fi
  printf '%s' "${text% }"
}

# Every drive of a new cache must be free, and blank or wipeable. All drives are checked and every
# problem is reported before anything is changed.
check_drives_for_new_cache() {
  local i id dev busy contents problems=()
  for i in "${!DEVICES[@]}"; do
    id="${NVME_IDS[$i]}"
    dev="${DEVICES[$i]}"
    busy="$(in_use_by "$dev")"
    if [ -n "$busy" ]; then
      problems+=("cache drive ${id} (${dev}) is in use (${busy}); release it first")
      continue
    fi
    contents="$(describe_contents "$dev")"
    if [ -z "$contents" ]; then
      continue
    fi
    if is_wipeable "$id"; then
      TO_WIPE+=("$i")
      WIPE_CONTENTS+=("$contents")
    else
      problems+=("cache drive ${id} (${dev}) holds data (${contents}); refusing to touch it. Set wipe: true for this drive in the stack to allow destroying it")
    fi
  done
  if [ "${#problems[@]}" -gt 0 ]; then
    refuse "$(join_problems "${problems[@]}")"
  fi
}

# Drives of an array or filesystem being adopted: used by nothing but that array (holder $1) or
# our mount point (mount $2).
check_drives_free_except() {
  local i dev busy problems=()
  for i in "${!DEVICES[@]}"; do
    dev="${DEVICES[$i]}"
    busy="$(in_use_by "$dev" "$1" "$2")"
    if [ -n "$busy" ]; then
      problems+=("cache drive ${NVME_IDS[$i]} (${dev}) is in use (${busy}); release it first")
    fi
  done
  if [ "${#problems[@]}" -gt 0 ]; then
    refuse "$(join_problems "${problems[@]}")"
  fi
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

# KEY from `mdadm ARGS --export`; empty when absent.
md_field() {
  local key="$1"
  shift
  mdadm "$@" --export </dev/null 2>/dev/null | sed -n "s/^${key}=//p" || true
}

# An array is this stack's when its name (after any "homehost:") and level are the stack's.
is_our_array() {
  local name="$1" level="$2"
  [ "${name##*:}" = "$ARRAY_NAME" ] && [ "$level" = "raid${RAID_LEVEL}" ]
}

# The md UUID shared by all our drives when they carry a complete array of exactly these drives,
# with this stack's name and level.
complete_superblock_set() {
  local dev uuid="" this count name level
  for dev in "${DEVICES[@]}"; do
    this="$(md_field MD_UUID --examine "$dev")"
    count="$(md_field MD_DEVICES --examine "$dev")"
    name="$(md_field MD_NAME --examine "$dev")"
    level="$(md_field MD_LEVEL --examine "$dev")"
    if [ -z "$this" ] || [ "$count" != "${#DEVICES[@]}" ] || ! is_our_array "$name" "$level"; then
      return 0
    fi
    if [ -n "$uuid" ] && [ "$uuid" != "$this" ]; then
      return 0
    fi
    uuid="$this"
  done
  echo "$uuid"
}

# Decide, without changing anything, how the cache device comes to be; refuse what is not ours.
plan_array() {
  local md name level
  md="$(assembled_array)"
  if [ -n "$md" ]; then
    name="$(md_field MD_NAME --detail "$md")"
    level="$(md_field MD_LEVEL --detail "$md")"
    if ! is_our_array "$name" "$level"; then
      refuse "the cache drives form the running array ${md} (name ${name##*:}, level ${level:-unknown}), not this stack's ${ARRAY_NAME} at raid${RAID_LEVEL}; refusing to touch it. If its data may be destroyed, stop it (mdadm --stop) and set wipe: true for these drives"
    fi
    check_drives_free_except "${md##*/}" ""
    PLAN=reuse
    TARGET="$md"
    log "re-using assembled array ${TARGET}"
    return 0
  fi
  if [ -n "$(complete_superblock_set)" ]; then
    check_drives_free_except "" ""
    PLAN=assemble
    return 0
  fi
  check_drives_for_new_cache
  PLAN=new
}

plan_single_drive() {
  local dev="${DEVICES[0]}" type label
  type="$(blkid -p -s TYPE -o value "$dev" </dev/null 2>/dev/null || true)"
  label="$(blkid -p -s LABEL -o value "$dev" </dev/null 2>/dev/null || true)"
  TARGET="$dev"
  if [ "$type" = "$FILESYSTEM" ] && [ "$label" = "$FS_LABEL" ] && [ -z "$(partitions_of "$dev")" ]; then
    check_drives_free_except "" "$MOUNT_POINT"
    PLAN=reuse
    return 0
  fi
  check_drives_for_new_cache
  PLAN=new
}

# Whether TARGET needs a filesystem (sets MAKE_FS) or already has this stack's; refuses anything else.
filesystem_plan() {
  local found label
  found="$(blkid -p -s TYPE -o value "$TARGET" </dev/null 2>/dev/null || true)"
  if [ -z "$found" ]; then
    if ! edges_are_zero "$TARGET" && ! all_wipeable; then
      refuse "${TARGET} has no filesystem but is not blank (non-zero bytes in its first or last MiB); refusing to format it. Set wipe: true for its drives to allow destroying it"
    fi
    MAKE_FS=1
  elif [ "$found" != "$FILESYSTEM" ]; then
    refuse "${TARGET} holds a ${found} filesystem, expected ${FILESYSTEM}; refusing to reformat it"
  else
    label="$(blkid -p -s LABEL -o value "$TARGET" </dev/null 2>/dev/null || true)"
    if [ "$label" != "$FS_LABEL" ]; then
      refuse "${TARGET} holds a ${found} filesystem labelled '${label}', not this stack's cache label ${FS_LABEL}; refusing to adopt it"
    fi
  fi
}

# The mount point in /etc/fstab's second field names ours when equal up to trailing slashes.
is_our_mount_point() {
  local path="$1"
  while [ "${#path}" -gt 1 ] && [ "${path%/}" != "$path" ]; do
    path="${path%/}"
  done
  [ "$path" = "$MOUNT_POINT" ]
}

# An fstab entry is ours when it mounts our filesystem by UUID, or has exactly the form this step
# writes (an earlier cache filesystem of this stack).
is_our_fstab_entry() {
  local src="$1" type="$2" options="$3" uuid="$4"
  if [ -n "$uuid" ] && [ "$src" = "UUID=${uuid}" ]; then
    return 0
  fi
  [ "${src#UUID=}" != "$src" ] && [ "$type" = "$FILESYSTEM" ] && [ "$options" = "$FSTAB_OPTIONS" ]
}

# Nothing but our filesystem may be mounted at the mount point or named for it in /etc/fstab.
check_mount_point() {
  local uuid="" problems=() src path type options _rest mounted_src mounted_type mounted_uuid
  if [ "$PLAN" = reuse ]; then
    uuid="$(blkid -p -s UUID -o value "$TARGET" </dev/null 2>/dev/null || true)"
  fi
  while read -r mounted_src mounted_type mounted_uuid; do
    if [ -z "$uuid" ] || [ "$mounted_uuid" != "$uuid" ]; then
      problems+=("${MOUNT_POINT} already has ${mounted_src} (${mounted_type}) mounted; refusing to mount the cache over it")
    fi
  done < <(findmnt -rn -o SOURCE,FSTYPE,UUID --mountpoint "$MOUNT_POINT" </dev/null 2>/dev/null || true)
  if [ -f /etc/fstab ]; then
    while read -r src path type options _rest; do
      case "$src" in
        "" | "#"*) continue ;;
      esac
      if is_our_mount_point "$path" && ! is_our_fstab_entry "$src" "$type" "$options" "$uuid"; then
        problems+=("/etc/fstab already mounts ${src} (${type}) at ${path}; refusing to replace that entry. Remove it or choose another cache.mountPoint")
      fi
    done </etc/fstab
  fi
  if [ "${#problems[@]}" -gt 0 ]; then
    refuse "$(join_problems "${problems[@]}")"
  fi
}

wipe_device() {
  local dev="$1" part parts
  mapfile -t parts < <(partitions_of "$dev")
  for part in "${parts[@]}"; do
    wipefs --all --quiet "/dev/${part}" </dev/null
  done
  mdadm --zero-superblock --force "$dev" </dev/null 2>/dev/null || true
  wipefs --all --quiet "$dev" </dev/null
  zero_edges "$dev"
  # wipefs has the kernel re-read the (now empty) table; drop any partition it still lists
  if [ -n "$(partitions_of "$dev")" ]; then
    partx -d "$dev" </dev/null
  fi
  udevadm settle </dev/null
}

zero_edges() {
  local size
  size="$(blockdev --getsize64 "$1" </dev/null)"
  dd if=/dev/zero of="$1" bs="$MIB" count=1 conv=notrunc,fsync status=none </dev/null
  dd if=/dev/zero of="$1" bs="$MIB" count=1 seek="$((size > MIB ? size - MIB : 0))" \
    oflag=seek_bytes conv=notrunc,fsync status=none </dev/null
}

wipe_planned_drives() {
  local n i
  for n in "${!TO_WIPE[@]}"; do
    i="${TO_WIPE[$n]}"
    change "wipe ${NVME_IDS[$i]} (${DEVICES[$i]}: ${WIPE_CONTENTS[$n]})" wipe_device "${DEVICES[$i]}"
  done
}

create_array() {
  mdadm --create "/dev/md/${ARRAY_NAME}" --run --metadata=1.2 --name="$ARRAY_NAME" \
    --level="$RAID_LEVEL" --raid-devices="${#DEVICES[@]}" "${DEVICES[@]}" </dev/null
  udevadm settle </dev/null
  # a new array can expose a stale signature or bytes from an earlier use of the same drives
  wipefs --all --quiet "/dev/md/${ARRAY_NAME}" </dev/null
  zero_edges "/dev/md/${ARRAY_NAME}"
}

assemble_array() {
  mdadm --assemble --run "/dev/md/${ARRAY_NAME}" "${DEVICES[@]}" </dev/null
  udevadm settle </dev/null
}

# Bring up the device planned for: create or assemble the array (after wiping what may be wiped).
realize_block_device() {
  wipe_planned_drives
  if [ "${#DEVICES[@]}" -eq 1 ]; then
    return 0
  fi
  case "$PLAN" in
    reuse) return 0 ;;
    assemble)
      change "assemble existing array ${ARRAY_NAME} from ${#DEVICES[@]} drives" assemble_array
      ;;
    new)
      change "create RAID${RAID_LEVEL} /dev/md/${ARRAY_NAME} from ${#DEVICES[@]} drives" create_array
      ;;
  esac
  TARGET="$(assembled_array)"
  if [ -z "$TARGET" ]; then
    refuse "array of ${DEVICES[*]} did not come up"
  fi
}

make_filesystem() {
  if [ "$FILESYSTEM" = xfs ]; then
    mkfs.xfs -q -L "$FS_LABEL" "$TARGET" </dev/null
  else
    mkfs.ext4 -q -L "$FS_LABEL" "$TARGET" </dev/null
  fi
  udevadm settle </dev/null
}

ensure_filesystem() {
  filesystem_plan
  if [ -n "$MAKE_FS" ]; then
    change "make ${FILESYSTEM} labelled ${FS_LABEL} on ${TARGET}" make_filesystem
  fi
}

ensure_mdadm_conf() {
  [ "${#DEVICES[@]}" -gt 1 ] || return 0
  local uuid line current
  uuid="$(md_field MD_UUID --detail "$TARGET")"
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
    systemctl daemon-reload </dev/null
  fi
}

# /etc/fstab without its entries for the mount point (check_mount_point has shown they are ours).
fstab_without_mount_point() {
  awk -v mp="$MOUNT_POINT" '{ p = $2; while (length(p) > 1 && p ~ /\/$/) p = substr(p, 1, length(p) - 1) } $1 ~ /^#/ || p != mp' /etc/fstab
}

ensure_fstab() {
  local uuid line others wanted
  uuid="$(blkid -p -s UUID -o value "$TARGET" </dev/null)"
  line="UUID=${uuid} ${MOUNT_POINT} ${FILESYSTEM} ${FSTAB_OPTIONS} 0 2"
  others="$(fstab_without_mount_point)"
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
  mount "$MOUNT_POINT" </dev/null
}

ensure_mounted() {
  local uuid mounted
  uuid="$(blkid -p -s UUID -o value "$TARGET" </dev/null)"
  mounted="$(findmnt -n -o UUID --mountpoint "$MOUNT_POINT" </dev/null 2>/dev/null || true)"
  if [ -z "$mounted" ]; then
    change "mount ${TARGET} at ${MOUNT_POINT}" mount_cache
  elif [ "$mounted" != "$uuid" ]; then
    refuse "${MOUNT_POINT} already has another filesystem mounted (UUID ${mounted}); expected ${uuid}"
  fi
  fact cache.device "$TARGET"
  fact cache.mount_point "$MOUNT_POINT"
  fact cache.size_bytes "$(blockdev --getsize64 "$TARGET" </dev/null)"
}

# Runs after ensure_mounted: our filesystem is what is mounted at the mount point.
ensure_cache_marker() {
  local uuid
  uuid="$(blkid -p -s UUID -o value "$TARGET" </dev/null)"
  ensure_file "${MOUNT_POINT}/${CACHE_MARKER}" 644 "label=${FS_LABEL} uuid=${uuid}"
}

apply() {
  # checks: nothing on the host changes before all of them pass
  resolve_devices
  if [ "${#DEVICES[@]}" -eq 1 ]; then
    plan_single_drive
  else
    plan_array
  fi
  if [ "$PLAN" = reuse ]; then
    filesystem_plan
  fi
  check_mount_point
  # changes
  realize_block_device
  ensure_filesystem
  ensure_mdadm_conf
  ensure_fstab
  ensure_mounted
  ensure_cache_marker
}

stop_array() {
  mdadm --stop "$1" </dev/null
}

# Teardown touches only what is ours: our filesystem's mount, the fstab entries this step writes,
# our array. Data stays on the drives.
teardown() {
  local source label others md
  source="$(findmnt -n -o SOURCE --mountpoint "$MOUNT_POINT" </dev/null 2>/dev/null || true)"
  if [ -n "$source" ]; then
    label="$(blkid -p -s LABEL -o value "$source" </dev/null 2>/dev/null || true)"
    if [ "$label" = "$FS_LABEL" ]; then
      change "unmount ${MOUNT_POINT} (data is kept on the drives)" umount "$MOUNT_POINT"
    else
      log "leaving ${source} mounted at ${MOUNT_POINT}: it is not this stack's cache"
    fi
  fi
  if [ -f /etc/fstab ]; then
    others="$(awk -v mp="$MOUNT_POINT" -v fs="$FILESYSTEM" -v opts="$FSTAB_OPTIONS" \
      '!($2 == mp && $1 ~ /^UUID=/ && $3 == fs && $4 == opts)' /etc/fstab)"
    if [ "$(</etc/fstab)" != "$others" ]; then
      ensure_file /etc/fstab 644 "$others"
    fi
  fi
  if [ -f "$MDADM_CONF" ] && grep -q -e "^ARRAY /dev/md/${ARRAY_NAME} " "$MDADM_CONF"; then
    ensure_file "$MDADM_CONF" 644 "$(grep -v -e "^ARRAY /dev/md/${ARRAY_NAME} " "$MDADM_CONF" || true)"
  fi
  if [ "${#NVME_IDS[@]}" -gt 1 ]; then
    resolve_devices
    md="$(assembled_array)"
    if [ -n "$md" ] && is_our_array "$(md_field MD_NAME --detail "$md")" "$(md_field MD_LEVEL --detail "$md")"; then
      change "stop array ${md} (superblocks and data are kept)" stop_array "$md"
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
