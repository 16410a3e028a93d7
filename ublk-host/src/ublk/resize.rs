//! Live resize: a thread follows the partition list on a control connection (the server
//! pushes every change) and, when the served partition grows, grows the device in place
//! with `UPDATE_SIZE`, where the driver offers it (`UBLK_F_UPDATE_SIZE` in its
//! `GET_FEATURES` answer, 6.16+). A filesystem on the device can then grow online.
//! Elsewhere it says once, clearly, that this kernel cannot.

use std::sync::atomic::Ordering;

use libublk::ctrl::UblkCtrl;
use wire::PartitionInfo;

use crate::client::discovery::{Watch, DEFAULT_KEEPALIVE};
use crate::client::EngineConfig;
use crate::error::{HostError, Result};
use crate::ublk::inspect::ctrl_id;

/// Whether the loaded ublk driver can resize a live device.
pub fn driver_can_resize() -> bool {
    let update_size = u64::from(libublk::sys::UBLK_F_UPDATE_SIZE);
    UblkCtrl::get_features().is_some_and(|features| features & update_size != 0)
}

/// Starts the thread that follows `partition` for device `dev_id`; it lives as long as
/// the process (a daemon serves one device) or until the server refuses the watch.
pub(crate) fn spawn_watch(
    dev_id: u32,
    config: &EngineConfig,
    partition: &PartitionInfo,
) -> Result<()> {
    let config = config.clone();
    let partition = partition.clone();
    std::thread::Builder::new()
        .name(format!("resize{dev_id}"))
        .spawn(move || {
            if let Err(error) = follow(dev_id, &config, &partition) {
                log::warn!("/dev/ublkb{dev_id}: live resize stops following the server: {error}");
            }
        })
        .map(drop)
        .map_err(|e| HostError::io("starting the resize thread", e))
}

fn follow(dev_id: u32, config: &EngineConfig, partition: &PartitionInfo) -> Result<()> {
    let can_resize = driver_can_resize();
    let mut watch = Watch::open(&config.client, DEFAULT_KEEPALIVE)?;
    let mut size = partition.size;
    loop {
        let list = watch.next_list()?;
        let Some(now) = list.partitions.iter().find(|p| p.id == partition.id) else {
            continue;
        };
        match now.size {
            new if new > size && can_resize => {
                // The engines accept I/O up to the new end before the device shows it.
                config.live_size.fetch_max(new, Ordering::Relaxed);
                UblkCtrl::new_simple(ctrl_id(dev_id)?)?.update_size(new)?;
                log::info!(
                    "/dev/ublkb{dev_id}: partition {} grew: {size} -> {new} bytes (UPDATE_SIZE)",
                    now.name
                );
                size = new;
            }
            new if new > size => {
                log::warn!(
                    "/dev/ublkb{dev_id}: partition {} grew to {new} bytes; live resize is not \
                     supported by this kernel (its ublk driver lacks UPDATE_SIZE): detach and \
                     attach again to see the new size",
                    now.name
                );
                size = new;
            }
            new if new < size => log::warn!(
                "/dev/ublkb{dev_id}: partition {} shrank to {new} bytes on the server; the \
                 device keeps {size}",
                now.name
            ),
            _ => {}
        }
    }
}
