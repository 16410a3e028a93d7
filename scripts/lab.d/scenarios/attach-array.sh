# shellcheck shell=bash
# lab-desc: ublk-host attach against the real array-server on the 3 virtio disks (Q=4 x 2 lanes, split 128K): mq, dd, fio verify, FUA, ext4, SIGTERM teardown
# Needs target/release/array-server and target/release/ublk-host.

need_dev /dev/ublk-control /dev/vda /dev/vdb /dev/vdc
need_bin array-server ublk-host

DISKS="--disk /dev/vda --disk /dev/vdb --disk /dev/vdc"
SECRET=$LAB_WORK/h1.key
ADDR=127.0.0.1:7000
# shellcheck disable=SC2086 # DISKS is several words
{
	array-server format $DISKS --chunk 64K --force --admin-token-file "$LAB_WORK/admin.token"
	array-server partition create $DISKS vol 96M
	array-server host create $DISKS --secret-file "$SECRET" h1
	array-server assign $DISKS h1 vol
}
# shellcheck disable=SC2086
bg_start server array-server serve $DISKS --listen "$ADDR" --threads 2
CONN="--server $ADDR --host h1 --secret-file $SECRET"
wait_for "ublk-host discover $CONN" 30 "array-server to answer discovery"
ublk-host discover $CONN

# shellcheck disable=SC2086
bg_start host ublk-host attach $CONN --partition vol --queues 4 --lanes-per-queue 2 \
	--split 128K --depth 64 --id 0
on_cleanup "[ ! -e /sys/class/ublk-char/ublkc0 ] || ublk-host detach 0"
wait_for "grep -q 'ready' $LAB_WORK/host.log" 60 "ublk-host to report the device ready"
grep ready "$LAB_WORK/host.log"
want_q=$(( $(nproc) < 4 ? $(nproc) : 4 ))
assert_eq "$(ls /sys/block/ublkb0/mq | wc -l)" "$want_q" "hardware queues in /sys/block/ublkb0/mq"
assert_eq "$(ss -tn state established "( dport = :7000 )" | tail -n +2 | wc -l)" $((want_q * 2)) "data lanes (queues x 2)"
assert_eq "$(cat /sys/block/ublkb0/queue/fua)" 1 "FUA"

dd if=/dev/urandom of="$LAB_WORK/pattern" bs=1M count=8 status=none
dd if="$LAB_WORK/pattern" of=/dev/ublkb0 bs=1M seek=3 oflag=direct status=none
dd if=/dev/ublkb0 of="$LAB_WORK/back" bs=1M skip=3 count=8 iflag=direct status=none
cmp "$LAB_WORK/pattern" "$LAB_WORK/back"
log "dd 8 MiB write + read back through the array: identical"

fio --name=verify --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=randwrite \
	--bsrange=4k-256k --size=16M --offset=32M --iodepth=16 --verify=crc32c --do_verify=1 \
	--verify_fatal=1 --fsync=32 --minimal >/dev/null
log "fio randwrite 4k-256k with crc32c verify: ok"

# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=rr --filename=/dev/ublkb0 --rw=randread --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=32 --numjobs=2 --runtime=3 --time_based)
log "fio 4k randread QD32x2: $1 IOPS"
metric array_ublkb0_4k_randread_iops "$1" IOPS
# shellcheck disable=SC2046
set -- $(fio_iops --name=sr --filename=/dev/ublkb0 --rw=read --bs=1M --direct=1 \
	--ioengine=io_uring --iodepth=4 --size=32M)
log "fio 1M sequential read QD4: $1 IOPS (= MiB/s)"
metric array_ublkb0_1m_seqread_mibs "$1" MiB/s

mkfs.ext4 -q -F /dev/ublkb0
mkdir -p "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
umount "$LAB_WORK/mnt"
mount /dev/ublkb0 "$LAB_WORK/mnt"
cmp "$LAB_WORK/pattern" "$LAB_WORK/mnt/file"
umount "$LAB_WORK/mnt"
log "mkfs.ext4 + mount + file round trip: ok"

# SIGTERM tears the device down and the daemon exits on its own
kill -TERM "$(bg_pid host)"
wait_for "[ ! -e /dev/ublkb0 ]" 30 "/dev/ublkb0 to go away after SIGTERM"
wait_for "! bg_alive host" 30 "ublk-host attach to exit after SIGTERM"
