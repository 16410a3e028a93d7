# shellcheck shell=bash
# lab-desc: fio randwrite --verify=crc32c on /dev/ublkb0 while a copy of the ublk-host binary runs `upgrade 0`: the old daemon hands the device over (QUIESCE where the driver offers it, 7.x; the recovery path on 6.12) and exits without removing it; the new daemon serves the same /dev/ublkb0 and /dev/multilane/vol; fio ends with 0 errors and verifies every block; I/O pause measured; the new daemon is upgraded again (a taken-over device hands over too) and fio --verify_only checks all 24 MiB through the third daemon
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 48M
ml_host h1
ml_assign h1 vol
ml_serve 7150 7194
ml_attach host1 h1 vol --queues 2 --lanes-per-queue 2 --split 128K --id 0
dev=$ML_DEV
old_pid=$(bg_pid host1)
node_before=$(stat -c %t:%T "$dev")
link_before=$(readlink /dev/multilane/vol) || fail "no stable name /dev/multilane/vol"
# What the driver offers, as the daemon logged it when it created the device.
expected=$(grep -o 'handover by [a-z]*' "$LAB_WORK/host1.log" | head -n1)
expected=${expected#handover by }
[ -n "$expected" ] || fail "the daemon did not log its handover way: $(head -n 5 "$LAB_WORK/host1.log")"
kernel_major=$(uname -r | cut -d. -f1)
if [ "$kernel_major" -ge 7 ]; then
	assert_eq "$expected" quiesce "handover way on kernel $(uname -r)"
fi
log "kernel $(uname -r): handover by $expected"

# The new binary: a copy, as a package upgrade would leave it.
new_bin=$LAB_WORK/ublk-host-new
cp "$(command -v ublk-host)" "$new_bin"

written() { ml_sessions_of h1 vol | jq -s 'map(.bytes_written) | add // 0'; }

# 2 jobs x 12 MiB of 4k random writes, then each verifies all it wrote (crc32c).
json=$LAB_WORK/fio.json
workload=(--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=16
	--verify=crc32c --do_verify=1 --verify_fatal=1
	--name=w --rw=randwrite --bs=4k --size=12M --offset=0 --offset_increment=16M --numjobs=2)
bg_start fio fio --eta=never --output-format=json --output="$json" "${workload[@]}"
wait_for "[ \$(written) -ge $((4 << 20)) ]" 60 "fio to write 4 MiB"
bg_alive fio || fail "fio finished before the upgrade: make it longer"

bg_start host2 "$new_bin" upgrade 0
wait_for "grep -q ' ready ' $LAB_WORK/host2.log || ! bg_alive host2" 90 "ublk-host upgrade to report ready"
grep -Eq '/dev/ublkb0( as [^ ]+)? ready \(recovered\)' "$LAB_WORK/host2.log" ||
	fail "upgrade did not report ready: $(tail -n 5 "$LAB_WORK/host2.log")"
on_cleanup "[ ! -e /sys/class/ublk-char/ublkc0 ] || ublk-host detach 0"
new_pid=$(bg_pid host2)
grep -q "took /dev/ublkb0 over from daemon $old_pid by $expected " "$LAB_WORK/host2.log" ||
	fail "upgrade does not say it took over from $old_pid by $expected: $(grep 'took' "$LAB_WORK/host2.log")"
pause=$(sed -n 's/^ublk-host: I\/O paused \([0-9]*\) ms for the upgrade$/\1/p' "$LAB_WORK/host2.log")
[ -n "$pause" ] || fail "upgrade did not report the I/O pause: $(tail -n 5 "$LAB_WORK/host2.log")"

wait_for "! bg_alive host1" 10 "the old daemon to be gone"
bg_stop host1 || fail "the old daemon exited nonzero: $(tail -n 5 "$LAB_WORK/host1.log")"
grep -q 'handed over' "$LAB_WORK/host1.log" ||
	fail "the old daemon does not say it handed over: $(tail -n 5 "$LAB_WORK/host1.log")"
if [ "$expected" = quiesce ]; then
	grep -q 'device handed over to the new daemon' "$LAB_WORK/host1.log" ||
		fail "the old daemon did not end its queues after QUIESCE: $(tail -n 5 "$LAB_WORK/host1.log")"
fi
assert_eq "$(stat -c %t:%T "$dev")" "$node_before" "device number of $dev"
assert_eq "$(readlink /dev/multilane/vol)" "$link_before" "/dev/multilane/vol"
ublk-host list
ublk-host list | grep -q "^/dev/ublkb0[[:space:]]state=live[[:space:]]pid=${new_pid}[[:space:]]" ||
	fail "list does not show /dev/ublkb0 live under the new daemon $new_pid: $(ublk-host list)"
assert_eq "$(jq -r .pid /run/multilane/ublkb0.json)" "$new_pid" "pid in the state file"
wait_for "[ \$(written) -gt 0 ]" 30 "writes through the new daemon's lanes"

wait_for "! bg_alive fio" 240 "fio to finish"
bg_stop fio || fail "fio failed across the upgrade (see its log)"
sed -n '/^{/,$p' "$json" >"$json.clean"
jq -cM '.jobs[] | {job: .jobname, error, written: .write.io_bytes, verified: .read.io_bytes, max_lat_ms: (.write.clat_ns.max / 1e6)}' "$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq -r '[.jobs[] | "\(.write.io_bytes) \(.read.io_bytes)"] | join(", ")' "$json.clean")" \
	"12582912 12582912, 12582912 12582912" "per job: bytes written and bytes verified"
metric daemon_upgrade_pause_ms "$pause" ms
stall=$(jq '[.jobs[].write.clat_ns.max] | max / 1e6 | floor' "$json.clean")
metric daemon_upgrade_stall_ms "$stall" ms
log "upgrade by $expected: I/O paused $pause ms (longest fio write $stall ms); fio verified 24 MiB"

# The new daemon, itself one that took the device over, hands it over again (to the first
# binary); then fio verifies everything it wrote through the third daemon.
bg_start host3 ublk-host upgrade 0
wait_for "grep -q ' ready ' $LAB_WORK/host3.log || ! bg_alive host3" 90 "the second upgrade to report ready"
grep -q 'ready (recovered)' "$LAB_WORK/host3.log" ||
	fail "the second upgrade did not report ready: $(tail -n 5 "$LAB_WORK/host3.log")"
wait_for "! bg_alive host2" 10 "the second daemon to be gone"
bg_stop host2 || fail "the second daemon exited nonzero: $(tail -n 5 "$LAB_WORK/host2.log")"
ublk-host list | grep -q "^/dev/ublkb0[[:space:]]state=live[[:space:]]pid=$(bg_pid host3)[[:space:]]" ||
	fail "list does not show /dev/ublkb0 live under the third daemon: $(ublk-host list)"
fio --eta=never --output-format=json --output="$json.again" --verify_only "${workload[@]}" >/dev/null ||
	fail "fio --verify_only failed after the second upgrade: $(cat "$json.again")"
sed -n '/^{/,$p' "$json.again" >"$json.again.clean"
assert_eq "$(jq -r '[.jobs[] | "\(.error) \(.read.io_bytes)"] | join(", ")' "$json.again.clean")" \
	"0 12582912, 0 12582912" "per job after the second upgrade: error and bytes verified"
metric daemon_upgrade_again_pause_ms "$(sed -n 's/^ublk-host: I\/O paused \([0-9]*\) ms for the upgrade$/\1/p' "$LAB_WORK/host3.log")" ms

ublk-host detach 0
wait_for "! bg_alive host3" 30 "the third daemon to exit after detach"
[ ! -e /sys/class/ublk-char/ublkc0 ] || fail "detach did not remove /dev/ublkb0"
[ ! -e /run/multilane/ublkb0.json ] || fail "the state file outlived the device"
