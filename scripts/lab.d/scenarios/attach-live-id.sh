# shellcheck shell=bash
# lab-desc: a second attach asking for the id of a live device (another partition, then the same one) fails at once with a clear message and creates nothing; the first device keeps serving (dd write + read back, still live in list)
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 16M
ml_partition other 16M
ml_host h1
ml_assign h1 vol
ml_assign h1 other
ml_serve 7140 7193
ml_attach first h1 vol --queues 2 --id 0
assert_eq "$ML_DEV" /dev/ublkb0 "device of --id 0"
dev=$ML_DEV

dd if=/dev/urandom of="$LAB_WORK/before" bs=64K count=16 status=none
dd if="$LAB_WORK/before" of="$dev" bs=64K count=16 oflag=direct status=none

# A second daemon asking for the live id: refused with a clear message, quickly.
second_attach() { # PARTITION LOG
	local rc=0
	timeout 60 ublk-host attach --server "$ML_ADDR" --host h1 --secret-file "$LAB_WORK/h1.key" \
		--partition "$1" --queues 2 --id 0 >"$2" 2>&1 || rc=$?
	cat "$2"
	[ "$rc" != 124 ] || fail "the second attach ($1) hung"
	[ "$rc" != 0 ] || fail "the second attach ($1) with the live id succeeded"
	grep -q '/dev/ublkb0 is in use (live' "$2" || fail "the second attach ($1) did not say the id is in use: $(tail -n 2 "$2")"
}
second_attach other "$LAB_WORK/second-other.log"
second_attach vol "$LAB_WORK/second-same.log"

# A second device of the same partition (no --id): refused, because its lanes would share
# the first device's identity on the server and the two would fence each other's lanes.
rc=0
timeout 60 ublk-host attach --server "$ML_ADDR" --host h1 --secret-file "$LAB_WORK/h1.key" \
	--partition vol --queues 2 >"$LAB_WORK/second-device.log" 2>&1 || rc=$?
cat "$LAB_WORK/second-device.log"
[ "$rc" != 124 ] || fail "the second device of vol hung"
[ "$rc" != 0 ] || fail "a second device of vol was attached"
grep -q 'already attached on this host as /dev/ublkb0' "$LAB_WORK/second-device.log" ||
	fail "the second device of vol was not refused as attached: $(tail -n 2 "$LAB_WORK/second-device.log")"

# The first device is untouched and still serves.
[ -b "$dev" ] || fail "$dev is gone after the refused attaches"
bg_alive first || fail "the first daemon exited: $(tail -n 3 "$LAB_WORK/first.log")"
# shellcheck disable=SC2012 # sysfs names
assert_eq "$(ls /sys/class/ublk-char | tr '\n' ' ')" "ublkc0 " "ublk devices after the refused attaches"
ublk-host list | tee "$LAB_WORK/list"
grep -q "^/dev/ublkb0[[:space:]]state=live[[:space:]]pid=$(bg_pid first)[[:space:]].*partition=vol" "$LAB_WORK/list" ||
	fail "list does not show /dev/ublkb0 live, served by the first daemon, partition vol"
dd if="$dev" of="$LAB_WORK/after" bs=64K count=16 iflag=direct status=none
cmp "$LAB_WORK/before" "$LAB_WORK/after" || fail "data written before the refused attaches changed"
dd if=/dev/urandom of="$LAB_WORK/more" bs=4K count=64 status=none
dd if="$LAB_WORK/more" of="$dev" bs=4K seek=1024 oflag=direct status=none
dd if="$dev" of="$LAB_WORK/more.back" bs=4K skip=1024 count=64 iflag=direct status=none
cmp "$LAB_WORK/more" "$LAB_WORK/more.back" || fail "write + read back after the refused attaches differs"
log "two refused attaches of the live id 0 and one of a second device of vol; /dev/ublkb0 still live, data intact, writes work"
ml_detach first "$dev"
