# shellcheck shell=bash
# lab-desc: server kill -9 and restart under fio --verify: the lanes reconnect to the new process (new boot epoch, no flush outstanding in fio's writes so no FLUSH fails), fio verifies every block with 0 errors
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7134 7197
ml_attach host h1 vol --queues 2 --lanes-per-queue 2
dev=$ML_DEV

json=$LAB_WORK/fio.json
bg_start fio fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=8 \
	--name=kill9 --rw=randwrite --bs=4k --size=8M --rate_iops=200 \
	--verify=crc32c --do_verify=1 --verify_fatal=1
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -ge 262144 ]" 60 "fio writing through the server"

reconnects_before=$(grep -c 'reconnected on path' "$LAB_WORK/host.log" || true)
bg_stop server KILL || true
kill_ms=$(now_ms)
log "server killed"
ml_serve 7134 7197
serving_ms=$(now_ms)
wait_for "[ \"\$(grep -c 'reconnected on path' $LAB_WORK/host.log)\" -ge $((reconnects_before + 4)) ]" 60 "all 4 lanes to reconnect"
recover_ms=$(($(now_ms) - kill_ms))
after_restart_ms=$(($(now_ms) - serving_ms))
log "all lanes back ${recover_ms} ms after the kill (${after_restart_ms} ms after the new server answered)"
wait_for "[ \"\$(ml_bytes_written h1 vol)\" -gt 0 ]" 30 "writes flowing on the new server"

wait_for "! bg_alive fio" 240 "fio to finish"
bg_stop fio || fail "fio failed: $(tail -n 5 "$LAB_WORK/fio.log")"
sed -n '/^{/,$p' "$json" >"$json.clean"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq '.jobs[0].read.io_bytes' "$json.clean")" $((8 << 20)) "bytes fio read back and verified"
metric recover_ms "$recover_ms" ms
metric after_restart_ms "$after_restart_ms" ms
log "server kill -9 + restart: I/O back after ${recover_ms} ms, fio verified 8 MiB with 0 errors"

ml_detach host "$dev"
