# shellcheck shell=bash
# lab-desc: ext4 mounted on /dev/ublkb0 and being written (files with checksums, fsync) when the ublk-host daemon is killed with -9; the same attach command run again takes the device over; writes go on, more writes, umount, e2fsck -fn clean, every checksum equal, no ext4 error or journal abort in dmesg
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve 7160 7195
attach_args=(--queues 2 --lanes-per-queue 2)
ml_attach host1 h1 vol "${attach_args[@]}"
dev=$ML_DEV
id=$ML_ID
mnt=$LAB_WORK/mnt
src=$LAB_WORK/src
mkdir -p "$mnt" "$src"
dmesg -c >/dev/null

mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
on_cleanup "! grep -q ' $mnt ' /proc/mounts || umount $mnt"

# The writer: each file made in tmpfs, copied onto ext4 with fsync, then counted.
cat >"$LAB_WORK/writer.sh" <<WRITER
set -e
i=0
while [ ! -e "$LAB_WORK/stop" ]; do
	dd if=/dev/urandom of="$src/f\$i" bs=16K count=\$((1 + i % 8)) status=none
	dd if="$src/f\$i" of="$mnt/f\$i" bs=16K conv=fsync status=none
	i=\$((i + 1))
	echo "\$i" >"$LAB_WORK/count"
done
WRITER
count() { cat "$LAB_WORK/count" 2>/dev/null || echo 0; }
bg_start writer bash "$LAB_WORK/writer.sh"
wait_for "[ \$(count) -ge 10 ]" 60 "10 files written"

t_kill=$(now_ms)
kill -KILL "$(bg_pid host1)"
wait_for "! bg_alive host1" 10 "the killed daemon to go"
at_kill=$(count)
log "killed the daemon with $at_kill files written"

# A supervisor runs the very same attach command again: it takes the device over.
ml_attach host2 h1 vol "${attach_args[@]}"
assert_eq "$ML_DEV" "$dev" "device after the re-run attach"
grep -Eq "$dev( as [^ ]+)? ready \\(recovered\\)" "$LAB_WORK/host2.log" || fail "the re-run attach did not recover $dev"
t_ready=$(now_ms)
wait_for "[ \$(count) -ge $((at_kill + 10)) ]" 60 "10 more files after the recovery"
t_more=$(now_ms)
touch "$LAB_WORK/stop"
wait_for "! bg_alive writer" 60 "the writer to stop"
bg_stop writer || fail "the writer failed (an I/O error on ext4?): $(tail -n 3 "$LAB_WORK/writer.log")"
metric fs_kill_to_recovered_ms $((t_ready - t_kill)) ms
metric fs_kill_to_10_more_files_ms $((t_more - t_kill)) ms

# More writes after the recovery, then a clean unmount.
dd if=/dev/urandom of="$src/after" bs=1M count=4 status=none
cp "$src/after" "$mnt/after"
(cd "$src" && sha256sum -- *) >"$LAB_WORK/files.sha256"
files=$(wc -l <"$LAB_WORK/files.sha256")
sync
umount "$mnt"
# Unmounted everywhere: the recovering daemon's own mount namespace holds no copy of it.
if grep -l " - ext4 $dev " /proc/[0-9]*/mountinfo 2>/dev/null; then
	fail "$dev is still mounted in some process's mount namespace after umount"
fi
e2fsck -fn "$dev" >"$LAB_WORK/fsck.log" 2>&1 || { cat "$LAB_WORK/fsck.log"; fail "e2fsck -fn after the daemon crash reports problems"; }
mount "$dev" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$LAB_WORK/files.sha256") || fail "checksums differ after the daemon crash"
umount "$mnt"
if dmesg | grep -iE 'EXT4-fs (error|warning)|journal|I/O error|Buffer I/O' | grep -v 'mounted filesystem'; then
	fail "the kernel logged filesystem or I/O errors across the daemon crash"
fi
log "$files files (written across a kill -9 of the daemon and after): fsck clean, all checksums equal, dmesg clean"
ml_detach host2 "$dev"
