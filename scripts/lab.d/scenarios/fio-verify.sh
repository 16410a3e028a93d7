# shellcheck shell=bash
# lab-desc: fio random writes 4k and 128k, 2 jobs each, --verify=crc32c verify_fatal on an array partition (Q=2 x 2 lanes, split 128K): every byte written is read back and verified
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 48M
ml_host h1
ml_assign h1 vol
ml_serve 7120 7191
ml_attach host h1 vol --queues 2 --lanes-per-queue 2 --split 128K
dev=$ML_DEV

# 4 concurrent jobs on disjoint regions (offset_increment), each verifies what it wrote.
# rand4k: 2 x 4 MiB at 0 and 4M; rand128k: 2 x 8 MiB at 16M and 24M.
json=$LAB_WORK/fio.json
fio --eta=never --output-format=json --output="$json" \
	--filename="$dev" --ioengine=io_uring --direct=1 --iodepth=8 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=1 \
	--name=rand4k --rw=randwrite --bs=4k --size=4M --offset=0 --offset_increment=4M --numjobs=2 \
	--name=rand128k --rw=randwrite --bs=128k --size=8M --offset=16M --offset_increment=8M --numjobs=2 \
	|| fail "fio with crc32c verify failed (see the log)"
# fio prints warnings before its JSON in the same file
sed -n '/^{/,$p' "$json" >"$json.clean"
jq -cM '.jobs[] | {job: .jobname, error, written: .write.io_bytes, verified: .read.io_bytes}' "$json.clean"
assert_eq "$(jq '.jobs | length' "$json.clean")" 4 "fio jobs"
assert_eq "$(jq '[.jobs[] | select(.error != 0)] | length' "$json.clean")" 0 "fio jobs with an error"
assert_eq "$(jq -r '[.jobs[] | "\(.jobname) \(.write.io_bytes) \(.read.io_bytes)"] | sort | join(", ")' "$json.clean")" \
	"rand128k 8388608 8388608, rand128k 8388608 8388608, rand4k 4194304 4194304, rand4k 4194304 4194304" \
	"per job: bytes written and bytes read back for verification"
# the server saw it all (verify reads + writes, 24 MiB each way)
assert_eq "$(ml_sessions_of h1 vol | jq -s 'map(.bytes_written) | add')" $((24 << 20)) "bytes the server wrote for h1/vol"
[ "$(ml_sessions_of h1 vol | jq -s 'map(.bytes_read) | add')" -ge $((24 << 20)) ] || fail "server read less than the 24 MiB verified"
log "fio: 4 jobs (4k x2, 128k x2) wrote 24 MiB and verified every block with crc32c"

ml_detach host "$dev"
