#!/bin/bash
# Where the time of a switch goes, measured in the kernel: the function
# graph tracer over the dm suspend/resume ioctl (dev_suspend) and the
# filesystem's freeze and thaw (freeze_super, thaw_super), three levels
# deep, for `hcp start` and `hcp remove` and for the bench's floor (one
# process suspending the origin with lockfs and resuming it), with a
# writer on the origin (4 KiB writes, each synced).
#
# Run in the test VM with a scratch disk, with the release build:
#   cargo build --release
#   cargo xtask vm --kernel 6.12 --release --no-build --disk 1G -- bench/probes/switch-ftrace.sh
# It writes trace.txt (the whole graph), summary.txt (every call of the
# three roots with its duration, and their slowest children) and each
# command's JSON to the VM's output directory.
set -euo pipefail
T=/sys/kernel/tracing
OUT=/hcp-vm-out
mountpoint -q $T || mount -t tracefs nodev $T
uname -r > $OUT/kernel
dmsetup create probe-origin --table "0 $((512 * 2048)) linear /dev/vda 0"
dmsetup create probe-store --table "0 $((160 * 2048)) linear /dev/vda $((512 * 2048))"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/probe-origin
mkdir -p /mnt/probe
mount /dev/mapper/probe-origin /mnt/probe
dd if=/dev/zero of=/mnt/probe/w bs=1M count=1 oflag=sync status=none
dd if=/dev/zero of=/mnt/probe/w bs=4k count=1000000 oflag=dsync conv=notrunc status=none &
writer=$!
trap 'kill $writer 2>/dev/null || true' EXIT
sleep 1
echo function_graph > $T/current_tracer
echo 3 > $T/max_graph_depth
for f in dev_suspend freeze_super thaw_super; do echo $f >> $T/set_graph_function; done
echo funcgraph-proc > $T/trace_options
echo 40000 > $T/buffer_size_kb
for i in 1 2 3; do
  echo "=== hcp start $i" > $T/trace_marker
  hcp start --skip-mount --chunk-size 4K -c /dev/mapper/probe-store /dev/mapper/probe-origin --json > $OUT/start-$i.json
  sleep 0.3
  echo "=== hcp remove $i" > $T/trace_marker
  hcp remove /dev/mapper/probe-origin --json > $OUT/remove-$i.json
  sleep 0.3
  echo "=== floor $i" > $T/trace_marker
  dmsetup suspend probe-origin
  dmsetup resume probe-origin
  sleep 0.3
done
echo 0 > $T/tracing_on
cat $T/trace > $OUT/trace.txt
# The markers, each root call and its end, and any call of 300 us or more
# up to two levels below a root.
grep -E '===|(dev_suspend|freeze_super|thaw_super).*\{$|\| +[!#*@$] +[0-9.]+ us +\|( {2}| {4}| {6})[a-z_}]' $OUT/trace.txt \
  > $OUT/summary.txt
