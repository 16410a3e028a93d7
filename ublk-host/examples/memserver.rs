//! `memserver`: the in-memory fake array server of the tests as a binary, so the ublk
//! device can be tried on a real kernel (the VM lab) independently of array-server.
//!
//! `memserver --listen 127.0.0.1:7700 --size 67108864 --secret-file PATH` serves one
//! partition `vol0` (block 512, chunk 64 KiB) to any host that knows the secret.

#[path = "../tests/common/mod.rs"]
mod common;

use argh::FromArgs;
use wire::Access;

/// In-memory Multilane test server (one partition, vol0).
#[derive(FromArgs)]
struct Args {
    /// address to listen on
    #[argh(option, default = "String::from(\"127.0.0.1:7700\")")]
    listen: String,
    /// partition size in bytes
    #[argh(option, default = "64 << 20")]
    size: u64,
    /// file holding the host secret (64 hex digits)
    #[argh(option)]
    secret_file: String,
}

fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    let mut options = common::Options::new(common::partition(args.size, Access::ReadWrite));
    options.secret = ublk_host::client::config::read_secret_file(&args.secret_file)?;
    let server = common::FakeServer::start_on(&args.listen, options);
    println!("memserver: listening on {}", server.addr);
    loop {
        std::thread::park();
    }
}
