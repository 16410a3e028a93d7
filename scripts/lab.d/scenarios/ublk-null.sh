# shellcheck shell=bash
# lab-desc: libublk's own null example: /dev/ublkb0 with 2 queues, fio on it, delete it
# Needs the example binary `libublk-null` (built on the host by ublk-null.host).

need_dev /dev/ublk-control
need_bin libublk-null

# foreground mode, so the daemon is our child and is stopped at the end
bg_start ublk-null libublk-null add -n 0 -q 2 -d 64 --foreground
on_cleanup "[ ! -e /sys/block/ublkb0 ] || libublk-null del -n 0"
wait_for /dev/ublkb0 60 "/dev/ublkb0 to appear"
wait_for /sys/block/ublkb0/mq 10

nq=$(ls /sys/block/ublkb0/mq | wc -l)
assert_eq "$nq" 2 "hardware queues in /sys/block/ublkb0/mq"
log "ublkb0: $(blockdev --getsize64 /dev/ublkb0) bytes, $nq queues"

# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=ublk-rr --filename=/dev/ublkb0 --rw=randread --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=32 --numjobs=2 --runtime=2 --time_based)
log "fio 4k randread on /dev/ublkb0: $1 IOPS"
[ "${1:-0}" -gt 0 ] || fail "fio on /dev/ublkb0 reported no reads"
metric ublkb0_4k_randread_iops "$1" IOPS

# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=ublk-w --filename=/dev/ublkb0 --rw=write --bs=1M --direct=1 \
	--ioengine=io_uring --iodepth=4 --size=32M)
log "fio 1M write on /dev/ublkb0: $2 IOPS"
[ "${2:-0}" -gt 0 ] || fail "fio writes on /dev/ublkb0 reported nothing"

libublk-null del -n 0
wait_for "[ ! -e /dev/ublkb0 ]" 30 "/dev/ublkb0 to go away after del"
# the daemon exits once its device is deleted
wait_for "! bg_alive ublk-null" 30 "the ublk daemon to exit after del"
