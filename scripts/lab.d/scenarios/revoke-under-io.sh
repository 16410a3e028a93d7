# shellcheck shell=bash
# lab-desc: revoke under I/O: direct reads in a loop, `ctl unassign`: the reads fail within 1 s (the engine fails them with EACCES, which the block layer reports to applications as EIO), new I/O fails at once, and `ctl assign` brings the device back
# shellcheck source=../multilane.sh
. /lab/multilane.sh

REVOKE_LIMIT_MS=1000

ml_format
ml_partition vol 16M
ml_host h1
ml_assign h1 vol
ml_serve 7133 7196
ml_attach host h1 vol --queues 2
dev=$ML_DEV

cat >"$LAB_WORK/reader.sh" <<READER
while dd if=$dev of=/dev/null bs=4k count=1 iflag=direct skip=\$((RANDOM % 4000)) status=none 2>$LAB_WORK/reader.err; do :; done
READER
bg_start reader bash "$LAB_WORK/reader.sh"
wait_for "[ \"\$(ml_sessions_of h1 vol | jq -s 'map(.reads) | add // 0')\" -ge 20 ]" 60 "reads flowing"

ml_ctl unassign h1 vol >/dev/null
revoke_ms=$(now_ms)
wait_for "! bg_alive reader" 30 "the reads to fail after the revoke"
fail_ms=$(($(now_ms) - revoke_ms))
# The block layer has no status for EACCES: a ublk completion with -EACCES reaches
# applications as EIO. The host's log names the refusal.
grep -q 'Input/output error' "$LAB_WORK/reader.err" || fail "expected EIO: $(cat "$LAB_WORK/reader.err")"
grep -q 'refused, failing its I/O with errno 13' "$LAB_WORK/host.log" || fail "the host did not fail the I/O with EACCES"
log "reads failed (EACCES in the engine) ${fail_ms} ms after the revoke"
[ "$fail_ms" -le "$REVOKE_LIMIT_MS" ] || fail "errors after ${fail_ms} ms (limit ${REVOKE_LIMIT_MS})"

start=$(now_ms)
if dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>"$LAB_WORK/again.err"; then
	fail "a read while revoked succeeded"
fi
grep -q 'Input/output error' "$LAB_WORK/again.err" || fail "expected EIO: $(cat "$LAB_WORK/again.err")"
again_ms=$(($(now_ms) - start))
[ "$again_ms" -le 1000 ] || fail "new I/O took ${again_ms} ms to fail while revoked"

ml_ctl assign h1 vol >/dev/null
assign_ms=$(now_ms)
wait_for "dd if=$dev of=/dev/null bs=4k count=1 iflag=direct status=none" 60 "reads to work again after re-assignment"
back_ms=$(($(now_ms) - assign_ms))
metric revoke_to_eacces_ms "$fail_ms" ms
metric reassign_to_io_ms "$back_ms" ms
log "revoke: EACCES in ${fail_ms} ms; re-assigned: I/O back in ${back_ms} ms"

ml_detach host "$dev"
