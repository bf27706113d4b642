#!/usr/bin/env bash
# Read-only fact collection for post-deploy verification: one run per host, one SSH connection.
# The runner sends this preamble, then each layer's part (components/verification/layers/*.sh)
# in layer order, then the closing "end" section; every part prints "==== <section>" headers
# and the verifying machine parses and judges them (one module per layer).
# The only writes, both on the cache and removed at once: the cache_writable section creates an
# empty file; on a cache that holds no file large enough to time a read, the cache_read section
# writes one for it.
set -uo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

section() { printf '\n==== %s\n' "$1"; }
