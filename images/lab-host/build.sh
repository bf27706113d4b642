#!/usr/bin/env bash
# Builds the lab host image: Debian 12 (bookworm) from Debian's package repos with debootstrap,
# packed as a kernel, an initrd and a qcow2 root disk that QEMU boots with -kernel/-initrd.
#
# Usage: build.sh OUT_DIR MIRROR SECURITY_MIRROR
#   OUT_DIR          empty directory that receives vmlinuz, initrd.img, base.qcow2 and the keys
#   MIRROR           Debian mirror, e.g. http://deb.debian.org/debian
#   SECURITY_MIRROR  Debian security mirror, e.g. http://deb.debian.org/debian-security
#
# Besides the image, OUT_DIR receives the two keys the lab needs to take over a booted template:
# bootstrap_ed25519 (client key authorized for root) and template_host_ed25519_key.pub (the host
# key every template boot presents, which the lab pins and then replaces per clone).
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 OUT_DIR MIRROR SECURITY_MIRROR" >&2
    exit 2
fi
out_dir=$1
mirror=$2
security_mirror=$3

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=bookworm
root_disk_size=8G
work_dir=$(mktemp -d "${out_dir}/.work.XXXXXX")
rootfs=${work_dir}/rootfs

log() { printf 'lab-image: %s\n' "$*" >&2; }

cleanup() {
    # debootstrap mounts these inside the chroot; a failed run can leave them behind.
    for mount_point in "${rootfs}/proc" "${rootfs}/sys" "${rootfs}/dev/pts" "${rootfs}/dev"; do
        if mountpoint -q "${mount_point}" 2>/dev/null; then
            umount -l "${mount_point}" || true
        fi
    done
    rm -rf "${work_dir}"
}
trap cleanup EXIT

if [[ ${EUID} -ne 0 ]]; then
    echo "build.sh: debootstrap needs root" >&2
    exit 1
fi

packages=$(grep -v -e '^#' -e '^[[:space:]]*$' "${recipe_dir}/packages.txt" | paste -sd, -)

log "debootstrap ${suite} (minbase + ${packages}) from ${mirror}"
debootstrap --variant=minbase --components=main --include="${packages}" \
    "${suite}" "${rootfs}" "${mirror}" >"${work_dir}/debootstrap.log" 2>&1 || {
    tail -n 40 "${work_dir}/debootstrap.log" >&2
    exit 1
}

log "configuring the guest"
cp -rT "${recipe_dir}/rootfs" "${rootfs}"
cat >"${rootfs}/etc/apt/sources.list" <<SOURCES
deb ${mirror} ${suite} main
deb ${mirror} ${suite}-updates main
deb ${security_mirror} ${suite}-security main
SOURCES
echo lab-template >"${rootfs}/etc/hostname"
cat >"${rootfs}/etc/hosts" <<HOSTS
127.0.0.1 localhost
127.0.1.1 lab-template
HOSTS
# An empty machine-id makes systemd create one on the template's first boot.
: >"${rootfs}/etc/machine-id"
chroot "${rootfs}" systemctl enable --quiet systemd-networkd.service
# Periodic maintenance jobs would fire in every clone as soon as its clock is set forward, and
# compete with the steps under test for the lab's cores.
chroot "${rootfs}" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    mdcheck_start.timer mdcheck_continue.timer mdmonitor-oneshot.timer
chroot "${rootfs}" apt-get clean
rm -rf "${rootfs}"/var/lib/apt/lists/*

log "generating the template host key and the bootstrap client key"
rm -f "${rootfs}"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C lab-template -f "${rootfs}/etc/ssh/ssh_host_ed25519_key"
cp "${rootfs}/etc/ssh/ssh_host_ed25519_key.pub" "${out_dir}/template_host_ed25519_key.pub"
ssh-keygen -q -t ed25519 -N '' -C lab-bootstrap -f "${out_dir}/bootstrap_ed25519"
install -d -m 0700 "${rootfs}/root/.ssh"
install -m 0600 "${out_dir}/bootstrap_ed25519.pub" "${rootfs}/root/.ssh/authorized_keys"

log "extracting kernel and initrd"
cp "$(find "${rootfs}/boot" -name 'vmlinuz-*' | sort | tail -n 1)" "${out_dir}/vmlinuz"
cp "$(find "${rootfs}/boot" -name 'initrd.img-*' | sort | tail -n 1)" "${out_dir}/initrd.img"

log "packing the root filesystem"
truncate -s "${root_disk_size}" "${work_dir}/root.raw"
mkfs.ext4 -q -F -L lab-root -d "${rootfs}" "${work_dir}/root.raw"
qemu-img convert -O qcow2 "${work_dir}/root.raw" "${out_dir}/base.qcow2"
log "done: ${out_dir}"
