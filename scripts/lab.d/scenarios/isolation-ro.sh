# shellcheck shell=bash
# lab-desc: two partitions attached at once (two devices) each hold only their own data; a read-only assignment gives a device with blockdev --getro = 1 whose writes fail
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition p1 4M
ml_partition p2 4M
ml_partition p3 4M
ml_host h1
ml_assign h1 p1
ml_assign h1 p2
ml_assign h1 p3 --read-only
ml_serve 7150 7194

ml_attach host1 h1 p1 --queues 2 --lanes-per-queue 1
dev1=$ML_DEV
ml_attach host2 h1 p2 --queues 2 --lanes-per-queue 1
dev2=$ML_DEV
[ "$dev1" != "$dev2" ] || fail "both partitions got $dev1"
ml_wait_lanes h1 p1 2
ml_wait_lanes h1 p2 2
size1=$(blockdev --getsize64 "$dev1")
size2=$(blockdev --getsize64 "$dev2")
{ [ "$size1" -ge $((4 << 20)) ] && [ "$size2" -ge $((4 << 20)) ]; } || fail "device sizes $size1 / $size2 < 4 MiB"
assert_eq "$(blockdev --getro "$dev1") $(blockdev --getro "$dev2")" "0 0" "read-write devices: getro"

# fill each device completely with its own pattern, one after the other, then read both whole
head -c "$size1" /dev/urandom >"$LAB_WORK/a"
head -c "$size2" /dev/urandom >"$LAB_WORK/b"
dd if="$LAB_WORK/a" of="$dev1" bs=1M oflag=direct status=none
dd if="$LAB_WORK/b" of="$dev2" bs=1M oflag=direct status=none
cmp "$LAB_WORK/a" <(dd if="$dev1" bs=1M iflag=direct status=none) || fail "$dev1 (p1) does not hold p1's data"
cmp "$LAB_WORK/b" <(dd if="$dev2" bs=1M iflag=direct status=none) || fail "$dev2 (p2) does not hold p2's data"
# and the other way round: rewrite p1, p2 must be untouched
head -c "$size1" /dev/urandom >"$LAB_WORK/a2"
dd if="$LAB_WORK/a2" of="$dev1" bs=1M oflag=direct status=none
cmp "$LAB_WORK/b" <(dd if="$dev2" bs=1M iflag=direct status=none) || fail "writing p1 changed p2"
cmp "$LAB_WORK/a2" <(dd if="$dev1" bs=1M iflag=direct status=none) || fail "$dev1 lost p1's rewrite"
log "p1 ($dev1) and p2 ($dev2), attached at once, each hold only their own data"

# the read-only assignment, attached as a third device at the same time
ml_attach host3 h1 p3 --queues 2 --lanes-per-queue 1
dev3=$ML_DEV
ml_wait_lanes h1 p3 2
assert_eq "$(blockdev --getro "$dev3")" 1 "blockdev --getro of the read-only assignment's $dev3"
dd if="$dev3" of=/dev/null bs=64K count=16 iflag=direct status=none || fail "reading the read-only $dev3 failed"
if dd if=/dev/zero of="$dev3" bs=4K count=1 oflag=direct status=none 2>"$LAB_WORK/ro-write.err"; then
	fail "a direct write to the read-only $dev3 succeeded"
fi
log "direct write to $dev3 refused: $(cat "$LAB_WORK/ro-write.err")"
if dd if=/dev/zero of="$dev3" bs=4K count=1 status=none conv=fsync 2>"$LAB_WORK/ro-write2.err"; then
	fail "a buffered write + fsync to the read-only $dev3 succeeded"
fi
assert_eq "$(ml_sessions_of h1 p3 | jq -s 'map(.bytes_written) | add')" 0 "bytes the server wrote to p3"
# the device still works after the refused writes, and the others are unaffected
dd if="$dev3" of=/dev/null bs=64K count=16 iflag=direct status=none
cmp "$LAB_WORK/b" <(dd if="$dev2" bs=1M iflag=direct status=none) || fail "p2 changed"
log "p3 ($dev3): read-only assignment -> getro 1, writes fail, reads work"

ml_detach host3 "$dev3"
ml_detach host2 "$dev2"
ml_detach host1 "$dev1"
