# shellcheck shell=bash
# host layer: the OS, sshd's effective settings, and the time daemons.
section os
# shellcheck disable=SC1091
(. /etc/os-release && echo "${ID}-${VERSION_ID:-}")
section kernel
uname -r
section boot_id
cat /proc/sys/kernel/random/boot_id
section sshd
sshd -T 2>/dev/null | grep -E '^(port|passwordauthentication|kbdinteractiveauthentication|permitrootlogin) '
section time_sync
# Each time daemon's unit state (a "unit <name>" line, then systemctl's Key=value lines), then
# chrony's own view of its synchronisation ("tracking", then chronyc's lines). Each query is
# bounded: a hung D-Bus or a dead chronyd costs seconds, not the report.
for time_unit in chrony.service systemd-timesyncd.service; do
  echo "unit ${time_unit}"
  timeout 10 systemctl show --property=LoadState,ActiveState,SubState,UnitFileState \
    "${time_unit}" 2>&1
done
echo "tracking"
if command -v chronyc >/dev/null 2>&1; then
  timeout 10 chronyc -n tracking 2>&1
fi
