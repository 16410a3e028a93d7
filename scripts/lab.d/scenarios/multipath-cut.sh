# shellcheck shell=bash
# lab-desc: native multipath: the server in its own netns behind two veth pairs (two subnets), listening on both; ublk-host attached over both paths; fio --verify at QD32 while path 0 is cut silently (netem loss 100%) for 20 s, then healed: 0 errors, the server's per-path counters show the traffic leaving path 0 within the detection bound (takeover over path 1) and coming back after the heal
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# The fault lasts this long (the fault itself, not a synchronisation).
CUT_SECS=20
# The dead-lane bound is 5 s; a busy lane's takeover over path 1 must come within this
# (detection, one reconnect attempt home whose SYN goes nowhere, the server's fence).
FAILOVER_LIMIT_MS=10000
QUEUES=2

ml_format
ml_partition vol 64M
ml_host h1
ml_assign h1 vol
ml_serve_paths 7140 7194
ml_attach host h1 vol --queues "$QUEUES" --server "${ML_ADDRS[1]}"
dev=$ML_DEV
assert_eq "$(ml_lane_count h1 vol)" $((QUEUES * 2)) "data lanes (one per queue on each path)"
assert_eq "$(ml_path_lanes h1 vol 0)" "$QUEUES" "lanes on path 0"
assert_eq "$(ml_path_lanes h1 vol 1)" "$QUEUES" "lanes on path 1"

json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=32 \
	--name=cut --rw=randwrite --bs=4k --size=24M --rate_iops=200 \
	--verify=crc32c --do_verify=1 --verify_fatal=1
wait_for "[ \"\$(ml_path_bytes h1 vol 0)\" -ge 262144 ] && [ \"\$(ml_path_bytes h1 vol 1)\" -ge 262144 ]" 60 \
	"fio writing over both paths"

cut_ms=$(now_ms)
ml_cut_path 0
log "path 0 cut (netem loss 100% both ways)"
wait_for "grep -q 'running over path 1' $LAB_WORK/host.log" 30 "a lane of path 0 to take over on path 1"
failover_ms=$(($(now_ms) - cut_ms))
log "first lane of path 0 running over path 1 ${failover_ms} ms after the cut"
[ "$failover_ms" -le "$FAILOVER_LIMIT_MS" ] || fail "failover took ${failover_ms} ms (limit ${FAILOVER_LIMIT_MS})"
# Traffic moved: once every lane of path 0 runs over path 1 (an idle one is found dead by
# keepalive), path 1 carries the writes and path 0 nothing more. (The server lists a fenced
# path-0 session until its socket times out, but its counters stop.)
wait_for "[ \"\$(grep -c 'running over path 1' $LAB_WORK/host.log)\" -ge $QUEUES ]" $((CUT_SECS - 2)) \
	"every lane of path 0 to run over path 1"
moved_ms=$(($(now_ms) - cut_ms))
p0=$(ml_path_bytes h1 vol 0)
p1=$(ml_path_bytes h1 vol 1)
wait_for "[ \"\$(ml_path_bytes h1 vol 1)\" -ge $((p1 + 262144)) ]" 30 "path 1 to carry the writes"
p0_after=$(ml_path_bytes h1 vol 0)
[ "$p0_after" -le "$p0" ] || fail "path 0 carried $((p0_after - p0)) bytes while cut"
rest_ms=$((CUT_SECS * 1000 - ($(now_ms) - cut_ms)))
[ "$rest_ms" -le 0 ] || sleep "$((rest_ms / 1000)).$(printf '%03d' $((rest_ms % 1000)))"

ml_heal_path 0
heal_ms=$(now_ms)
log "path 0 healed"
wait_for "[ \"\$(grep -c 'reconnected on path 0' $LAB_WORK/host.log)\" -ge $QUEUES ]" 30 \
	"the lanes of path 0 to come home"
home_ms=$(($(now_ms) - heal_ms))
wait_for "[ \"\$(ml_path_lanes h1 vol 0)\" = $QUEUES ]" 30 "the server to list the lanes back on path 0"
p0=$(ml_path_bytes h1 vol 0)
if bg_alive fio; then
	wait_for "[ \"\$(ml_path_bytes h1 vol 0)\" -gt $p0 ] || ! bg_alive fio" 30 "path 0 to carry traffic again"
fi
log "lanes back on path 0 ${home_ms} ms after the heal"

wait_for "! bg_alive fio" 300 "fio to finish"
bg_stop fio || fail "fio failed: $(tail -n 5 "$LAB_WORK/fio.log")"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '.jobs[0].write.io_bytes' "$json.clean")" $((24 << 20)) "bytes fio wrote"
assert_eq "$(jq '.jobs[0].read.io_bytes' "$json.clean")" $((24 << 20)) "bytes fio read back and verified"
[ "$(grep -c 'failing' "$LAB_WORK/host.log" || true)" = 0 ] || fail "the host failed I/O: $(grep failing "$LAB_WORK/host.log" | head -n 2)"
metric failover_ms "$failover_ms" ms
metric all_lanes_moved_ms "$moved_ms" ms
metric home_ms "$home_ms" ms
log "path 0 cut for ${CUT_SECS} s under fio QD32: first takeover in ${failover_ms} ms, all lanes on path 1 in ${moved_ms} ms, home ${home_ms} ms after the heal, 24 MiB verified with 0 errors"

ml_detach host "$dev"
