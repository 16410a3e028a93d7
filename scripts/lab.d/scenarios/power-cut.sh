# shellcheck shell=bash
# lab-desc: FUA and FLUSH writes to the array on virtio disks (cache=none), the guest's power cut with no sync (sysrq b), a second boot on the same disks finds every acknowledged write byte for byte; an unsynced write is lost
# lab-disk-cache: none
# lab-power-cut: boot 1 writes and cuts the power, boot 2 serves the same disks and verifies
# Needs target/release/array-server and target/release/ublk-host.
#
# Boot 1: the guest's periodic writeback is switched off first, so nothing reaches a disk
# unless someone asked for it: the array's metadata (format, partition, host, assignment)
# only if its commits sync, the data only if the server honours FUA and FLUSH. Then, through
# /dev/ublkb0:
#  - FLUSH: rounds of O_DIRECT writes without FUA, then fsync (dd conv=fsync: one FLUSH
#    request), each round acknowledged when dd exits 0; the server's flush counter must move.
#  - FUA: concurrent io_uring O_DIRECT writes opened O_SYNC (fio --sync=1). An async O_DSYNC
#    write to a block device is sent as REQ_FUA with no flush after it (the device advertises
#    "write back" + FUA), so these survive only through FUA; the server's flush counter must
#    NOT move during them.
#  - a canary: a file written on ext4 (on a second partition, /dev/ublkb1) and never synced,
#    so its data sits in the guest's page cache (delayed allocation; writeback is off).
#    (A buffered write to /dev/ublkb0 itself is no canary: in this guest it reaches the
#    device at once: the completed-writes count of ublkb0 moved while dd ran, Dirty 0.)
# Every acknowledged write is carried to boot 2 over the result serial port (not the disks),
# then the power is cut. Boot 2 serves the array from the same disk images, attaches the
# partition and compares every acknowledged write byte for byte; the ext4 synced in boot 1
# must mount; the canary file must not hold its data (proof that the cut dropped what
# nobody synced).
# On the bare virtio disks (cache=none: qemu writes the images with O_DIRECT) whatever the
# server wrote with O_DIRECT is on the images at once, synced or not: this proves nothing
# acknowledged is held in guest RAM (page cache, buffers), and that the metadata commits
# sync. Whether the server's FUA/FLUSH really sync is proven by power-cut-wcache.sh, which
# puts a volatile write cache below the server.
# shellcheck source=../multilane.sh
. /lab/multilane.sh

PC_BLOCK=65536
PC_FLUSH_ROUNDS=6     # FLUSH rounds of PC_FLUSH_BLOCKS blocks each, from offset 0
PC_FLUSH_BLOCKS=4
PC_FUA_JOBS=6         # concurrent FUA writers of PC_FUA_BLOCKS blocks each, from PC_FUA_BASE
PC_FUA_BLOCKS=2
PC_FUA_BASE=$((16 << 20))
PC_MNT=$LAB_WORK/mnt

# With PC_WCACHE=1 (power-cut-wcache.sh) the members are nbd devices served by nbdkit's cache
# filter in writeback mode over the virtio disks: a volatile write cache in guest RAM below
# the server, written to the disks only on a flush. A server that skipped its fdatasync
# would lose acknowledged writes there; on the bare virtio disks (O_DIRECT to the images)
# it would not. See ml_wcache_members in multilane.sh.
# (PC_WCACHE=1) the server's members are the nbd devices
pc_assert_nbd_members() {
	local got
	got=$(ml_ctl --json array | jq -r '.disks | sort_by(.index)[] | "\(.path) \(.block_device)"' | tr '\n' ' ')
	assert_eq "$got" "/dev/nbd0 true /dev/nbd1 true /dev/nbd2 true " "array members (path block_device)"
}

if [ "${PC_WCACHE:-0}" = 1 ]; then
	ml_assert_virtio_members() { pc_assert_nbd_members; }
fi

