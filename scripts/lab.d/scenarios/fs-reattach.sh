# shellcheck shell=bash
# lab-desc: mkfs.ext4 on an array partition, a tree of files, sha256sums, sync, umount, detach; re-attach (new daemon), fsck clean, mount, every checksum matches
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve 7130 7192
ml_attach host1 h1 vol --queues 2 --lanes-per-queue 2 --split 128K
dev=$ML_DEV
mnt=$LAB_WORK/mnt
mkdir -p "$mnt"

mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
on_cleanup "! mountpoint -q $mnt || umount $mnt"
for dir in a b b/c d/e/f; do
	mkdir -p "$mnt/$dir"
	for n in 1 2 3; do
		dd if=/dev/urandom of="$mnt/$dir/file$n" bs=4K count=$((n * n * 8)) status=none
	done
done
printf 'small\n' >"$mnt/d/small.txt"
dd if=/dev/urandom of="$mnt/big" bs=1M count=4 status=none
(cd "$mnt" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >"$LAB_WORK/tree.sha256"
files=$(wc -l <"$LAB_WORK/tree.sha256")
assert_eq "$files" 14 "files written"
sync
umount "$mnt"
log "wrote $files files, synced, unmounted"

ml_detach host1 "$dev"
[ ! -e "$dev" ] || fail "$dev still exists after detach"

ml_attach host2 h1 vol --queues 2 --lanes-per-queue 2 --split 128K
dev=$ML_DEV
e2fsck -fn "$dev" >"$LAB_WORK/fsck.log" 2>&1 || { cat "$LAB_WORK/fsck.log"; fail "e2fsck -fn after re-attach reports problems"; }
mount "$dev" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$LAB_WORK/tree.sha256") || fail "checksums differ after detach + re-attach"
assert_eq "$(find "$mnt" -type f ! -path "$mnt/lost+found/*" | wc -l)" "$files" "files after re-attach"
umount "$mnt"
log "after detach + re-attach: fsck clean, all $files checksums match"
ml_detach host2 "$dev"
