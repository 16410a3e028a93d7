# shellcheck shell=bash
# lab-desc: md RAID1 across two array servers: two servers on their own disks, one device from each attached with --fail-fast, mdadm RAID1 (internal write-intent bitmap, failfast members) with ext4 on top; kill -9 one server under fio --verify writes: md marks its member faulty within the bound, the filesystem sees no error, fio verifies; the server restarts, the device's lanes come back by themselves, mdadm --re-add resyncs only what the bitmap marks, --detail is clean and both halves are equal
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/ublk-control /dev/vda /dev/vdb
need_bin array-server ublk-host jq fio mdadm mkfs.ext4
[ -e /proc/mdstat ] || skip "no md driver (md-mod, raid1) in this kernel"

# The devices' fail-fast bound, seconds: md sees EIO this long after the server is gone.
FAIL_FAST=3
# md must mark the member faulty within this (fail-fast bound, a lane clock tick, md).
FAULTY_LIMIT_MS=$(((FAIL_FAST + 7) * 1000))
MD=/dev/md0
MNT=/mnt/md

ml_serve_own a /dev/vda 7160 7197
ml_serve_own b /dev/vdb 7161 7198
ml_use_server a 7160 7197
ml_attach host-a h-a vol-a --queues 1 --fail-fast "$FAIL_FAST"
dev_a=$ML_DEV
ml_use_server b 7161 7198
ml_attach host-b h-b vol-b --queues 1 --fail-fast "$FAIL_FAST"
dev_b=$ML_DEV

mdadm --create "$MD" --run --level=1 --raid-devices=2 --metadata=1.2 --bitmap=internal \
	--failfast "$dev_a" "$dev_b" >"$LAB_WORK/mdadm-create.log" 2>&1 ||
	fail "mdadm --create: $(tail -n 3 "$LAB_WORK/mdadm-create.log")"
on_cleanup "[ ! -e /sys/block/md0/md ] || mdadm --stop $MD"
mdadm --wait "$MD" || true
wait_for "grep -q '\[UU\]' /proc/mdstat" 120 "the initial mirror sync"
mkfs.ext4 -q "$MD"
mkdir -p "$MNT"
mount "$MD" "$MNT"
on_cleanup "! mountpoint -q $MNT || umount $MNT"

json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$MNT/data" --ioengine=io_uring --direct=1 --iodepth=8 \
	--name=mirror --rw=randwrite --bs=4k --size=8M --rate_iops=200 \
	--verify=crc32c --do_verify=1 --verify_fatal=1
wait_for "[ \"\$(ml_bytes_written h-b vol-b)\" -ge 262144 ]" 60 "fio writing through server b"

bg_stop server-b KILL || true
kill_ms=$(now_ms)
log "server b killed"
wait_for "[ \"\$(cat /sys/block/md0/md/degraded)\" = 1 ]" 60 "md to mark the member of server b faulty"
faulty_ms=$(($(now_ms) - kill_ms))
log "md degraded ${faulty_ms} ms after the kill"
[ "$faulty_ms" -le "$FAULTY_LIMIT_MS" ] || fail "md took ${faulty_ms} ms to drop the member (limit ${FAULTY_LIMIT_MS})"
mdadm --detail "$MD" | grep -q 'faulty' || fail "mdadm --detail shows no faulty member: $(mdadm --detail "$MD")"

wait_for "! bg_alive fio" 240 "fio to finish on the degraded mirror"
bg_stop fio || fail "fio failed: $(tail -n 5 "$LAB_WORK/fio.log")"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '.jobs[0].read.io_bytes' "$json.clean")" $((8 << 20)) "bytes fio read back and verified"
dmesg | grep -q 'EXT4-fs error' && fail "ext4 saw an error: $(dmesg | grep 'EXT4-fs error' | head -n 2)"
sum_before=$(sha256sum "$MNT/data" | cut -d' ' -f1)

# The server returns; the device's lanes reconnect by themselves; the member goes back in.
bg_start server-b2 array-server serve --disk /dev/vdb --listen 127.0.0.1:7161 \
	--threads 1 --admin 127.0.0.1:7198 --admin-token-file "$LAB_WORK/b.token"
wait_for "ml_ctl --json array" 30 "array-server b's admin API after the restart"
wait_for "dd if=$dev_b of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null" 60 "device b to answer again"
mdadm "$MD" --remove failed >/dev/null 2>&1 || mdadm "$MD" --remove "$dev_b" >/dev/null 2>&1 || true
readd_ms=$(now_ms)
mdadm "$MD" --re-add "$dev_b" >"$LAB_WORK/mdadm-readd.log" 2>&1 ||
	fail "mdadm --re-add: $(tail -n 3 "$LAB_WORK/mdadm-readd.log")"
wait_for "[ \"\$(cat /sys/block/md0/md/degraded)\" = 0 ] && grep -q '\[UU\]' /proc/mdstat && ! grep -q recovery /proc/mdstat" 300 \
	"the bitmap resync"
resync_ms=$(($(now_ms) - readd_ms))
log "re-added and resynced in ${resync_ms} ms"
mdadm --detail "$MD" | grep -Eq 'State : (clean|active) *$' || fail "mdadm --detail not clean: $(mdadm --detail "$MD" | grep State)"
assert_eq "$(sha256sum "$MNT/data" | cut -d' ' -f1)" "$sum_before" "the file's checksum after the resync"

umount "$MNT"
mdadm --stop "$MD" >/dev/null
# Both halves equal: the members' data areas (past md's superblock and bitmap).
offset_a=$(mdadm --examine "$dev_a" | awk '/Data Offset/ {print $4}')
offset_b=$(mdadm --examine "$dev_b" | awk '/Data Offset/ {print $4}')
assert_eq "$offset_a" "$offset_b" "data offsets (sectors) of the two members"
sum_a=$(dd if="$dev_a" bs=1M skip=$((offset_a * 512)) iflag=direct,skip_bytes 2>/dev/null | sha256sum | cut -d' ' -f1)
sum_b=$(dd if="$dev_b" bs=1M skip=$((offset_b * 512)) iflag=direct,skip_bytes 2>/dev/null | sha256sum | cut -d' ' -f1)
assert_eq "$sum_a" "$sum_b" "the two halves' data areas"
metric md_faulty_ms "$faulty_ms" ms
metric resync_ms "$resync_ms" ms
log "md RAID1 over two servers: member faulty ${faulty_ms} ms after kill -9, fio verified with 0 errors, bitmap resync ${resync_ms} ms, halves equal"

ml_detach host-a "$dev_a"
ml_detach host-b "$dev_b"
