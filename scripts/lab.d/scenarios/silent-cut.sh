# shellcheck shell=bash
# lab-desc: silent cut: the server behind a veth pair in its own netns, every packet dropped (netem loss 100%, no RST) for 30 s after the detection under fio --verify, then healed: the host detects the dead lanes within seconds (heartbeat), the server drops its half-open lanes within its bound, the host reconnects after the heal, fio verifies with 0 errors
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# The fault lasts this long (the fault itself, not a synchronisation).
CUT_SECS=30
# The host's default dead-lane bound is 5 s; detection must come within this.
DETECT_LIMIT_MS=8000

ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve_netns 7130 7193
ml_attach host h1 vol --queues 2
dev=$ML_DEV

# Rate-limited random writes, verified at the end: long enough to span the cut.
json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=4 \
	--name=cut --rw=randwrite --bs=4k --size=8M --rate_iops=100 \
	--verify=crc32c --do_verify=1 --verify_fatal=1
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -ge 262144 ]" 60 "fio writing through the server"

ml_cut
cut_ms=$(now_ms)
log "path cut (netem loss 100% both ways)"
wait_for "grep -q 'nothing from the server' $LAB_WORK/host.log" 30 "the host to declare a lane dead"
detect_ms=$(($(now_ms) - cut_ms))
log "dead lane detected ${detect_ms} ms after the cut"
[ "$detect_ms" -le "$DETECT_LIMIT_MS" ] || fail "detection took ${detect_ms} ms (limit ${DETECT_LIMIT_MS})"
grep -q 'failing' "$LAB_WORK/host.log" && fail "the host failed I/O during the cut: $(grep failing "$LAB_WORK/host.log" | head -n 2)"
# The server drops the silent lanes too (keepalive, TCP_USER_TIMEOUT: about 20 s). Its admin
# API is asked from inside its namespace, where the cut does not apply.
server_lanes() {
	ip netns exec "$ML_NETNS" array-server ctl --admin "http://$ML_ADMIN" --token-file "$ML_TOKEN" \
		sessions --host h1 --partition vol --count
}
wait_for "[ \"\$(server_lanes)\" = 0 ]" "$CUT_SECS" "the server to drop the silent lanes"
server_drop_ms=$(($(now_ms) - cut_ms))
log "the server dropped the silent lanes ${server_drop_ms} ms after the cut"
# The rest of the outage (the fault itself, not a synchronisation).
rest_ms=$((CUT_SECS * 1000 - ($(now_ms) - cut_ms - detect_ms)))
[ "$rest_ms" -le 0 ] || sleep "$((rest_ms / 1000)).$(printf '%03d' $((rest_ms % 1000)))"

reconnects_before=$(grep -c 'reconnected on path' "$LAB_WORK/host.log" || true)
ml_heal
heal_ms=$(now_ms)
log "path healed"
wait_for "[ \"\$(grep -c 'reconnected on path' $LAB_WORK/host.log)\" -gt $reconnects_before ]" 30 "the host to reconnect"
recover_ms=$(($(now_ms) - heal_ms))
stall_ms=$(($(now_ms) - cut_ms))
log "reconnected ${recover_ms} ms after the heal (stall ${stall_ms} ms)"
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -gt 0 ]" 30 "writes flowing again on the new lanes"
# Each lane reconnects on its own backoff: wait (bounded) for the second before counting.
wait_for "[ \"\$(ml_lane_count h1 vol)\" = 2 ]" 30 "both lanes back on the server"
assert_eq "$(ml_lane_count h1 vol)" 2 "data lanes the server holds for h1 after the heal (the new ones only)"

wait_for "! bg_alive fio" 240 "fio to finish"
bg_stop fio || fail "fio failed: $(tail -n 5 "$LAB_WORK/fio.log")"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '.jobs[0].write.io_bytes' "$json.clean")" $((8 << 20)) "bytes fio wrote"
assert_eq "$(jq '.jobs[0].read.io_bytes' "$json.clean")" $((8 << 20)) "bytes fio read back and verified"
[ "$(grep -c 'failing' "$LAB_WORK/host.log" || true)" = 0 ] || fail "the host failed I/O: $(grep failing "$LAB_WORK/host.log" | head -n 2)"
metric detect_ms "$detect_ms" ms
metric recover_ms "$recover_ms" ms
metric stall_ms "$stall_ms" ms
metric server_drop_ms "$server_drop_ms" ms
log "silent cut of ${CUT_SECS} s: detected in ${detect_ms} ms, recovered ${recover_ms} ms after the heal, fio verified 8 MiB with 0 errors"

ml_detach host "$dev"
