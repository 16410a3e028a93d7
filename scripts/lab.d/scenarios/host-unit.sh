# shellcheck shell=bash
# lab-desc: multilane-host@.service's own command lines (the guest has no systemd): ExecStartPre and ExecStart (attach --config /etc/multilane/host.toml vol) in the background; /dev/multilane/vol links the device and `list --json` shows it; ext4 mounted through the stable name and written; kill -9 of the daemon; ExecStart again (what Restart=always does) takes the device over; ExecReload (kill -USR1 $MAINPID: the upgrade handover) makes the daemon hand over and exit 0, ExecStart again takes the device over, the filesystem still mounted; data and fsck intact; umount, then ExecStop (detach --pid $MAINPID) removes device and link and the daemon exits 0; `attach --config --all` serves both entries and stops both on SIGTERM; no libublk chatter in any output
# shellcheck source=../multilane.sh
. /lab/multilane.sh

unit=/lab/systemd/multilane-host@.service
[ -f "$unit" ] || fail "$unit is missing from the guest"
ml_format
ml_partition vol 64M
ml_partition vol2 32M
ml_host h1
ml_assign h1 vol
ml_assign h1 vol2
ml_serve 7170 7196

mkdir -p /etc/multilane
cat >/etc/multilane/host.toml <<TOML
host = "h1"
secret_file = "$LAB_WORK/h1.key"
[servers.lab]
address = "$ML_ADDR"
[defaults]
lanes_per_queue = 2
[partitions.vol]
queues = 2
[partitions.vol2]
queues = 1
TOML
on_cleanup "rm -rf /etc/multilane"

# The unit's lines for instance "vol" (%i), as systemd would run them.
unit_line() { sed -n "s/^$1=//p" "$unit" | sed 's/%i/vol/g'; }
exec_pre=$(unit_line ExecStartPre)
exec_start=$(unit_line ExecStart)
exec_stop=$(unit_line ExecStop)
exec_reload=$(unit_line ExecReload)
if [ -z "$exec_start" ] || [ -z "$exec_stop" ] || [ -z "$exec_reload" ]; then
	fail "the unit has no ExecStart/ExecStop/ExecReload"
