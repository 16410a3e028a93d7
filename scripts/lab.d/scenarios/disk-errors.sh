# shellcheck shell=bash
# lab-desc: member disk errors: the array's second member is a dm-flakey device switched (suspend/load/resume) between linear and always-down; while down, direct I/O of the chunks on it fails with EIO at /dev/ublkb0 and only those, the server counts them per disk, reads of the other chunks return the right bytes, failed writes left the old data; healed, every byte reads back as acknowledged
# shellcheck source=../multilane.sh
. /lab/multilane.sh

# The member is switched between tables, never left to flakey's time intervals: the "down"
# table is flakey with up interval 0 (always down, no features: every read and write fails
# with EIO), the "up" table is linear over the same disk.
DE_NAME=mlflaky
DE_DISK=/dev/vdb
DE_CHUNK=65536 # the array's chunk (ml_format: --chunk 64K): one dd = one member
DE_CHUNKS=12   # chunks written and read, 0..DE_CHUNKS-1 of the partition: every member
DE_DOWN_SECONDS=3600

need_bin dmsetup
sectors=$(blockdev --getsz "$DE_DISK")
de_table() { # up|down
	case $1 in
	up) echo "0 $sectors linear $DE_DISK 0" ;;
	down) echo "0 $sectors flakey $DE_DISK 0 0 $DE_DOWN_SECONDS" ;;
	esac
}
de_switch() {
	dmsetup suspend --noudevsync "$DE_NAME"
	dmsetup load --noudevsync "$DE_NAME" --table "$(de_table "$1")"
	dmsetup resume --noudevsync "$DE_NAME"
	assert_eq "$(dmsetup table "$DE_NAME" | awk '{print $3}')" "$([ "$1" = up ] && echo linear || echo flakey)" "dm table of $DE_NAME"
}
dmsetup create --noudevsync "$DE_NAME" --table "$(de_table up)"
dm=/dev/$(dmsetup info -c --noheadings -o blkdevname "$DE_NAME")
wait_for "$dm" 10
ML_DISK_PATHS=(/dev/vda "$dm" /dev/vdc)
ML_DISKS=(--disk /dev/vda --disk "$dm" --disk /dev/vdc)
ml_assert_virtio_members() {
	assert_eq "$(ml_ctl --json array | jq -r '.disks | sort_by(.index)[] | "\(.path) \(.block_device)"' | tr '\n' ' ')" \
		"/dev/vda true $dm true /dev/vdc true " "array members (path block_device)"
}

ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7400 7480
# runs after the detach (registered later, runs first): the server holds the dm device open
on_cleanup "! bg_alive server || bg_stop server; dmsetup remove --noudevsync $DE_NAME"
ml_attach host h1 vol --queues 1 --id 0
dev=$ML_DEV

