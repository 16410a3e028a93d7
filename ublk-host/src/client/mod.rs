//! The request engine and everything it stands on: connections, the handshake, discovery,
//! lanes, splitting, reconnection. No kernel device needed.

pub mod config;
pub mod connect;
pub mod discovery;
pub mod engine;
pub mod path_stats;
pub mod paths;
pub mod poll_budget;
pub mod uring;

pub mod durability;
pub mod ratelog;

mod lane;
mod lane_core;
mod receive;
mod reconnect;
mod request_run;
mod slot;
mod split;
mod transfer;

pub use config::{ClientConfig, EngineConfig};
pub use discovery::{Discovery, PartitionList};
pub use durability::Durability;
pub use engine::{run_queue_thread, BlockIo, LanePath, QueueEngine};
pub use lane_core::LaneStats;
pub use path_stats::{PathSnapshot, PathStats};
pub use paths::PathPolicy;
pub use slot::BufRef;
