# shellcheck shell=bash
# lab-desc: `ublk-host nbd --config FILE vol` serves the partition on a Unix socket; kernel NBD (nbd-client -u -C 2: two connections, each its own lane engine) on it: ext4 made, files written with fsync, disconnected, reconnected, every checksum equal, e2fsck clean; a read through NBD equals the same bytes read through a ublk device of the partition
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/nbd0
need_bin nbd-client
ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve 7180 7197
mkdir -p /etc/multilane
cat >/etc/multilane/host.toml <<TOML
host = "h1"
secret_file = "$LAB_WORK/h1.key"
[servers.lab]
address = "$ML_ADDR"
[partitions.vol]
lanes_per_queue = 2
TOML
on_cleanup "rm -rf /etc/multilane"
sock=/run/multilane/vol.sock
mkdir -p /run/multilane
bg_start nbd ublk-host nbd --config /etc/multilane/host.toml vol --socket "$sock"
wait_for "[ -S $sock ] || ! bg_alive nbd" 30 "the NBD socket"
[ -S "$sock" ] || fail "ublk-host nbd exited: $(tail -n 3 "$LAB_WORK/nbd.log")"

connect() {
	nbd-client -N vol -u "$sock" /dev/nbd0 -C 2 -b 512 >"$LAB_WORK/nbd-client.log" 2>&1 ||
		fail "nbd-client: $(cat "$LAB_WORK/nbd-client.log")"
	wait_for "[ \$(blockdev --getsize64 /dev/nbd0) -gt 0 ]" 30 "/dev/nbd0 to get its size"
}
connect
on_cleanup "nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true"
size=$(blockdev --getsize64 /dev/nbd0)
log "/dev/nbd0: $size bytes over $sock"
dmesg -c >/dev/null
mnt=$LAB_WORK/mnt
src=$LAB_WORK/src
mkdir -p "$mnt" "$src"
mkfs.ext4 -q -F /dev/nbd0
mount /dev/nbd0 "$mnt"
on_cleanup "! grep -q ' $mnt ' /proc/mounts || umount $mnt"
for i in 1 2 3 4 5 6; do
	dd if=/dev/urandom of="$src/f$i" bs=1M count=2 status=none
	dd if="$src/f$i" of="$mnt/f$i" bs=1M conv=fsync status=none
done
(cd "$src" && sha256sum -- *) >"$LAB_WORK/files.sha256"
umount "$mnt"
nbd-client -d /dev/nbd0 >/dev/null 2>&1
wait_for "[ \$(blockdev --getsize64 /dev/nbd0) = 0 ]" 30 "/dev/nbd0 to disconnect"

connect
e2fsck -fn /dev/nbd0 >"$LAB_WORK/fsck.log" 2>&1 || { cat "$LAB_WORK/fsck.log"; fail "e2fsck -fn over NBD reports problems"; }
mount /dev/nbd0 "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$LAB_WORK/files.sha256") || fail "checksums differ after reconnecting"
umount "$mnt"
via_nbd=$(dd if=/dev/nbd0 bs=1M count=16 iflag=direct status=none | sha256sum)
nbd-client -d /dev/nbd0 >/dev/null 2>&1
wait_for "[ \$(blockdev --getsize64 /dev/nbd0) = 0 ]" 30 "/dev/nbd0 to disconnect"

ml_attach host1 h1 vol --queues 1
via_ublk=$(dd if="$ML_DEV" bs=1M count=16 iflag=direct status=none | sha256sum)
assert_eq "$via_ublk" "$via_nbd" "the first 16 MiB through ublk and through NBD"
ml_detach host1 "$ML_DEV"
if dmesg | grep -iE 'EXT4-fs (error|warning)|I/O error|Buffer I/O|nbd.*(error|timed out)'; then
	fail "the kernel logged errors on /dev/nbd0"
fi
bg_stop nbd TERM || true
log "ext4 over NBD (2 connections) across a reconnect: fsck clean, checksums equal, same bytes as ublk"
