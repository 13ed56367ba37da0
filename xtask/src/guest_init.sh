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
# PID 1 itself never chroots (but see hcp_vm.systemd below): the kernel runs
# /sbin/modprobe (dm targets, crc32c) in PID 1's root, i.e. here, where
# busybox and the modules are.
# The host reads the console lines starting with "hcp-vm:".
#
# Words on the kernel command line (vm.rs puts them there) change this:
#   hcp_vm.root=vdX  the overlay's upper layer is the ext4 on /dev/vdX, kept
#                    between runs, instead of a tmpfs
#   hcp_vm.sync=1    sync before the hard exit (kept disks: the root disk and
#                    --attach images)
#   hcp_vm.systemd=1 after the same set-up, PID 1 becomes the host's systemd
#                    in the overlay root (exec chroot: PID 1's root, where the
#                    kernel runs modprobe, becomes $R, which has busybox as
#                    /sbin/modprobe and the modules bound in), and the command
#                    runs as the service hcp-vm-command once the boot is done
#                    (see boot_systemd below)

R=/newroot
P9=trans=virtio,version=9p2000.L,msize=512000

fail() {
	echo "hcp-vm: init failed: $*"
	poweroff -f
	exit 1
}

# Units that are pointless in this VM and cost boot time (one vCPU under
# TCG: every process counts), masked for this boot only, in /run (never in a
# kept upper layer; `systemctl unmask --runtime` or a unit file in
# /etc/systemd/system undoes it): login prompts on the console nobody reads
# (the serial one would also print into the console log); the first-boot
# prompt (it would wait on the console if the host's /etc/machine-id is
# empty); housekeeping timers (the Persistent= ones fire at boot); the host's
# own services; utmp records, the random seed, system users (the host's are
# there), pstore; modules the initramfs does not have or init loaded already;
# the hugepages, mqueue and fuse-control mounts and the binfmt_misc
# automount (no autofs4 in the initramfs); dbus and logind (systemctl does not
# need them; nobody logs in); LVM's monitoring of existing LVs; the journal's
# flush to /var (it is volatile, below). Together about 5 s of boot under TCG.
MASK="serial-getty@ttyS0.service getty@tty1.service console-getty.service
	systemd-firstboot.service
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
	fstrim.timer man-db.timer systemd-tmpfiles-clean.timer
	e2scrub_reap.service systemd-timesyncd.service postgresql.service
	systemd-update-utmp.service systemd-update-utmp-runlevel.service
	systemd-random-seed.service systemd-sysusers.service systemd-pstore.service
	modprobe@configfs.service modprobe@drm.service modprobe@efi_pstore.service
	modprobe@fuse.service modprobe@loop.service modprobe@dm_mod.service
	dev-hugepages.mount dev-mqueue.mount sys-fs-fuse-connections.mount
	proc-sys-fs-binfmt_misc.automount
	systemd-user-sessions.service
	systemd-logind.service dbus.service dbus.socket lvm2-monitor.service
	systemd-journal-flush.service"
# Generators with nothing to find here. Kept: fstab (the point of booting
# systemd), cryptsetup, debug (systemd.mask= and the like on the command line).
MASK_GENERATORS="postgresql-generator systemd-sysv-generator
	systemd-rc-local-generator systemd-gpt-auto-generator
	systemd-hibernate-resume-generator systemd-getty-generator
	systemd-run-generator systemd-integritysetup-generator
	systemd-veritysetup-generator"

