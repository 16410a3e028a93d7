# shellcheck shell=bash
# lab-desc: fio randwrite --verify=crc32c on /dev/ublkb0 while the ublk-host daemon is killed with -9; list shows it quiesced; `ublk-host recover 0` takes it over: fio ends with 0 errors and verifies every block; stall measured; after a second kill -9, detach removes the quiesced device at once
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 48M
ml_host h1
ml_assign h1 vol
ml_serve 7150 7194
ml_attach host1 h1 vol --queues 2 --lanes-per-queue 2 --split 128K --id 0
dev=$ML_DEV
assert_eq "$(stat -c %a /run/multilane/ublkb0.json)" 600 "mode of the device state file"

written() { ml_sessions_of h1 vol | jq -s 'map(.bytes_written) | add // 0'; }

# 2 jobs x 12 MiB of 4k random writes, then each verifies all it wrote (crc32c).
json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=16 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 \
	--name=w --rw=randwrite --bs=4k --size=12M --offset=0 --offset_increment=16M --numjobs=2
wait_for "[ \$(written) -ge $((4 << 20)) ]" 60 "fio to write 4 MiB"
bg_alive fio || fail "fio finished before the crash: make it longer"
before=$(written)
t_kill=$(now_ms)
kill -KILL "$(bg_pid host1)"
wait_for "! bg_alive host1" 10 "the killed daemon to go"
log "killed the daemon after $before bytes written"
ml_wait_lanes h1 vol 0
wait_for "ublk-host list | grep -q '^/dev/ublkb0[[:space:]]state=quiesced'" 30 "list to show /dev/ublkb0 quiesced"
t_quiesced=$(now_ms)
ublk-host list
bg_alive fio || fail "fio ended while the device had no daemon: $(cat "$json")"

bg_start host2 ublk-host recover 0
wait_for "grep -q ' ready ' $LAB_WORK/host2.log || ! bg_alive host2" 60 "ublk-host recover to report ready"
grep -Eq '/dev/ublkb0( as [^ ]+)? ready \(recovered\)' "$LAB_WORK/host2.log" || fail "recover did not report ready: $(tail -n 3 "$LAB_WORK/host2.log")"
t_ready=$(now_ms)
ublk-host list | grep -q "^/dev/ublkb0[[:space:]]state=live[[:space:]]pid=$(bg_pid host2)[[:space:]]" ||
	fail "list does not show /dev/ublkb0 live under the new daemon: $(ublk-host list)"
wait_for "[ \$(written) -gt 0 ]" 30 "writes through the new daemon's lanes"
on_cleanup "[ ! -e /sys/class/ublk-char/ublkc0 ] || ublk-host detach 0"

wait_for "! bg_alive fio" 240 "fio to finish"
bg_stop fio || fail "fio failed after the recovery (see its log)"
sed -n '/^{/,$p' "$json" >"$json.clean"
jq -cM '.jobs[] | {job: .jobname, error, written: .write.io_bytes, verified: .read.io_bytes, max_lat_ms: (.write.clat_ns.max / 1e6)}' "$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq -r '[.jobs[] | "\(.write.io_bytes) \(.read.io_bytes)"] | join(", ")' "$json.clean")" \
	"12582912 12582912, 12582912 12582912" "per job: bytes written and bytes verified"
metric daemon_kill_to_quiesced_ms $((t_quiesced - t_kill)) ms
metric daemon_kill_to_recovered_ms $((t_ready - t_kill)) ms
# The stall fio saw: its slowest write completion (the writes the dead daemon held).
stall=$(jq '[.jobs[].write.clat_ns.max] | max / 1e6 | floor' "$json.clean")
metric daemon_recover_stall_ms "$stall" ms
log "fio wrote 24 MiB across a kill -9 of the daemon and verified every block; longest write stalled $stall ms"

# The new daemon dies too: detach removes the orphaned device at once (it used to wait 10 s).
kill -KILL "$(bg_pid host2)"
wait_for "! bg_alive host2" 10 "the second killed daemon to go"
wait_for "ublk-host list | grep -q '^/dev/ublkb0[[:space:]]state=quiesced'" 30 "list to show /dev/ublkb0 quiesced again"
t0=$(now_ms)
ublk-host detach 0
t_detach=$(($(now_ms) - t0))
metric detach_quiesced_ms "$t_detach" ms
[ "$t_detach" -lt 3000 ] || fail "detach of a quiesced device took $t_detach ms"
[ ! -e /sys/class/ublk-char/ublkc0 ] || fail "detach did not remove the quiesced device"
[ ! -e /run/multilane/ublkb0.json ] || fail "the state file outlived the device"
log "detach removed the quiesced /dev/ublkb0 in $t_detach ms"
