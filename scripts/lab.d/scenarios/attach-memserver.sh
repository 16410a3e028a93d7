# shellcheck shell=bash
# lab-desc: ublk-host attach (4 queues x 2 lanes, split 128K) against the in-memory test server: mq count, dd, fio verify, FUA/flush, mkfs.ext4+mount, list, detach
# lab-smp: 4
# Needs target/release/ublk-host and the memserver example (built by attach-memserver.host).
# ublk caps hardware queues at the CPU count: the lab boots this with 4 vCPUs; exactly 4 asserted.

need_dev /dev/ublk-control
need_bin ublk-host memserver

SECRET=$LAB_WORK/host.key
ADDR=127.0.0.1:7700
(umask 077 && printf '%064x\n' 42 >"$SECRET")
CONN="--server $ADDR --host lab --secret-file $SECRET"

bg_start server memserver --listen "$ADDR" --size $((64 << 20)) --secret-file "$SECRET"
wait_for "ublk-host discover $CONN" 30 "memserver to answer discovery"
ublk-host discover $CONN

# shellcheck disable=SC2086 # CONN is several words
bg_start host ublk-host attach $CONN --partition vol0 --queues 4 --lanes-per-queue 2 \
	--split 128K --depth 64 --id 0
on_cleanup "[ ! -e /sys/class/ublk-char/ublkc0 ] || ublk-host detach 0"
wait_for "grep -q 'ready' $LAB_WORK/host.log" 60 "ublk-host to report the device ready"
grep ready "$LAB_WORK/host.log"
wait_for /sys/block/ublkb0/mq 10

# the driver allows at most one hardware queue per CPU: the lab-smp header gives 4
assert_eq "$(nproc)" 4 "guest CPUs (lab-smp header)"
want_q=4
assert_eq "$(ls /sys/block/ublkb0/mq | wc -l)" "$want_q" "hardware queues in /sys/block/ublkb0/mq"
grep -Eq "ublkb0( as [^ ]+)? ready \\($want_q queues x 2 lanes\\)" "$LAB_WORK/host.log" || fail "ready line names $want_q queues"
# queues x 2 data lanes, plus the daemon's one control connection (it follows the partition
# list for live resize)
assert_eq "$(ss -tn state established "( dport = :7700 )" | tail -n +2 | wc -l)" $((want_q * 2 + 1)) "data lanes (queues x 2) + 1 control connection"
assert_eq "$(blockdev --getsize64 /dev/ublkb0)" $((64 << 20)) "device size"
assert_eq "$(cat /sys/block/ublkb0/queue/write_cache)" "write back" "volatile write cache"
assert_eq "$(cat /sys/block/ublkb0/queue/fua)" 1 "FUA"
log "discard_max_bytes $(cat /sys/block/ublkb0/queue/discard_max_bytes)"

# byte-for-byte through the page-cache-free path, with large (split) requests
dd if=/dev/urandom of="$LAB_WORK/pattern" bs=1M count=8 status=none
dd if="$LAB_WORK/pattern" of=/dev/ublkb0 bs=1M oflag=direct status=none
dd if=/dev/ublkb0 of="$LAB_WORK/back" bs=1M count=8 iflag=direct status=none
cmp "$LAB_WORK/pattern" "$LAB_WORK/back"
log "dd 8 MiB write + read back: identical"

fio --name=verify --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=randwrite \
	--bsrange=4k-256k --size=16M --offset=16M --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --fsync=32 --minimal >/dev/null
log "fio randwrite 4k-256k with crc32c verify: ok"

# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=rr --filename=/dev/ublkb0 --rw=randread --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=32 --numjobs=2 --runtime=3 --time_based)
log "fio 4k randread QD32x2: $1 IOPS"
[ "${1:-0}" -gt 0 ] || fail "no reads"
metric ublkb0_4k_randread_iops "$1" IOPS

blkdiscard -z -o 0 -l $((1 << 20)) /dev/ublkb0
assert_eq "$(dd if=/dev/ublkb0 bs=1M count=1 iflag=direct status=none | tr -d '\0' | wc -c)" 0 "write-zeroes leaves zeroes"

mkfs.ext4 -q -F /dev/ublkb0
mkdir -p "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
sync
umount "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cmp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
umount "$LAB_WORK/mnt"
log "mkfs.ext4 + mount + file round trip: ok"

ublk-host list | tee "$LAB_WORK/list"
grep -q 'ublkb0.*live' "$LAB_WORK/list"

ublk-host detach 0
wait_for "[ ! -e /dev/ublkb0 ]" 30 "/dev/ublkb0 to go away after detach"
wait_for "! bg_alive host" 30 "ublk-host attach to exit after detach"
