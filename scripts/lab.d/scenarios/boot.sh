# shellcheck shell=bash
# lab-desc: kernel + modules sanity: ublk-control, virtio disks, nbd, null_blk fio, veth/netns ping
# Sourced by the guest runner after lib.sh (bash, set -eE -o pipefail, ERR trap).

log "kernel $(uname -r); modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
# What makes system calls and context switches dearer on one kernel than on another: the CPU
# vulnerability mitigations in force and the preemption model.
log "$(uname -v); preempt: $(cat /sys/kernel/debug/sched/preempt 2>/dev/null || echo unknown)"
log "scheduler features: $(cat /sys/kernel/debug/sched/features 2>/dev/null || echo unknown)"
log "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) (of $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource))"
# How the kernel copies to and from user memory depends on these (FSRM: an inline `rep movsb`;
# ERMS: `rep movsb` in rep_movs_alternative; neither: `rep movsq`); under TCG those copies
# profiled at about 7x a kernel memcpy of the same bytes (README, per-request cost).
copy_flags=$(grep -m1 -ow -E 'erms|fsrm' /proc/cpuinfo | tr '\n' ' ' || true)
log "string-copy CPU flags (erms, fsrm): ${copy_flags:-neither}"
for v in /sys/devices/system/cpu/vulnerabilities/*; do
	log "mitigation ${v##*/}: $(cat "$v")"
done

# ublk
[ -d /sys/module/ublk_drv ] || fail "ublk_drv is not loaded"
wait_for /dev/ublk-control 5 "/dev/ublk-control after loading ublk_drv"

# the three virtio disks from the host
for d in vda vdb vdc; do
	[ -b "/dev/$d" ] || fail "/dev/$d missing (virtio_blk not loaded or qemu -drive missing)"
	log "/dev/$d: $(blockdev --getsize64 "/dev/$d") bytes"
done

# nbd: module loaded and devices present
[ -d /sys/module/nbd ] || fail "nbd module is not loaded"
wait_for /dev/nbd0 5 "/dev/nbd0"

# dm-flakey and netem are there for later scenarios
[ -d /sys/module/dm_flakey ] || fail "dm_flakey is not loaded"
[ -d /sys/module/sch_netem ] || fail "sch_netem is not loaded"

# null_blk + fio: 2 s of 4k random reads
wait_for /dev/nullb0 5 "/dev/nullb0 from null_blk"
# shellcheck disable=SC2046 # two numbers
set -- $(fio_iops --name=nullb0 --filename=/dev/nullb0 --rw=randread --bs=4k --direct=1 \
	--ioengine=io_uring --iodepth=32 --runtime=2 --time_based)
log "fio 4k randread on /dev/nullb0: $1 IOPS"
[ "${1:-0}" -gt 0 ] || fail "fio on /dev/nullb0 reported no reads"
metric nullb0_4k_randread_iops "$1" IOPS

# veth pair between two network namespaces; a test-only address range (RFC 2544), and the
# guest has no NIC, so nothing leaves the VM
ip netns add lab-a
on_cleanup "ip netns del lab-a"
ip netns add lab-b
on_cleanup "ip netns del lab-b"
ip link add veth-a type veth peer name veth-b
ip link set veth-a netns lab-a
ip link set veth-b netns lab-b
ip -n lab-a addr add 198.18.0.1/24 dev veth-a
ip -n lab-b addr add 198.18.0.2/24 dev veth-b
ip -n lab-a link set veth-a up
ip -n lab-b link set veth-b up
ip -n lab-a link set lo up
ip -n lab-b link set lo up
# the link may need a moment to come up: poll, do not sleep
wait_for "ip netns exec lab-a ping -c 1 -W 1 198.18.0.2" 15 "ping lab-a -> lab-b over veth"
ip netns exec lab-b ping -c 3 -i 0.2 -W 1 198.18.0.1 || fail "ping lab-b -> lab-a failed"
log "veth between two namespaces: ping ok"
