#!/bin/bash
# The hcp demo: a snapshot of a busy ext4 volume, proven consistent.
# Runs as root where device-mapper exists (inside the test VM by default).
# $1: an empty scratch block device; it is overwritten.
set -euo pipefail
disk=${1:?usage: demo.sh SCRIPT_DEVICE}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# No udev here: LVM must neither wait for it nor expect its rules.
lvm_cfg='activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}'
export LVM_SUPPRESS_FD_WARNINGS=1

say "A scratch LVM volume on $disk, with an ext4 filesystem and some files"
run lvm pvcreate -q --config "$lvm_cfg" "$disk"
run lvm vgcreate -q --config "$lvm_cfg" demo "$disk"
run lvm lvcreate -q --config "$lvm_cfg" -n data -L 192M demo
run mkfs.ext4 -q /dev/demo/data
mkdir -p /mnt/data
run mount /dev/demo/data /mnt/data
for i in 1 2 3 4 5; do head -c 4M /dev/urandom > /mnt/data/file$i.bin; done
sync
(cd /mnt/data && sha256sum file*.bin) > /tmp/before.sha256
cat /tmp/before.sha256

say "A write load: a log that grows by a line every few milliseconds, fsync'd"
( i=0; while :; do i=$((i+1)); echo "line $i $(date +%s.%N)" >> /mnt/data/app.log; sync /mnt/data/app.log 2>/dev/null || sync; done ) &
writer=$!
trap 'kill $writer 2>/dev/null || true' EXIT
sleep 1

say "hcp start --trace: measure the writer for 2 s, then snapshot the live volume (the writer keeps going)"
run hcp start --trace --baseline 2s -q 96M /dev/demo/data

say "hcp -l: the session"
run hcp -l

say "The origin moves on: overwrite every file, append to the log"
for i in 1 2 3 4 5; do head -c 4M /dev/urandom > /mnt/data/file$i.bin; done
sleep 1
kill $writer; wait $writer 2>/dev/null || true; trap - EXIT
sync
snap=$(ls -d /var/hcp/demo-data_hcp* | head -1)
printf 'origin log: %s lines; snapshot log: %s lines (frozen at the start)\n' \
  "$(wc -l < /mnt/data/app.log)" "$(wc -l < "$snap/app.log")"

say "hcp stats --history: the session's figures second by second (the last ten)"
run sh -c "hcp stats hcp1 --history | tail -n 10"

say "hcp stats: what the snapshot cost the running system, measured in the kernel, and the answer for an 8-hour backup window"
run hcp stats hcp1 --window 8h

say "The snapshot still holds the pre-snapshot files"
run sh -c "cd $snap && sha256sum -c /tmp/before.sha256"
if (cd /mnt/data && sha256sum -c --quiet /tmp/before.sha256 >/dev/null 2>&1); then
  echo "unexpected: the origin did not change"; exit 1
else
  echo "the origin's files changed, as they should"
fi
run hcp -l

say "hcp remove: unmount, drop the snapshot, give the volume its own table back, write the final report"
run hcp -r /dev/demo/data --report /tmp/demo-report.json
run dmsetup table

say "The report to look at: the answers, the plots and the numbers behind them"
html=/tmp/demo-report.html
if [ -n "${HCP_VM_OUT:-}" ]; then cp "$html" "$HCP_VM_OUT/report.html"; fi
echo "report: $html"
hcp report /tmp/demo-report.json -o /tmp/demo-report-again.html >/dev/null
echo "the answers:"
grep -E '^ *"(write_latency|switch|store)": "' /tmp/demo-report.json | sed -E 's/^ *"[a-z_]+": "(.*)",?$/  \1/'
say "Done: the snapshot was consistent while the volume stayed in use"
