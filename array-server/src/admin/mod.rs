//! The admin service: a JSON API and a web page to manage the array from a browser,
//! and Prometheus `/metrics`. Control plane only: it runs on its own threads, apart from
//! the tokio-uring data path, and changes the array through the same [`Array`] handle
//! the CLI uses, so every change reaches connected hosts through discovery.
//!
//! - [`token`]: the admin token (a 0600 file, constant-time comparison).
//! - [`cli`]: the admin parts of `array-server format` and `serve` (token file, start).
//! - [`ctl`]: `array-server ctl`, the API from the command line.
//! - [`client`]: a minimal blocking client of the API (`array-server ctl`, tests).
//! - [`http`]: the HTTP server (hyper), its limits, authentication, request/response
//!   plumbing.
//! - [`routes`]: the API routes and the error → status mapping.
//! - [`json`]: request bodies and the API's JSON shapes.
//! - [`live`]: the read-only view the network server exports ([`LiveSessions`], defined
//!   in `net`), a stand-in without one ([`NoSessions`]), the sessions JSON.
//! - [`history`]: throughput, IOPS and latency per partition and host over the last
//!   15 minutes, and member disk errors, sampled by a thread into bounded rings.
//! - [`metrics`]: the Prometheus text format.
//! - [`page`]: the page, HTML/CSS/JS compiled in with `include_str!`.
//!
//! The API is documented in `docs/admin-api.md`.

pub mod cli;
pub mod client;
pub mod ctl;
pub mod history;
pub mod http;
pub mod json;
pub mod live;
pub mod metrics;
pub mod page;
pub mod routes;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::array::Array;
use crate::error::Result;
pub use http::Limits as AdminLimits;
pub use live::{LiveSessions, NoSessions};
pub use token::AdminToken;

/// Default address of the admin service: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7780";

/// [`DEFAULT_ADDR`] as an address.
pub fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
}

/// Port of [`DEFAULT_ADDR`].
pub const DEFAULT_PORT: u16 = 7780;

/// How to run the admin service.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen (port 0 picks a free port).
    pub addr: SocketAddr,
    /// The token every request must carry.
    pub token: AdminToken,
    /// Deadlines and the connection cap.
    pub limits: AdminLimits,
}

/// A running admin service; dropping it stops it.
#[derive(Debug)]
pub struct AdminServer {
    service: http::HttpService,
    /// Stops (and joins) the history sampler when the server is dropped.
    _sampler: history::Sampler,
}

impl AdminServer {
    /// Starts serving the API, the page and `/metrics` for `array`.
    pub fn start(
        config: AdminConfig,
        array: Arc<Array>,
        sessions: Arc<dyn LiveSessions>,
    ) -> Result<AdminServer> {
        let disks: Vec<_> = array.disks().iter().map(|d| d.view()).collect();
        let history = Arc::new(history::History::new(&sessions.traffic(), &disks));
        let sampler = history::Sampler::start(history.clone(), sessions.clone(), array.clone())?;
        let context = routes::Context {
            array,
            sessions,
            history,
        };
        let handler: http::Handler = Arc::new(move |request| routes::route(&context, request));
        let service = http::HttpService::start(config.addr, config.token, config.limits, handler)?;
        log::info!("admin page and API on http://{}/", service.local_addr());
        Ok(AdminServer {
            service,
            _sampler: sampler,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }
}