# pattern TEXT LEN: LEN / PC_BLOCK blocks, each TEXT repeated to PC_BLOCK bytes (as fio's
# --buffer_pattern fills each of its PC_BLOCK buffers)
pattern() {
	local s=$1 i
	while ((${#s} < PC_BLOCK)); do s=$s$s; done
	for ((i = 0; i < $2 / PC_BLOCK; i++)); do printf '%s' "${s:0:PC_BLOCK}"; done
}

# the server's FLUSH requests from h1 on vol, from its /metrics
flushes() {
	wget -q -O - --header "Authorization: Bearer $(cat "$ML_TOKEN")" "http://$ML_ADMIN/metrics" |
		awk '/^multilane_requests_total\{host="h1",partition="vol",op="flush"\}/ {print $2}'
}

# read_block OFFSET LEN: the bytes on /dev/ublkb0 (O_DIRECT, around any page cache)
read_block() {
	dd if=/dev/ublkb0 bs="$2" skip="$1" count=1 iflag=direct,skip_bytes status=none
}

phase1() {
	echo 0 >/proc/sys/vm/dirty_writeback_centisecs
	echo 360000 >/proc/sys/vm/dirty_expire_centisecs
	echo $((256 << 20)) >/proc/sys/vm/dirty_bytes
	echo $((128 << 20)) >/proc/sys/vm/dirty_background_bytes
	[ "${PC_WCACHE:-0}" != 1 ] || ml_wcache_members
	ml_format
	ml_partition vol 64M
	ml_host h1
	ml_assign h1 vol
	ml_partition scratch 16M
	ml_assign h1 scratch
	ml_serve 7300 7380
	ml_attach host h1 vol --queues 1 --id 0
	ml_attach scratch h1 scratch --queues 1 --id 1
	mkfs.ext4 -q /dev/ublkb1
	mkdir -p "$PC_MNT"
	mount /dev/ublkb1 "$PC_MNT"
	sync
	assert_eq "$(cat /sys/block/ublkb0/queue/fua)" 1 "FUA on /dev/ublkb0"
	assert_eq "$(cat /sys/block/ublkb0/queue/write_cache)" "write back" "write cache of /dev/ublkb0"
	local token r j offset len before after
	token=$(tr -d - </proc/sys/kernel/random/uuid)
	carry "token $token"
	# $LAB_WORK is on tmpfs: boot 2 gets the (lab-only) host secret and admin token this way
	carry "secret $(cat "$LAB_WORK/h1.key")"
	carry "admin-token $(cat "$ML_TOKEN")"

	before=$(flushes)
	for ((r = 0; r < PC_FLUSH_ROUNDS; r++)); do
		offset=$((r * PC_FLUSH_BLOCKS * PC_BLOCK))
		len=$((PC_FLUSH_BLOCKS * PC_BLOCK))
		pattern "multilane-power-cut-$token-flush-$r." "$len" >"$LAB_WORK/w"
		dd if="$LAB_WORK/w" of=/dev/ublkb0 bs="$len" seek="$offset" count=1 \
			oflag=direct,seek_bytes conv=fsync,notrunc status=none
		carry "flush $r $offset $len"
	done
	after=$(flushes)
	log "FLUSH: $PC_FLUSH_ROUNDS rounds acknowledged; the server ran $((after - before)) FLUSH requests"
	((after - before >= PC_FLUSH_ROUNDS)) || fail "the server saw $((after - before)) FLUSH requests for $PC_FLUSH_ROUNDS fsyncs"

	local jobs=()
	len=$((PC_FUA_BLOCKS * PC_BLOCK))
	for ((j = 0; j < PC_FUA_JOBS; j++)); do
		jobs+=(--name="fua$j" --offset=$((PC_FUA_BASE + j * len)) --size="$len"
			--buffer_pattern="\"multilane-power-cut-$token-fua-$j.\"")
	done
	before=$(flushes)
	fio --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --sync=1 --rw=write \
		--bs="$PC_BLOCK" --iodepth="$PC_FUA_BLOCKS" "${jobs[@]}" --minimal >/dev/null
	after=$(flushes)
	assert_eq "$((after - before))" 0 "FLUSH requests during the FUA writes"
	for ((j = 0; j < PC_FUA_JOBS; j++)); do
		offset=$((PC_FUA_BASE + j * len))
		# fio filled its buffers as `pattern` does (else boot 2 would blame the server)
		pattern "multilane-power-cut-$token-fua-$j." "$len" >"$LAB_WORK/w"
		read_block "$offset" "$len" | cmp -s "$LAB_WORK/w" - ||
			fail "fio's --buffer_pattern data differs from the scenario's pattern (fua $j)"
		carry "fua $j $offset $len"
	done
	log "FUA: $PC_FUA_JOBS writers x $PC_FUA_BLOCKS blocks acknowledged, no FLUSH among them"

	# The canary: a file on ext4, in the guest's page cache only.
	pattern "multilane-power-cut-$token-canary." "$PC_BLOCK" >"$PC_MNT/canary"
	log "canary file written, not synced: $(grep -E '^(Dirty|Writeback):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
	carry "canary 0 0 $PC_BLOCK"
	power_cut
}

phase2() {
	[ "${PC_WCACHE:-0}" != 1 ] || ml_wcache_members
	(
		umask 077
		carried | sed -n 's/^secret //p' >"$LAB_WORK/h1.key"
		carried | sed -n 's/^admin-token //p' >"$ML_TOKEN"
	)
	[ -s "$LAB_WORK/h1.key" ] && [ -s "$ML_TOKEN" ] || fail "no secret or admin token carried from boot 1"
	ml_serve 7300 7380
	ml_attach host h1 vol --queues 1 --id 0
	ml_attach scratch h1 scratch --queues 1 --id 1
	mkdir -p "$PC_MNT"
	# boot 1 ran sync(2) after mkfs: the file system must be there (checked below, after the
	# writes are counted)
	local mounted=0
	if mount /dev/ublkb1 "$PC_MNT"; then
		mounted=1
		on_cleanup "umount $PC_MNT"
	fi
	local token kind index offset len acknowledged=0 verified=0 canary_lost=0
	token=$(carried | sed -n 's/^token //p')
	[ -n "$token" ] || fail "no token carried from boot 1"
	while read -r kind index offset len; do
		case $kind in
		token | secret | admin-token) continue ;;
		canary)
			pattern "multilane-power-cut-$token-canary." "$len" >"$LAB_WORK/want"
			log "canary file after the cut: $(ls -l "$PC_MNT/canary" 2>&1 || true)"
			cmp -s "$LAB_WORK/want" "$PC_MNT/canary" || canary_lost=1
			continue
			;;
		esac
		acknowledged=$((acknowledged + 1))
		pattern "multilane-power-cut-$token-$kind-$index." "$len" >"$LAB_WORK/want"
		read_block "$offset" "$len" >"$LAB_WORK/got"
		if cmp "$LAB_WORK/want" "$LAB_WORK/got"; then
			verified=$((verified + 1))
		else
			log "LOST: $kind write $index at $offset (+$len) acknowledged before the power cut"
		fi
	done < <(carried)
	metric writes_acknowledged "$acknowledged" writes
	metric writes_verified "$verified" writes
	metric unsynced_canary_lost "$canary_lost"
	metric synced_fs_mounts "$mounted"
	assert_eq "$acknowledged" $((PC_FLUSH_ROUNDS + PC_FUA_JOBS)) "acknowledged writes carried from boot 1"
	assert_eq "$verified" "$acknowledged" "acknowledged writes found byte for byte after the power cut"
	assert_eq "$mounted" 1 "the ext4 made and synced (sync(2)) in boot 1 mounts"
	assert_eq "$canary_lost" 1 "the never-synced canary lost (else the cut was no real power cut)"
}

case $LAB_PHASE in
1) phase1 ;;
2) phase2 ;;
*) fail "unknown LAB_PHASE $LAB_PHASE" ;;
esac
