#!/bin/busybox sh
# PID 1 of the `cargo xtask vm` guest. Busybox's shell runs its own applets
# without a PATH lookup (through /proc/self/exe, hence the first mount), so
# the initramfs needs no applet links.
#
# The command runs in the HOST's userland: the 9p share "hostroot" (the host's
# /, read-only) under an overlay whose upper layer is a tmpfs, so the command
# can write anywhere and the host never sees it. Two more shares:
#   hcpctl -> /ctl, outside the command's root: command (written by the host,
#             see vm.rs), stdout, stderr and status (written here)
#   hcpout -> /hcp-vm-out in the command's root ($HCP_VM_OUT): results
# PID 1 itself never chroots: the kernel runs /sbin/modprobe (dm targets,
# crc32c) in PID 1's root, i.e. here, where busybox and the modules are.
# The host reads the console lines starting with "hcp-vm:".

R=/newroot
P9=trans=virtio,version=9p2000.L,msize=512000

fail() {
	echo "hcp-vm: init failed: $*"
	poweroff -f
	exit 1
}

/bin/busybox mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Boot time is the budget (TCG): the biggest module (xfs, over a second) loads
# in the background from the start, what the root needs in the foreground,
# the rest in the background again; the command starts once all are in.
modprobe xfs &
xfs=$!
modprobe -a virtio_pci 9pnet_virtio 9p overlay || fail "loading virtio_pci, 9p, overlay"
modprobe -a virtio_blk dm_snapshot loop ext4 &
more=$!

mount -t 9p -o $P9,cache=none hcpctl /ctl || fail "mounting the control share"
mount -t 9p -o ro,$P9,cache=loose hostroot /ro || fail "mounting the host's root"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay $R ||
	fail "mounting the overlay root"

# The host's /lib and /sbin are relative (usr-merge) symlinks, so the paths
# below stay inside $R.
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm $R/lib/modules $R/boot $R/hcp-vm-out
mount -t devpts -o newinstance,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=755 tmpfs $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf -o mode=700 bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t 9p -o $P9,cache=none hcpout $R/hcp-vm-out || fail "mounting the output share"
# The guest's modules, and busybox as modprobe: it reads the modules.dep made
# for them (kmod would want its binary indexes, and the host may lack kmod).
mount --bind /lib/modules $R/lib/modules
rm -f $R/sbin/modprobe
touch $R/sbin/modprobe
mount --bind /bin/busybox $R/sbin/modprobe
# No /proc/config.gz in Debian kernels: libbpf reads this for kconfig.
cp /boot/config-* $R/boot/
echo hcp-vm >/proc/sys/kernel/hostname
ip link set lo up

wait $more || fail "loading virtio_blk, dm_snapshot, loop, ext4"
wait $xfs || fail "loading xfs"

# /ctl/command sets "$@" to what runs in $R: the host's env(1), which sets
# the caller's environment and directory, then execs the caller's argv.
. /ctl/command || fail "reading /ctl/command"
echo "hcp-vm: command start"
/bin/busybox chroot $R "$@" </dev/null >/ctl/stdout 2>/ctl/stderr
rc=$?
echo "$rc" >/ctl/status
echo "hcp-vm: command exit $rc"

# Second channel, for a lost status file: isa-debug-exit makes qemu exit with
# (value << 1) | 1, so only 0..127 get through.
[ "$rc" -gt 127 ] && rc=127
printf "\\$(printf %03o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
