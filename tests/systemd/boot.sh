#!/usr/bin/env bash
# Boots a real systemd as PID 1 of the private PID + mount namespace this
# script runs in (started by tests/src/systemd.rs through
# `unshare --pid --fork --mount --uts --ipc --propagation private`).
#
# Every write lands in a tmpfs: the new root is an overlay whose lower layer is
# the machine's / and whose upper layer is a fresh tmpfs, so systemd's boot
# clean-ups (tmpfiles wiping /tmp, sysctls, udev) never touch the real machine.
# Units that would touch the machine or take its ports are masked, and the boot
# goes to basic.target only (no installed daemons start).
set -euo pipefail
scratch="$1"
mkdir -p "$scratch"
mount -t tmpfs -o mode=0755,size=4g molt-sd "$scratch"
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
R="$scratch/root"
# Never boot over the real root: check the overlay is really there.
if ! awk -v r="$R" '$5 == r && $9 == "overlay" { found = 1 } END { exit !found }' /proc/self/mountinfo; then
  echo "boot.sh: the overlay root is not mounted at $R; refusing to boot systemd" >&2
  exit 1
fi
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 cgroup "$R/sys/fs/cgroup"
mkdir -p "$R/sys/fs/cgroup/unified" "$R/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=0755 run "$R/run"
mask="$R/etc/systemd/system"
mkdir -p "$mask"
for u in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
         systemd-udev-trigger.service systemd-udev-settle.service systemd-sysctl.service \
         systemd-modules-load.service systemd-remount-fs.service systemd-random-seed.service \
         systemd-timesyncd.service systemd-networkd.service systemd-resolved.service \
         getty@.service serial-getty@.service console-getty.service getty.target \
         ssh.service sshd.service nginx.service postgresql.service postgresql@.service \
         redis-server.service memcached.service prometheus.service docker.service \
         containerd.service cron.service systemd-logind.service \
         systemd-hwdb-update.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
         sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
         sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
         systemd-journald-audit.socket systemd-firstboot.service systemd-machine-id-commit.service; do
  ln -sf /dev/null "$mask/$u"
done
hostname molt-systemd-test
cd "$R"
mkdir -p oldroot
pivot_root . oldroot
cd /
umount -l /oldroot
exec /lib/systemd/systemd --system --unit=basic.target
