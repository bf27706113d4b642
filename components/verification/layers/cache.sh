# shellcheck shell=bash
# cache layer. Inputs: CACHE_MOUNT_POINT, CACHE_READ_PROBE_MIB, CACHE_READ_PROBE_MIN_MIB,
# CACHE_READ_PROBE_SECONDS.
section cache_mount
findmnt -n -o SOURCE,FSTYPE,OPTIONS,UUID --mountpoint "${CACHE_MOUNT_POINT}" 2>/dev/null
section cache_fstab
awk -v mp="${CACHE_MOUNT_POINT}" '$2 == mp' /etc/fstab
section cache_writable
# Root can create a file under the cache and remove it: "create ok" or "create <mktemp's error>",
# then "remove ok" or "remove <rm's error>". mktemp makes a new name (never an existing file or a
# link) under a dot entry the weights never use, removed at once; each step is bounded in time.
if findmnt -n --mountpoint "${CACHE_MOUNT_POINT}" >/dev/null 2>&1; then
  (
    if write_probe=$(timeout 10 mktemp "${CACHE_MOUNT_POINT}/.sovereign-write-probe.XXXXXX" 2>&1); then
      trap 'rm -f -- "${write_probe}"' EXIT
      echo "create ok"
      if removed=$(timeout 10 rm -f -- "${write_probe}" 2>&1); then
        echo "remove ok"
      else
        echo "remove ${removed}"
      fi
    else
      echo "create ${write_probe}"
    fi
  )
fi
section cache_read
# The cache's sequential read speed with direct I/O (through the page cache it would be memory's):
# the first CACHE_READ_PROBE_MIB of a file of a complete copy (never under a dot entry: partial
# fetches are preallocated, and unwritten extents read as zeros without touching the drives),
# read-only; on a cache without one, of a file of random bytes written for it (a quarter of the
# free space at most) and removed. Each dd stops after CACHE_READ_PROBE_SECONDS and reports what
# it moved until then.
if findmnt -n --mountpoint "${CACHE_MOUNT_POINT}" >/dev/null 2>&1; then
  (
    probe=$(find "${CACHE_MOUNT_POINT}" -xdev -mindepth 1 -maxdepth 8 -name '.*' -prune -o \
      -type f -size +"$((CACHE_READ_PROBE_MIB - 1))"M -print -quit 2>/dev/null)
    if [ -n "${probe}" ]; then
      echo "source existing"
    else
      free_mib=$(df -Pm "${CACHE_MOUNT_POINT}" 2>/dev/null | awk 'NR == 2 {print $4}')
      size_mib=$((${free_mib:-0} / 4))
      if [ "${size_mib}" -gt "${CACHE_READ_PROBE_MIB}" ]; then
        size_mib=${CACHE_READ_PROBE_MIB}
      fi
      if [ "${size_mib}" -lt "${CACHE_READ_PROBE_MIN_MIB}" ]; then
        echo "not-measured only ${free_mib:-0} MiB free on the cache"
        exit 0
      fi
      probe="${CACHE_MOUNT_POINT}/.sovereign-read-probe.$$"
      trap 'rm -f "${probe}"' EXIT
      echo "source written"
      timeout -s INT "${CACHE_READ_PROBE_SECONDS}" dd if=/dev/urandom of="${probe}" bs=1M \
        count="${size_mib}" iflag=fullblock oflag=direct conv=fsync status=none 2>&1 |
        sed 's/^/write /'
    fi
    timeout -s INT "${CACHE_READ_PROBE_SECONDS}" dd if="${probe}" of=/dev/null bs=16M \
      count="$((CACHE_READ_PROBE_MIB / 16))" iflag=direct 2>&1
  )
fi
section mdstat
cat /proc/mdstat 2>/dev/null