# Makes the host's systemd PID 1, in $R. It finds proc, sys, dev, run,
# cgroup2 and the rest mounted already and keeps them. The command runs as
# hcp-vm-command.service, wanted by multi-user.target and ordered after it
# and the default target, so the boot has reached its target when it
# starts. Jobs may still be pending then (a device waited for in the
# background, as a `nofail` mount's is): a command that needs the boot
# settled runs `systemctl is-system-running --wait` itself. Its
# end powers the machine off cleanly (SuccessAction/FailureAction: every
# service is stopped, file systems unmounted, in order; about 3 s, against
# under 1 s for poweroff-force, which would skip the units' ExecStop).
# Emergency and rescue mode, where a failed
# boot ends up, report on the console and power off instead of waiting for a
# login that never comes.
boot_systemd() {
	[ -x $R/lib/systemd/systemd ] || fail "no /lib/systemd/systemd in the host's root"
	u=$R/run/systemd/system
	mkdir -p $R/run/hcp-vm-ctl $u/multi-user.target.wants $u/emergency.service.d $u/rescue.service.d
	mount --bind /ctl $R/run/hcp-vm-ctl
	cat >$R/run/hcp-vm-command <<-'EOF'
	#!/bin/sh
	# Run by hcp-vm-command.service; written by the guest's init.
	. /run/hcp-vm-ctl/command || exit 1
	echo "hcp-vm: command start" >/dev/console
	"$@" </dev/null >/run/hcp-vm-ctl/stdout 2>/run/hcp-vm-ctl/stderr
	rc=$?
	echo "$rc" >/run/hcp-vm-ctl/status
	echo "hcp-vm: command exit $rc" >/dev/console
	EOF
	cat >$u/hcp-vm-command.service <<-'EOF'
	[Unit]
	Description=The command of cargo xtask vm
	After=multi-user.target default.target
	SuccessAction=poweroff
	FailureAction=poweroff

	[Service]
	Type=exec
	ExecStart=/bin/sh /run/hcp-vm-command
	StandardInput=null
	EOF
	ln -s ../hcp-vm-command.service $u/multi-user.target.wants/
	for d in emergency rescue; do
		cat >$u/$d.service.d/hcp-vm.conf <<-EOF
		[Service]
		ExecStart=
		ExecStart=-/bin/sh -c 'SYSTEMD_COLORS=0 systemctl --failed --no-pager >/dev/console; echo "hcp-vm: init failed: systemd went into $d mode (the journal is in the console log)" >/dev/console; systemctl --no-block poweroff --force'
		EOF
	done
	for m in $MASK; do
		ln -s /dev/null $u/$m
	done
	mkdir -p $R/run/systemd/system-generators
	for m in $MASK_GENERATORS; do
		ln -s /dev/null $R/run/systemd/system-generators/$m
	done
	# The journal stays in /run (and goes to the console, see vm.rs): no
	# flush to /var at boot, nothing piling up in a kept upper layer.
	mkdir -p $R/run/systemd/journald.conf.d
	printf '[Journal]\nStorage=volatile\n' >$R/run/systemd/journald.conf.d/hcp-vm.conf
	# Coldplug only what tests use: block devices, and misc for
	# /dev/mapper/control and /dev/loop-control. All of them would cost about
	# 2.5 s more (ttys, ACPI, CPUs, memory, platform devices).
	mkdir -p $u/systemd-udev-trigger.service.d
	cat >$u/systemd-udev-trigger.service.d/hcp-vm.conf <<-'EOF'
	[Service]
	ExecStart=
	ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=block --subsystem-match=misc
	EOF
	# The host's /tmp stays visible, as without --systemd: tmp.conf would
	# empty it at boot (minutes over 9p, and a whiteout per file in a kept
	# upper layer).
	mkdir -p $R/run/tmpfiles.d
	echo "d /tmp 1777 root root -" >$R/run/tmpfiles.d/tmp.conf
	# The host may be a container: systemd would take this file as a sign
	# that it is one too, and then ignore the kernel command line and skip
	# the units of a real machine.
	rm -f $R/.dockerenv
	echo "hcp-vm: systemd start"
	exec chroot $R /lib/systemd/systemd
}

/bin/busybox mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

ROOT_DISK=
SYNC=
SYSTEMD=
read -r cmdline </proc/cmdline
for w in $cmdline; do
	case $w in
	hcp_vm.root=*) ROOT_DISK=${w#*=} ;;
	hcp_vm.sync=1) SYNC=1 ;;
	hcp_vm.systemd=1) SYSTEMD=1 ;;
	esac
done

# Boot time is the budget (TCG): the biggest module (xfs, over a second) loads
# in the background from the start, what the root needs in the foreground,
# the rest in the background again; the command starts once all are in.
modprobe xfs &
xfs=$!
if [ -n "$ROOT_DISK" ]; then
	modprobe -a virtio_pci 9pnet_virtio 9p overlay virtio_blk ext4 ||
		fail "loading virtio_pci, 9p, overlay, virtio_blk, ext4"
else
	modprobe -a virtio_pci 9pnet_virtio 9p overlay || fail "loading virtio_pci, 9p, overlay"
fi
modprobe -a virtio_blk dm_snapshot loop ext4 &
more=$!

mount -t 9p -o $P9,cache=none hcpctl /ctl || fail "mounting the control share"
mount -t 9p -o ro,$P9,cache=loose hostroot /ro || fail "mounting the host's root"
if [ -n "$ROOT_DISK" ]; then
	mount -t ext4 /dev/$ROOT_DISK /rw || fail "mounting the root disk /dev/$ROOT_DISK"
else
	mount -t tmpfs -o mode=755 tmpfs /rw
fi
mkdir -p /rw/upper /rw/work
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

[ -n "$SYSTEMD" ] && boot_systemd

# /ctl/command sets "$@" to what runs in $R: the host's env(1), which sets
# the caller's environment and directory, then execs the caller's argv.
. /ctl/command || fail "reading /ctl/command"
echo "hcp-vm: command start"
/bin/busybox chroot $R "$@" </dev/null >/ctl/stdout 2>/ctl/stderr
rc=$?
echo "$rc" >/ctl/status
echo "hcp-vm: command exit $rc"
# Kept disks: their writes must be on them before qemu exits below.
[ -n "$SYNC" ] && sync

# Second channel, for a lost status file: isa-debug-exit makes qemu exit with
# (value << 1) | 1, so only 0..127 get through.
[ "$rc" -gt 127 ] && rc=127
printf "\\$(printf %03o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
