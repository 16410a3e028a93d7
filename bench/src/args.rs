//! The command line.

use anyhow::{bail, Context, Result};
use argh::FromArgs;
use std::time::Duration;

use ublk_host::client::config::{
    parse_size, read_secret_file, DEFAULT_DEAD_AFTER, DEFAULT_POLL, DEFAULT_WAIT_BOUND,
};
use ublk_host::client::{ClientConfig, EngineConfig};

use crate::workload::{Mode, Plan};

/// Load generator over the Multilane host engine (the code the ublk device runs).
#[derive(FromArgs, Debug)]
pub struct Args {
    /// array server address, host:port
    #[argh(option)]
    pub server: String,
    /// this host's name on the server
    #[argh(option)]
    pub host: String,
    /// file holding the host secret (64 hex digits)
    #[argh(option)]
    pub secret_file: String,
    /// partition name
    #[argh(option)]
    pub partition: String,
    /// read, write, randread, randwrite, randrw (mixed; see --rwmixread)
    #[argh(option, default = "String::from(\"randread\")")]
    pub rw: String,
    /// percentage of reads in randrw (default 70)
    #[argh(option, default = "70")]
    pub rwmixread: u8,
    /// block size, e.g. 4k, 128k, 1m (default 4k)
    #[argh(option, default = "String::from(\"4k\")")]
    pub bs: String,
    /// operations in flight per queue (default 32)
    #[argh(option, default = "32")]
    pub iodepth: u32,
    /// queue threads, each with its own io_uring and lanes (default 1)
    #[argh(option, default = "1")]
    pub queues: u16,
    /// lanes (TCP connections) per queue (default 1)
    #[argh(option, default = "1")]
    pub lanes: u16,
    /// split requests above this size across the queue's lanes, e.g. 128k; 0 = never
    #[argh(option, default = "String::from(\"0\")")]
    pub split: String,
    /// seconds to run (default 10)
    #[argh(option, default = "10.0")]
    pub runtime: f64,
    /// stop each slot after this many operations (default: no limit)
    #[argh(option)]
    pub ops: Option<u64>,
    /// bytes of the partition to use, from offset 0 (default: all of it)
    #[argh(option)]
    pub size: Option<String>,
    /// write verifiable data, check every read, and read back everything written
    #[argh(switch)]
    pub verify: bool,
    /// print a JSON report instead of text
    #[argh(switch)]
    pub json: bool,
    /// seconds I/O waits for a lost server before failing with EIO (default 120)
    #[argh(option, default = "DEFAULT_WAIT_BOUND.as_secs()")]
    pub wait_bound: u64,
    /// fail I/O after this many seconds without the server instead (default off)
    #[argh(option)]
    pub fail_fast: Option<u64>,
    /// seconds of silence, with I/O outstanding, after which a lane is dead (default 5)
    #[argh(option, default = "DEFAULT_DEAD_AFTER.as_secs()")]
    pub dead_after: u64,
    /// microseconds each queue thread polls for completions before it sleeps (default
    /// 50; 0 sleeps at once)
    #[argh(option, default = "DEFAULT_POLL.as_micros() as u64")]
    pub poll_us: u64,
    /// register the slots' buffers as fixed buffers of each queue's io_uring and run the
    /// lanes in zero-copy mode: the socket path a ublk device takes with zero copy (7.x
    /// kernels), measurable on any kernel
    #[argh(switch)]
    pub fixed_buffers: bool,
}

impl Args {
    /// The workload described by the arguments (before it is fitted to the partition).
    pub fn plan(&self) -> Result<Plan> {
        let mode = Mode::parse(&self.rw, self.rwmixread)?;
        let block_size = parse_size(&self.bs).context("--bs")?;
        if block_size == 0 || block_size > u64::from(u32::MAX) {
            bail!("--bs must be between 1 byte and 4 GiB");
        }
        if self.iodepth == 0 || self.queues == 0 || self.lanes == 0 {
            bail!("--iodepth, --queues and --lanes must be at least 1");
        }
        if self.runtime.is_nan() || self.runtime <= 0.0 {
            bail!("--runtime must be positive");
        }
        let split = parse_size(&self.split).context("--split")?;
        let size = self
            .size
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("--size")?;
        Ok(Plan {
            mode,
            block_size: block_size as u32,
            iodepth: self.iodepth,
            queues: self.queues,
            lanes: self.lanes,
            split: u32::try_from(split).context("--split is too large")?,
            runtime_secs: self.runtime,
            ops_per_slot: self.ops,
            region: size.unwrap_or(u64::MAX),
            verify: self.verify,
            fixed_buffers: self.fixed_buffers,
        })
    }

    /// Where and who: the server, the host and its secret, and the dead-lane bound.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let secret = read_secret_file(&self.secret_file)?;
        if self.dead_after == 0 {
            bail!("--dead-after must be at least 1 second");
        }
        let mut config = ClientConfig::new(&self.server, &self.host, secret);
        config.dead_after = Duration::from_secs(self.dead_after);
        Ok(config)
    }

    /// The engine settings: lanes, split, and the failure policy.
    pub fn engine_config(&self, client: ClientConfig, plan: &Plan) -> EngineConfig {
        let mut config = EngineConfig::new(client);
        config.lanes_per_queue = self.lanes;
        config.split = plan.split;
        config.wait_bound = Duration::from_secs(self.wait_bound);
        config.fail_fast = self.fail_fast.map(Duration::from_secs);
        config.poll = Duration::from_micros(self.poll_us);
        config.zero_copy = plan.fixed_buffers;
        config
    }
}
