# shellcheck shell=bash
# lab-desc: the boot epoch rule on a real kernel: members on a volatile write cache (nbdkit cache filter, writeback); O_DIRECT writes with no flush, then server kill -9 + nbdkit kill -9 (cache lost) + restart: the next FLUSH on /dev/ublkb0 fails with EIO exactly once, the host's log says why, the unflushed write is really gone; control: write + completed FLUSH, the same crash: the next FLUSH succeeds, nothing acknowledged is lost
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# Why a volatile cache and not a second guest: the host (ublk device) and the server share
# this guest, so a guest power cut would kill both. A server crash that loses unflushed
# writes is what the rule is about: the members are nbd devices served by nbdkit's cache
# filter in writeback mode (writes stay in guest RAM until a flush), and "the power loss" is
# kill -9 of the server and of every nbdkit, then both start again on the same virtio disks:
# a new server process (new boot epoch) over disks that hold only what was flushed.
PE_BLOCK=65536
PE_FLUSHED=0                   # block offset (in PE_BLOCK units) written and flushed first
PE_UNFLUSHED=$((4 * PE_BLOCK)) # written, acknowledged, never flushed before the crash
PE_CONTROL=$((8 * PE_BLOCK))   # control case: written, then flushed, then the crash
RULE_LINE='acknowledged writes not yet flushed: the next FLUSH fails with EIO'
FAILED_LINE='failing a FLUSH with EIO: the server restarted (new boot epoch)'
CLEAN_LINE='the server restarted (new boot epoch); nothing was left unflushed'

ml_wcache_members
ml_assert_virtio_members() {
	assert_eq "$(ml_ctl --json array | jq -r '.disks | sort_by(.index)[] | "\(.path) \(.block_device)"' | tr '\n' ' ')" \
		"/dev/nbd0 true /dev/nbd1 true /dev/nbd2 true " "array members (path block_device)"
}
ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7500 7580
ml_attach host h1 vol --queues 1 --id 0
dev=$ML_DEV
hostlog=$LAB_WORK/host.log
assert_eq "$(cat /sys/block/ublkb0/queue/write_cache)" "write back" "write cache of $dev"

token=$(tr -d - </proc/sys/kernel/random/uuid)
pattern() { # TEXT: one block of TEXT repeated
	local s=$1
	while ((${#s} < PE_BLOCK)); do s=$s$s; done
	printf '%s' "${s:0:PE_BLOCK}"
}
put() { # OFFSET TEXT: one O_DIRECT write, no FUA, no flush
	pattern "$2" >"$LAB_WORK/w"
	dd if="$LAB_WORK/w" of="$dev" bs="$PE_BLOCK" seek="$1" count=1 oflag=direct,seek_bytes conv=notrunc status=none
}
holds() { # OFFSET TEXT: the block reads back (O_DIRECT) as TEXT's pattern
	pattern "$2" >"$LAB_WORK/want"
	dd if="$dev" of="$LAB_WORK/got" bs="$PE_BLOCK" skip="$1" count=1 iflag=direct,skip_bytes status=none
	cmp -s "$LAB_WORK/want" "$LAB_WORK/got"
}
flush() { # one FLUSH request (fsync of the block device, nothing dirty); its exit status
	dd if=/dev/null of="$dev" conv=fsync,notrunc status=none 2>>"$LAB_WORK/flush.err"
}
count() { grep -c "$1" "$hostlog" || true; }
crash() { # kill -9 the server and every nbdkit (their caches are lost), start both again
	local reconnects
	reconnects=$(count 'reconnected on path')
	bg_stop server KILL || true
	ml_wcache_crash
	log "server and nbdkit killed with -9, nbdkit restarted on the same disks"
	ml_serve 7500 7580
	wait_for "[ \"\$(count 'reconnected on path')\" -gt $reconnects ]" 60 "the host's lane to reconnect to the new server"
}

# The rule: acknowledged writes, no flush, crash.
put "$PE_FLUSHED" "$token-flushed."
flush || fail "the first FLUSH failed: $(cat "$LAB_WORK/flush.err")"
put "$PE_UNFLUSHED" "$token-unflushed."
holds "$PE_UNFLUSHED" "$token-unflushed." || fail "the unflushed write does not read back before the crash"
crash
wait_for "grep -qF '$RULE_LINE' $hostlog" 30 "the host to log the boot epoch change with unflushed writes"
flushes_before=$(ml_flushes h1 vol)
first=0 second=0
flush || first=$?
flush || second=$?
flushes_after=$(ml_flushes h1 vol)
log "after the crash: first FLUSH exit $first, second $second; the server ran $((flushes_after - flushes_before)) FLUSH requests; $(cat "$LAB_WORK/flush.err")"
[ "$first" != 0 ] || fail "the first FLUSH after a restart with unflushed writes succeeded"
grep -q 'Input/output error' "$LAB_WORK/flush.err" || fail "the failed FLUSH was not EIO: $(cat "$LAB_WORK/flush.err")"
assert_eq "$second" 0 "exit status of the second FLUSH (the rule fails exactly one)"
assert_eq "$((flushes_after - flushes_before))" 2 "FLUSH requests the new server ran (both reached it)"
assert_eq "$(count "$FAILED_LINE")" 1 "host log lines: a FLUSH failed because of the boot epoch"
holds "$PE_FLUSHED" "$token-flushed." || fail "the write flushed before the crash is lost"
unflushed_lost=1
! holds "$PE_UNFLUSHED" "$token-unflushed." || unflushed_lost=0
assert_eq "$unflushed_lost" 1 "the unflushed write lost with nbdkit's cache (else the crash lost nothing)"

# The control: acknowledged writes covered by a completed FLUSH, the same crash.
put "$PE_CONTROL" "$token-control."
flush || fail "the control case's FLUSH failed: $(cat "$LAB_WORK/flush.err")"
clean_before=$(count "$CLEAN_LINE")
crash
wait_for "[ \"\$(count '$CLEAN_LINE')\" -gt $clean_before ]" 30 "the host to log a restart with nothing unflushed"
flushes_before=$(ml_flushes h1 vol)
flush || fail "the first FLUSH after a restart with nothing unflushed failed: $(cat "$LAB_WORK/flush.err")"
assert_eq "$(($(ml_flushes h1 vol) - flushes_before))" 1 "FLUSH requests the new server ran (control)"
assert_eq "$(count "$FAILED_LINE")" 1 "host log lines: a FLUSH failed because of the boot epoch (none more in the control)"
assert_eq "$(count "$RULE_LINE")" 1 "host log lines: restart with unflushed writes (none more in the control)"
holds "$PE_CONTROL" "$token-control." || fail "the control write, flushed before the crash, is lost"
holds "$PE_FLUSHED" "$token-flushed." || fail "the first flushed write is lost after the second crash"

metric epoch_flush_eio 1 flushes
metric epoch_second_flush_ok 1 flushes
metric unflushed_write_lost "$unflushed_lost"
metric control_flush_ok 1 flushes
ml_detach host "$dev"
