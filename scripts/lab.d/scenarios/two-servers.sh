# shellcheck shell=bash
# lab-desc: several servers per host: two array-server processes, each on its own virtio disk with its own array, host credentials, admin token and port; one ublk-host per device attaches a partition from each (own lanes, secret and discovery); fio --verify on both devices at once with 0 errors, and each server holds only its own device's lanes
# shellcheck source=../multilane.sh
. /lab/multilane.sh

need_dev /dev/ublk-control /dev/vda /dev/vdb
need_bin array-server ublk-host jq fio

ml_serve_own a /dev/vda 7150 7195
ml_serve_own b /dev/vdb 7151 7196
# The two arrays are distinct (their own ids).
id_a=$(array-server ctl --admin http://127.0.0.1:7195 --token-file "$LAB_WORK/a.token" --json array | jq -r .id)
id_b=$(array-server ctl --admin http://127.0.0.1:7196 --token-file "$LAB_WORK/b.token" --json array | jq -r .id)
[ -n "$id_a" ] && [ "$id_a" != "$id_b" ] || fail "the two servers should serve two arrays: $id_a / $id_b"

ml_use_server a 7150 7195
ml_attach host-a h-a vol-a --queues 1
dev_a=$ML_DEV
ml_use_server b 7151 7196
ml_attach host-b h-b vol-b --queues 1
dev_b=$ML_DEV
[ "$dev_a" != "$dev_b" ] || fail "one device for both partitions"
# Each server holds only its own device's lane; a host's secret opens only its own server.
ml_use_server a 7150 7195
assert_eq "$(ml_lane_count h-a vol-a)" 1 "lanes of h-a on server a"
assert_eq "$(ml_ctl --json sessions | jq '[.sessions[] | select(.kind == "data")] | length')" 1 "data lanes on server a"
ml_use_server b 7151 7196
assert_eq "$(ml_lane_count h-b vol-b)" 1 "lanes of h-b on server b"
assert_eq "$(ml_ctl --json sessions | jq '[.sessions[] | select(.kind == "data")] | length')" 1 "data lanes on server b"

for side in a b; do
	dev_var=dev_$side
	bg_start "fio-$side" fio --eta=never --output-format=json --output="$LAB_WORK/fio-$side.json" \
		--filename="${!dev_var}" --ioengine=io_uring --direct=1 --iodepth=16 \
		--name="verify-$side" --rw=randwrite --bs=16k --size=16M \
		--verify=crc32c --do_verify=1 --verify_fatal=1
done
for side in a b; do
	wait_for "! bg_alive fio-$side" 240 "fio on server $side's device to finish"
	bg_stop "fio-$side" || fail "fio-$side failed: $(tail -n 5 "$LAB_WORK/fio-$side.log")"
	sed -n '/^{/,$p' "$LAB_WORK/fio-$side.json" >"$LAB_WORK/fio-$side.clean"
	assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$LAB_WORK/fio-$side.clean")" 0 "fio-$side jobs with an error"
	assert_eq "$(jq '.jobs[0].read.io_bytes' "$LAB_WORK/fio-$side.clean")" $((16 << 20)) "bytes fio-$side verified"
done
ml_use_server a 7150 7195
written_a=$(ml_bytes_written h-a vol-a)
ml_use_server b 7151 7196
written_b=$(ml_bytes_written h-b vol-b)
[ "$written_a" -ge $((16 << 20)) ] || fail "server a wrote $written_a bytes"
[ "$written_b" -ge $((16 << 20)) ] || fail "server b wrote $written_b bytes"
log "two array servers, one device each, 16 MiB verified on both (server a wrote $written_a B, b $written_b B)"

ml_detach host-a "$dev_a"
ml_detach host-b "$dev_b"
