# shellcheck shell=bash
# driver layer: the NVML probe (sent as a payload) and the kernel's XID lines. Input: PROBE_DIR.
section probe_env
cat "${PROBE_DIR}/VERSION" 2>/dev/null
section gpu_probe
if [ ! -e /proc/driver/nvidia/version ] && ! ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1'; then
  # no kernel driver and no NVML library: the probe could only say so, without starting Python
  echo '{"probe_version": 1, "nvml": "no-driver", "error": "no NVIDIA kernel driver loaded (/proc/driver/nvidia absent) and no libnvidia-ml.so.1"}'
elif command -v python3 >/dev/null && [ -n "${SOVEREIGN_PAYLOAD_DIR:-}" ]; then
  python3 -I -S "${SOVEREIGN_PAYLOAD_DIR}/gpu_probe.py" --lib "${PROBE_DIR}/lib"
else
  echo '{"probe_version": 1, "nvml": "no-python", "error": "python3 is not installed (the 70-probe-env step installs it)"}'
fi
section kernel_xid
if command -v journalctl >/dev/null; then
  journalctl -k -b --no-pager -o short 2>/dev/null | grep 'NVRM: Xid' | tail -200
else
  dmesg 2>/dev/null | grep 'NVRM: Xid' | tail -200
fi
