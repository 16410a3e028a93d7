# shellcheck shell=bash
# lab-desc: server frozen (SIGSTOP) for 12 s under fio --verify, longer than the host's dead-lane bound (5 s): the host detects it by heartbeat, reconnects once the server continues (the server fences the old lanes), fio verifies with 0 errors
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# How long the server stays frozen (the fault itself, not a synchronisation).
FREEZE_SECS=12
DETECT_LIMIT_MS=8000

ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7131 7194
ml_attach host h1 vol --queues 2
dev=$ML_DEV

json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=4 \
	--name=freeze --rw=randwrite --bs=4k --size=8M --rate_iops=150 \
	--verify=crc32c --do_verify=1 --verify_fatal=1
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -ge 262144 ]" 60 "fio writing through the server"

server_pid=$(bg_pid server)
kill -STOP "$server_pid"
stop_ms=$(now_ms)
log "server $server_pid stopped"
wait_for "grep -q 'nothing from the server' $LAB_WORK/host.log" 30 "the host to declare a lane dead"
detect_ms=$(($(now_ms) - stop_ms))
log "dead lane detected ${detect_ms} ms after SIGSTOP"
[ "$detect_ms" -le "$DETECT_LIMIT_MS" ] || fail "detection took ${detect_ms} ms (limit ${DETECT_LIMIT_MS})"
sleep $((FREEZE_SECS - detect_ms / 1000))

reconnects_before=$(grep -c 'reconnected on path' "$LAB_WORK/host.log" || true)
kill -CONT "$server_pid"
cont_ms=$(now_ms)
log "server continued"
wait_for "[ \"\$(grep -c 'reconnected on path' $LAB_WORK/host.log)\" -gt $reconnects_before ]" 30 "the host to reconnect"
recover_ms=$(($(now_ms) - cont_ms))
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -gt 0 ]" 30 "writes flowing again on the new lanes"
log "reconnected ${recover_ms} ms after SIGCONT; writes flowing again"

wait_for "! bg_alive fio" 240 "fio to finish"
bg_stop fio || fail "fio failed: $(tail -n 5 "$LAB_WORK/fio.log")"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '.jobs[0].read.io_bytes' "$json.clean")" $((8 << 20)) "bytes fio read back and verified"
[ "$(grep -c 'failing' "$LAB_WORK/host.log" || true)" = 0 ] || fail "the host failed I/O: $(grep failing "$LAB_WORK/host.log" | head -n 2)"
metric detect_ms "$detect_ms" ms
metric recover_ms "$recover_ms" ms
log "server frozen ${FREEZE_SECS} s: detected in ${detect_ms} ms, recovered ${recover_ms} ms after SIGCONT, 0 errors"

ml_detach host "$dev"
