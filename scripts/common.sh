# Shared helpers for the project's scripts (sourced, not run).
# Each script installs what it needs itself, so it works on a fresh Debian machine.

MULTILANE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export MULTILANE_ROOT

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_for_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT (dies after
# SECONDS, default 20).
wait_for_port() {
    local port=$1 secs=${2:-20}
    local deadline=$((SECONDS + secs))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "nothing listens on port $port after $secs s"
        sleep 0.1
    done
}

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

# ensure_rust: the toolchain and the C pieces libublk's bindgen needs.
ensure_rust() {
    command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] ||
        die "no Rust toolchain: install rustup (https://rustup.rs) and run again"
    export PATH="$HOME/.cargo/bin:$PATH"
    apt_install libclang-dev pkg-config
}

# build_release: the binaries the lab and the demo run.
build_release() {
    say "building release binaries"
    (cd "$MULTILANE_ROOT" && cargo build --release --locked -p array-server -p ublk-host -p bench)
}
