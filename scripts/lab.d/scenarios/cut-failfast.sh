# shellcheck shell=bash
# lab-desc: silent cut past the device's fail-fast policy (--fail-fast 10): a write fails with EIO within dead bound + 10 s (no hang), new I/O fails at once while the path is down, and the device works again once the path heals
# shellcheck source=../multilane.sh
. /lab/multilane.sh

FAIL_FAST=10
# Dead-lane detection (5 s) + the fail-fast bound + ticks and slack.
EIO_LIMIT_MS=$(((5 + FAIL_FAST + 5) * 1000))

ml_format
ml_partition vol 16M
ml_host h1
ml_assign h1 vol
ml_serve_netns 7132 7195
ml_attach host h1 vol --queues 1 --fail-fast "$FAIL_FAST"
dev=$ML_DEV

dd if=/dev/zero of="$dev" bs=4k count=16 oflag=direct status=none
ml_cut
on_cleanup "tc qdisc del dev $ML_VETH_HOST root 2>/dev/null || true"
cut_ms=$(now_ms)
bg_start writer dd if=/dev/zero of="$dev" bs=4k count=1 seek=100 oflag=direct
wait_for "! bg_alive writer" 60 "the write during the cut to end"
eio_ms=$(($(now_ms) - cut_ms))
if bg_stop writer; then fail "a write during the cut succeeded"; fi
grep -q 'Input/output error' "$LAB_WORK/writer.log" || fail "expected EIO: $(cat "$LAB_WORK/writer.log")"
log "write failed with EIO ${eio_ms} ms after the cut"
[ "$eio_ms" -le "$EIO_LIMIT_MS" ] || fail "EIO after ${eio_ms} ms (limit ${EIO_LIMIT_MS})"

start=$(now_ms)
if dd if=/dev/zero of="$dev" bs=4k count=1 seek=101 oflag=direct status=none 2>"$LAB_WORK/again.err"; then
	fail "a write while the path is still down succeeded"
fi
fast_ms=$(($(now_ms) - start))
grep -q 'Input/output error' "$LAB_WORK/again.err" || fail "expected EIO: $(cat "$LAB_WORK/again.err")"
[ "$fast_ms" -le 2000 ] || fail "new I/O took ${fast_ms} ms to fail while down"

ml_heal
heal_ms=$(now_ms)
wait_for "dd if=/dev/zero of=$dev bs=4k count=1 seek=102 oflag=direct status=none" 60 "writes to work again after the heal"
back_ms=$(($(now_ms) - heal_ms))
dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none
metric eio_ms "$eio_ms" ms
metric fail_fast_new_io_ms "$fast_ms" ms
metric back_after_heal_ms "$back_ms" ms
log "fail-fast ${FAIL_FAST} s: EIO after ${eio_ms} ms, new I/O failed in ${fast_ms} ms, back ${back_ms} ms after the heal"

ml_detach host "$dev"
