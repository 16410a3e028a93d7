# shellcheck shell=bash
# lab-desc: 7.3 kernel: attach picks zero copy (UBLK_F_AUTO_BUF_REG, asked with GET_FEATURES), `list` says mode=zero-copy, fio crc32c verify 4k/128k/1M through the request's own pages; --copy forces copy mode; live resize (partition grow -> UPDATE_SIZE -> online resize2fs); the zero copy vs copy benchmark is zero-copy-bench
# lab-optional: needs a kernel whose ublk driver offers automatic buffer registration (6.16+); scripts/test runs it on 7.3 only (LAB_73_SCENARIOS)
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/ublk-control

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve 7130 7193

# mode_of ID -> the `mode=` field of the device's list line
mode_of() { ublk-host list | grep "^/dev/ublkb$1[[:space:]]" | grep -o 'mode=[a-z-]*' | cut -d= -f2; }

ml_attach zc h1 vol --queues 2 --lanes-per-queue 2 --split 128K
zc=$ML_DEV
assert_eq "$(mode_of "$ML_ID")" zero-copy "list: mode of $zc (the 7.3 driver offers AUTO_BUF_REG)"
grep -q ' lanes) zero-copy partition' "$LAB_WORK/zc.log" || fail "the ready line does not say zero-copy"
# The 7.3 driver offers user copy too: small writes go out copied (ublk/small_writes.rs),
# and the 4k writes below verify that path
grep -q 'zero-copy (small writes copied) mode' "$LAB_WORK/zc.log" ||
	fail "the device was not created with user copy beside zero copy"

# Writes with verify through fixed buffers, concurrent jobs on disjoint regions, with
# requests split over both lanes (128K, 1M) and small ones interleaved: 4k and 32k (the
# largest write sent copied) go through the tag's own buffer, the rest through fixed buffers.
json=$LAB_WORK/fio.json
fio --eta=never --output-format=json --output="$json" \
	--filename="$zc" --ioengine=io_uring --direct=1 --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=1 \
	--name=rand4k --rw=randwrite --bs=4k --size=4M --offset=0 --offset_increment=4M --numjobs=2 \
	--name=rand32k --rw=randwrite --bs=32k --size=4M --offset=8M --offset_increment=4M --numjobs=2 \
	--name=rand128k --rw=randwrite --bs=128k --size=8M --offset=16M --offset_increment=8M --numjobs=2 \
	--name=seq1m --rw=write --bs=1M --size=16M --offset=32M \
	|| fail "fio with crc32c verify failed on the zero-copy device (see the log)"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '[.jobs[] | .read.io_bytes] | add' "$json.clean")" $((48 << 20)) "bytes read back and verified"
log "zero copy: 48 MiB written and verified with crc32c (4k and 32k copied, 128k split, 1M split)"
# region_sum DEV -> checksum of the first 48 MiB, read with O_DIRECT
region_sum() { dd if="$1" bs=1M count=48 iflag=direct status=none | md5sum | cut -d' ' -f1; }
zc_sum=$(region_sum "$zc")
ml_detach zc "$zc"

# The same partition in copy mode: the data written through zero copy reads back the same.
ml_attach cp h1 vol --queues 2 --lanes-per-queue 2 --split 128K --copy
cp=$ML_DEV
assert_eq "$(mode_of "$ML_ID")" copy "list: mode of $cp attached with --copy"
assert_eq "$(region_sum "$cp")" "$zc_sum" "48 MiB read in copy mode vs the same read in zero-copy mode"
ml_detach cp "$cp"

# Live resize: the partition grows on the server, the server pushes the new list, the
# daemon grows the device with UPDATE_SIZE, and ext4 on it grows online (mounted).
ml_attach rs h1 vol --queues 2 --lanes-per-queue 1
rs=$ML_DEV
mkfs.ext4 -q -F "$rs"
mkdir -p /mnt/rs
mount "$rs" /mnt/rs
on_cleanup "umount /mnt/rs 2>/dev/null || true"
before=$(blockdev --getsize64 "$rs")
fs_before=$(df -k /mnt/rs | awk 'NR == 2 { print $2 }')
ml_ctl partition grow vol 96M >/dev/null
wait_for "[ \$(blockdev --getsize64 $rs) -gt $before ]" 30 "$rs to grow after the partition grew"
grep -q 'UPDATE_SIZE' "$LAB_WORK/rs.log" || fail "the daemon did not log its UPDATE_SIZE"
resize2fs "$rs" >"$LAB_WORK/resize2fs.log" 2>&1 || fail "online resize2fs failed: $(tail -n 3 "$LAB_WORK/resize2fs.log")"
fs_after=$(df -k /mnt/rs | awk 'NR == 2 { print $2 }')
[ "$fs_after" -gt $((fs_before + 24 * 1024)) ] || fail "ext4 did not grow online: $fs_before -> $fs_after KiB"
dd if=/dev/urandom of=/mnt/rs/fill bs=1M count=70 status=none
sync
want=$(md5sum </mnt/rs/fill)
echo 3 >/proc/sys/vm/drop_caches
assert_eq "$(md5sum </mnt/rs/fill)" "$want" "a 70 MiB file (past the old 64 MiB end) read back"
umount /mnt/rs
log "live resize: $before -> $(blockdev --getsize64 "$rs") bytes, ext4 $fs_before -> $fs_after KiB online"
ml_detach rs "$rs"