# pattern TEXT: one chunk of TEXT repeated
pattern() {
	local s=$1
	while ((${#s} < DE_CHUNK)); do s=$s$s; done
	printf '%s' "${s:0:DE_CHUNK}"
}
put() { # CHUNK TEXT: one O_DIRECT write; exit status of dd
	pattern "$2" >"$LAB_WORK/w"
	dd if="$LAB_WORK/w" of="$dev" bs="$DE_CHUNK" seek="$1" count=1 oflag=direct conv=notrunc status=none 2>>"$LAB_WORK/dd.err"
}
get() { # CHUNK: one O_DIRECT read into $LAB_WORK/r; exit status of dd
	dd if="$dev" of="$LAB_WORK/r" bs="$DE_CHUNK" skip="$1" count=1 iflag=direct status=none 2>>"$LAB_WORK/dd.err"
}
holds() { # CHUNK TEXT: the chunk (just read) holds TEXT's pattern
	pattern "$2" | cmp -s - "$LAB_WORK/r"
}
disk_errors() { # the server's io_errors of member 1, from ctl and /metrics (must agree)
	local ctl prom
	ctl=$(ml_ctl --json array | jq '.disks[] | select(.index == 1) | .io_errors')
	prom=$(wget -q -O - --header "Authorization: Bearer $(cat "$ML_TOKEN")" "http://$ML_ADMIN/metrics" |
		awk '/^multilane_disk_io_errors_total\{disk="1"/ {print $2}')
	assert_eq "$prom" "$ctl" "io_errors of disk 1 in /metrics and ctl"
	echo "$ctl"
}

token=$(tr -d - </proc/sys/kernel/random/uuid)
for ((c = 0; c < DE_CHUNKS; c++)); do put "$c" "$token-before-$c."; done
dd if=/dev/null of="$dev" conv=fsync,notrunc status=none
errors_before=$(disk_errors)
assert_eq "$errors_before" 0 "io_errors of disk 1 while healthy"

de_switch down
log "member 1 ($dm over $DE_DISK) is down"
read_failed=() read_ok=0 wrong=0
for ((c = 0; c < DE_CHUNKS; c++)); do
	if get "$c"; then
		read_ok=$((read_ok + 1))
		holds "$c" "$token-before-$c." || {
			wrong=$((wrong + 1))
			log "WRONG DATA: chunk $c read while member 1 was down"
		}
	else
		read_failed+=("$c")
	fi
done
write_failed=()
for ((c = 0; c < DE_CHUNKS; c++)); do
	put "$c" "$token-during-$c." || write_failed+=("$c")
done
grep -c 'Input/output error' "$LAB_WORK/dd.err" >"$LAB_WORK/eio" || true
errors_down=$(disk_errors)
log "while down: reads failed on chunks ${read_failed[*]}, writes failed on ${write_failed[*]}; $(cat "$LAB_WORK/eio") dd EIO lines; the server counted $errors_down errors on member 1"
assert_eq "$wrong" 0 "chunks read with wrong data while a member was down"
[ "${#read_failed[@]}" -gt 0 ] && [ "${#read_failed[@]}" -lt "$DE_CHUNKS" ] ||
	fail "${#read_failed[@]} of $DE_CHUNKS chunk reads failed: expected those on member 1 only"
assert_eq "${write_failed[*]}" "${read_failed[*]}" "chunks whose writes failed (= those whose reads failed: member 1's)"
assert_eq "$(cat "$LAB_WORK/eio")" $((${#read_failed[@]} * 2)) "dd failures that were EIO (Input/output error)"
[ "$errors_down" -ge $((${#read_failed[@]} * 2)) ] ||
	fail "the server counted $errors_down I/O errors on member 1 for $((${#read_failed[@]} * 2)) failed requests"
for d in 0 2; do
	assert_eq "$(ml_ctl --json array | jq ".disks[] | select(.index == $d) | .io_errors")" 0 "io_errors of healthy disk $d"
done

de_switch up
log "member 1 is up again"
failed=" ${write_failed[*]} "
mismatch=0
for ((c = 0; c < DE_CHUNKS; c++)); do
	get "$c" || fail "chunk $c unreadable after the heal"
	if [[ $failed == *" $c "* ]]; then
		want="$token-before-$c." # its write failed: not written, the old bytes stay
	else
		want="$token-during-$c."
	fi
	holds "$c" "$want" || {
		mismatch=$((mismatch + 1))
		log "chunk $c after the heal does not hold $want"
	}
done
assert_eq "$mismatch" 0 "chunks not holding their last acknowledged write after the heal"
for ((c = 0; c < DE_CHUNKS; c++)); do put "$c" "$token-after-$c." || fail "write of chunk $c after the heal"; done
dd if=/dev/null of="$dev" conv=fsync,notrunc status=none
for ((c = 0; c < DE_CHUNKS; c++)); do
	get "$c" && holds "$c" "$token-after-$c." || fail "chunk $c written after the heal reads back wrong"
done
assert_eq "$(disk_errors)" "$errors_down" "io_errors of disk 1 after the heal (no new errors)"

metric failed_chunks "${#read_failed[@]}" chunks
metric io_errors_counted "$errors_down" errors
metric wrong_data 0 chunks
ml_detach host "$dev"
