#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine,
# and the kernel/ulimit settings the AF_XDP lab needs.
# Idempotent: installs only what is missing, changes only what is too low.
# Needs root (or sudo) for apt and for raising the memlock limit.
#
# Why each package:
#   libelf-dev clang m4 zlib1g-dev pkg-config gcc make  build of xsk-rs (libxdp-sys, libbpf-sys: bundled C)
#   libpcap-dev                                         xdp-tools' build (libxdp-sys) probes for it
#   iproute2 (ip)                                       lab: network namespaces, veth pairs, addresses
#   ethtool                                             lab: TX checksum offload off on pod veths
#   iputils-ping                                        tests and `portcullis lab flood`: ping between pods
#   procps                                              sysctl (lab, control/tests/run_dataplane.rs, benches/e2e/
#                                                       side-by-side.sh) and kill (lab, control/tests/run_dataplane.rs)
#   nftables                                            benches/e2e/side-by-side.sh (run by scripts/test.sh): sink
#                                                       counters, kernel configurations; `portcullis lab flood`: sink
#   python3                                             scripts/demo.sh, scripts/measure-change-latency.sh, raw-socket
#                                                       senders of the dataplane tests (dataplane/tests/kernel_oracle.py)
#   prometheus (prometheus, promtool)                   the alerts of deploy/monitoring/ under promtool's checks and unit
#                                                       tests (control/tests/deploy.rs), and a real Prometheus scraping
#                                                       the daemon and evaluating them (control/tests/run_manifests.rs).
#                                                       Its service is neither started nor enabled: the tests start
#                                                       their own. (While these packages install, where the machine
#                                                       has no policy-rc.d, no service starts or restarts at all.)
set -euo pipefail
pkgs=(libelf-dev clang m4 libpcap-dev pkg-config zlib1g-dev gcc make iproute2 ethtool iputils-ping procps nftables python3
  prometheus)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # Wait for another apt (an image's unattended upgrade) rather than fail; one retry of the index.
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq || { sleep 10; $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq; }
  # No service of these packages is started (prometheus' would listen on :9090): where the
  # machine has no policy-rc.d, one that denies every start is in place for the install only.
  no_start=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    no_start=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$no_start" >/dev/null
    $SUDO chmod +x "$no_start"
    trap '$SUDO rm -f "$no_start"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$no_start" ]; then
    $SUDO rm -f "$no_start"
    trap - EXIT
  fi
  # Nor at the next boot: the package enables its service.
  # (systemctl disables offline too, without a running systemd.)
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
fi

# AF_XDP UMEM is locked memory. Root with CAP_IPC_LOCK is not limited, but a
# process whose memlock limit is low and lacks CAP_IPC_LOCK gets ENOBUFS when
# registering a UMEM. A limit raised here would only reach this script's own
# children, so the scripts that run the tests (test.sh, demo.sh) raise their
# own; this checks whether that can work and warns when it cannot, and sets the
# default for new login sessions.
cur=$(ulimit -l)
if [ "$cur" != "unlimited" ] && ! ulimit -l unlimited 2>/dev/null; then
  # CAP_IPC_LOCK (capability 14) makes the limit irrelevant.
  capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  if [ -z "$capeff" ] || [ $(( 0x$capeff >> 14 & 1 )) -eq 0 ]; then
    echo "note: memlock limit is ${cur} KiB and cannot be raised, and CAP_IPC_LOCK is missing: large UMEMs will fail (ENOBUFS)"
  fi
fi
if [ "$(id -u)" -eq 0 ] && [ -d /etc/security/limits.d ] && [ ! -f /etc/security/limits.d/90-portcullis-memlock.conf ]; then
  printf '* - memlock unlimited\nroot - memlock unlimited\n' > /etc/security/limits.d/90-portcullis-memlock.conf
fi
