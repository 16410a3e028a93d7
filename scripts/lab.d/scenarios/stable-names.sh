# shellcheck shell=bash
# lab-desc: two array servers (virtio disks, tmpfs files) each with a partition "vol" attached at once: the first device gets /dev/multilane/vol, the second /dev/multilane/vol@<its server>, each link points at its own device (distinct data read through each), `list` names each; detaching the first removes only its link, the second keeps its name; detaching it removes the rest
# shellcheck source=../multilane.sh
. /lab/multilane.sh

ml_format
ml_partition vol 32M
ml_host h1
ml_assign h1 vol
ml_serve 7190 7198

# The second server: an array on two tmpfs files, its own partition "vol" and host "h1".
store=/dev/shm/second
mkdir -p "$store"
on_cleanup "rm -rf $store" # tmpfs pages are guest RAM: none left for the next scenario of a --batch boot
second=(--disk "$store/d0" --disk "$store/d1")
array-server format "${second[@]}" --size 48M --chunk 64K --admin-token-file "$LAB_WORK/token2" >/dev/null
array-server host create h1 --secret-file "$LAB_WORK/h1-second.key" "${second[@]}" >/dev/null
array-server partition create vol 16M "${second[@]}" >/dev/null
array-server assign h1 vol "${second[@]}" >/dev/null
addr2=127.0.0.1:7191
bg_start server2 array-server serve "${second[@]}" --listen "$addr2" --threads 1 --no-admin
wait_for "ublk-host discover --server $addr2 --host h1 --secret-file $LAB_WORK/h1-second.key >/dev/null 2>&1" 30 "the second server"

ml_attach first h1 vol --queues 1
dev1=$ML_DEV
bg_start second ublk-host attach --server "$addr2" --host h1 --secret-file "$LAB_WORK/h1-second.key" \
	--partition vol --queues 1
wait_for "grep -q ' ready' $LAB_WORK/second.log || ! bg_alive second" 60 "the second attach"
dev2=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/second.log" | head -n1)
[ -n "$dev2" ] || fail "second attach: $(tail -n 3 "$LAB_WORK/second.log")"
on_cleanup "[ ! -e $dev2 ] || ublk-host detach $dev2"
[ "$dev1" != "$dev2" ] || fail "both attaches report $dev1"

short=/dev/multilane/vol
long="/dev/multilane/vol@$addr2"
assert_eq "$(readlink "$short")" "$dev1" "$short"
assert_eq "$(readlink "$long")" "$dev2" "$long"
grep -q "$dev2 as $long ready" "$LAB_WORK/second.log" || fail "the second ready line does not name $long"
ublk-host list >"$LAB_WORK/list.log"
# the link is a tab-separated field (per-path fields may follow it)
grep -Eq "^$dev1	.*link=$short(	|\$)" "$LAB_WORK/list.log" || fail "list: $(cat "$LAB_WORK/list.log")"
grep -Eq "^$dev2	.*link=$long(	|\$)" "$LAB_WORK/list.log" || fail "list: $(cat "$LAB_WORK/list.log")"

# Each name reaches its own server's partition.
dd if=/dev/zero bs=64K count=1 status=none | tr '\0' 'A' | dd of="$short" bs=64K oflag=direct status=none
dd if=/dev/zero bs=64K count=1 status=none | tr '\0' 'B' | dd of="$long" bs=64K oflag=direct status=none
assert_eq "$(dd if="$dev1" bs=64K count=1 iflag=direct status=none | tr -d 'A' | wc -c)" 0 "$dev1 holds what was written through $short"
assert_eq "$(dd if="$dev2" bs=64K count=1 iflag=direct status=none | tr -d 'B' | wc -c)" 0 "$dev2 holds what was written through $long"

ml_detach first "$dev1"
[ ! -e "$short" ] && [ ! -L "$short" ] || fail "$short is still there after detaching $dev1"
assert_eq "$(readlink "$long")" "$dev2" "$long after the other device went (names do not move)"
ublk-host detach "$long"
wait_for "[ ! -e $dev2 ]" 30 "$dev2 to go after detach by its stable name"
wait_for "! bg_alive second" 30 "the second daemon to exit"
[ -z "$(ls -A /dev/multilane 2>/dev/null)" ] || fail "links left: $(ls -l /dev/multilane)"
log "two partitions named vol from two servers: $short -> $dev1, $long -> $dev2; each removed with its device"