fi
log "ExecStartPre=$exec_pre"
log "ExecStart=$exec_start"
log "ExecReload=$exec_reload"
log "ExecStop=$exec_stop"
# A leading '-' means systemd ignores the command's failure.
${exec_pre#-} || log "ExecStartPre failed (ignored, as its '-' says)"

start_unit() { # NAME: ExecStart in the background, wait for its ready line
	# shellcheck disable=SC2086 # the unit's command line, split as systemd splits it
	bg_start "$1" $exec_start
	wait_for "grep -q ' ready' $LAB_WORK/$1.log || ! bg_alive $1" 60 "ExecStart ($1) to report ready"
	grep -q ' ready' "$LAB_WORK/$1.log" || fail "ExecStart exited: $(tail -n 3 "$LAB_WORK/$1.log")"
	log "$(grep ' ready' "$LAB_WORK/$1.log")"
}

start_unit unit1
dev=$(grep -o '/dev/ublkb[0-9]*' "$LAB_WORK/unit1.log" | head -n1)
id=${dev#/dev/ublkb}
on_cleanup "[ ! -e /sys/class/ublk-char/ublkc$id ] || ublk-host detach $id"
link=/dev/multilane/vol
grep -q "$dev as $link ready" "$LAB_WORK/unit1.log" || fail "the ready line does not name $link"
assert_eq "$(readlink "$link")" "$dev" "$link"
listed=$(ublk-host list --json | jq -r --argjson id "$id" '.[] | select(.id == $id) | "\(.state) \(.link) \(.target.partition)"')
assert_eq "$listed" "live $link vol" "list --json (state link partition)"
ublk-host list >"$LAB_WORK/list.log" 2>&1
grep -q "link=$link" "$LAB_WORK/list.log" || fail "list does not show $link: $(cat "$LAB_WORK/list.log")"

mnt=$LAB_WORK/mnt
src=$LAB_WORK/src
mkdir -p "$mnt" "$src"
dmesg -c >/dev/null
mkfs.ext4 -q -F "$link"
mount "$link" "$mnt"
on_cleanup "! grep -q ' $mnt ' /proc/mounts || umount $mnt"
for i in 1 2 3 4; do
	dd if=/dev/urandom of="$src/before$i" bs=1M count=2 status=none
	dd if="$src/before$i" of="$mnt/before$i" bs=1M conv=fsync status=none
done

kill -KILL "$(bg_pid unit1)"
wait_for "! bg_alive unit1" 10 "the killed daemon to go"
assert_eq "$(readlink "$link")" "$dev" "$link while the device waits for a new daemon"
# Restart=always: systemd runs ExecStart again.
start_unit unit2
grep -q "$dev as $link ready (recovered)" "$LAB_WORK/unit2.log" || fail "the restarted ExecStart did not take $dev over"
assert_eq "$(readlink "$link")" "$dev" "$link after the takeover"
for i in 1 2; do
	dd if=/dev/urandom of="$src/after$i" bs=1M count=2 status=none
	dd if="$src/after$i" of="$mnt/after$i" bs=1M conv=fsync status=none
done

# systemctl reload (the daemon upgrade): ExecReload with $MAINPID; the daemon hands the
# device over and exits 0 without removing it; Restart=always runs ExecStart again, which
# takes the device over, the filesystem still mounted.
reload_line=${exec_reload//\$MAINPID/$(bg_pid unit2)}
$reload_line || fail "ExecReload failed"
wait_for "! bg_alive unit2" 30 "the daemon to hand over and exit after ExecReload"
bg_stop unit2 || fail "the daemon exited nonzero after ExecReload: $(tail -n 3 "$LAB_WORK/unit2.log")"
grep -q 'handed over' "$LAB_WORK/unit2.log" || fail "the daemon did not hand over: $(tail -n 3 "$LAB_WORK/unit2.log")"
[ -e "$dev" ] || fail "$dev went away on ExecReload"
start_unit unit3
grep -q "$dev as $link ready (recovered)" "$LAB_WORK/unit3.log" || fail "ExecStart after the reload did not take $dev over"
for i in 3 4; do
	dd if=/dev/urandom of="$src/after$i" bs=1M count=2 status=none
	dd if="$src/after$i" of="$mnt/after$i" bs=1M conv=fsync status=none
done
(cd "$src" && sha256sum -- *) >"$LAB_WORK/files.sha256"
(cd "$mnt" && sha256sum -c --quiet "$LAB_WORK/files.sha256") || fail "checksums differ across the daemon crash and reload"
umount "$mnt"
e2fsck -fn "$link" >"$LAB_WORK/fsck.log" 2>&1 || { cat "$LAB_WORK/fsck.log"; fail "e2fsck -fn reports problems"; }
if dmesg | grep -iE 'EXT4-fs (error|warning)|I/O error|Buffer I/O'; then
	fail "the kernel logged filesystem or I/O errors across the daemon crash and reload"
fi

# systemctl stop: ExecStop with $MAINPID, then the main process must exit on its own.
mainpid=$(bg_pid unit3)
stop_line=${exec_stop//\$MAINPID/$mainpid}
$stop_line >"$LAB_WORK/stop.log" 2>&1 || fail "ExecStop failed: $(cat "$LAB_WORK/stop.log")"
wait_for "[ ! -e $dev ]" 30 "$dev to go after ExecStop"
wait_for "! bg_alive unit3" 30 "the daemon to exit after ExecStop"
bg_stop unit3 || fail "the daemon exited nonzero after ExecStop"
[ ! -e "$link" ] || fail "$link is still there after ExecStop"
log "ExecStop removed $dev and $link; the daemon exited 0"

# attach --all: one daemon per entry; SIGTERM to it stops every device.
bg_start all ublk-host attach --config /etc/multilane/host.toml --all
wait_for "[ \$(grep -c ' ready' $LAB_WORK/all.log) -eq 2 ] || ! bg_alive all" 60 "attach --all to bring up both entries"
[ "$(grep -c ' ready' "$LAB_WORK/all.log")" = 2 ] || fail "attach --all: $(tail -n 3 "$LAB_WORK/all.log")"
for name in vol vol2; do
	[ -b "$(readlink -f /dev/multilane/$name)" ] || fail "/dev/multilane/$name is not a block device link"
done
bg_stop all || fail "attach --all exited nonzero after SIGTERM: $(tail -n 3 "$LAB_WORK/all.log")"
wait_for "[ ! -e /dev/multilane/vol ] && [ ! -e /dev/multilane/vol2 ]" 30 "both stable names to go"
assert_eq "$(ublk-host list --json | jq length)" 0 "devices left after attach --all stopped"

# Our own messages only: nothing from libublk's info-level logging.
if grep -h 'ctrl: \|libublk' "$LAB_WORK"/unit*.log "$LAB_WORK"/{all,stop,list}.log; then
	fail "libublk log lines leaked into ublk-host's output"
fi
log "unit lines: start, kill -9, restart-takeover, reload-handover-takeover, stop; stable name followed the device; --all ok"
