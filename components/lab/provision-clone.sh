# Runs in a freshly restored clone (as root, over SSH pinned to the template's host key) and makes
# it a host of its own. The lab prepends the variables below, quoted, when it sends this script:
#   host_name clock_epoch machine_id authorized_key host_private_key host_public_key
#   nvme_links nvme_timeout_s poll_interval_s
# shellcheck disable=SC2154  # the variables above are defined by the prepended header
set -euo pipefail

# The clone woke up with the template's clock, minutes or days behind, and the lab has no NTP.
# QEMU's RTC follows the lab machine's clock across the restore, so it is the best source; it counts
# whole seconds, hence the half second. clock_epoch (taken when this script was sent, so it is
# behind by the SSH handshake) stands in where the guest has no RTC.
rtc_seconds=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo 0)
if ((rtc_seconds >= ${clock_epoch%.*})); then
    date -u -s "@${rtc_seconds}.5" >/dev/null
else
    date -u -s "@${clock_epoch}" >/dev/null
fi

printf '%s\n' "${machine_id}" >/etc/machine-id
printf '%s\n' "${host_name}" >/etc/hostname
hostname "${host_name}"
sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1 ${host_name}/" /etc/hosts

umask 077
printf '%s\n' "${authorized_key}" >/root/.ssh/authorized_keys
printf '%s\n' "${host_private_key}" >/etc/ssh/ssh_host_ed25519_key.new
mv -f /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key
umask 022
printf '%s\n' "${host_public_key}" >/etc/ssh/ssh_host_ed25519_key.pub

# The NVMe drives were hot-plugged just before this script started; wait for udev to name them.
deadline=$((SECONDS + nvme_timeout_s))
for link in ${nvme_links}; do
    until [[ -e "/dev/disk/by-id/${link}" ]]; do
        if ((SECONDS >= deadline)); then
            echo "provision: /dev/disk/by-id/${link} did not appear in ${nvme_timeout_s}s" >&2
            exit 1
        fi
        sleep "${poll_interval_s}"
    done
done

sync
echo "provision: ${host_name} ready"
