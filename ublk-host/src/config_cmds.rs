//! `ublk-host attach --config FILE (NAME | --all) [ATTACH FLAGS...]`: attaches from the
//! host configuration file ([`ublk_host::hostconfig`]).
//!
//! A partition entry becomes its `attach` command line; flags given here replace the
//! file's value of the same flag; the result goes through the ordinary `attach` parser, and
//! is what the device's state file keeps, so `recover` needs no file.
//!
//! `--all` runs one `attach --config FILE NAME` child process per entry and waits for them,
//! forwarding SIGINT/SIGTERM. One daemon process per device, not one for all: each device
//! is created, served, recovered and stopped on its own; a daemon that crashes takes one
//! device down (quiesced, to be taken over), not all of them; and the process that serves
//! a device is exactly what `multilane-host@NAME.service` supervises.

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::{bail, Context};
use ublk_host::hostconfig::{apply_overrides, HostConfig};

use crate::device_cmds;

/// The flags `--all` refuses to apply to every entry: they name one device.
const PER_DEVICE_FLAGS: [&str; 4] = ["--partition", "--id", "--server", "--host"];

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigAttach {
    /// The configuration file.
    config: PathBuf,
    /// Attach every partition entry.
    all: bool,
    /// The entry to attach.
    name: Option<String>,
    /// Attach flags (`--flag value` pairs) that override the file.
    overrides: Vec<String>,
}

/// Whether `attach` was asked to read a configuration file.
pub fn requested(args: &[String]) -> bool {
    args.get(1).is_some_and(|arg| arg == "attach") && args.iter().any(|arg| arg == "--config")
}

/// Splits the arguments after `attach`: `--config FILE`, `--all`, the entry name (the one
/// word that is not a flag's value: every other attach flag takes a value), overrides.
pub fn parse(tokens: &[String]) -> anyhow::Result<ConfigAttach> {
    let mut config = None;
    let mut all = false;
    let mut name = None;
    let mut overrides = Vec::new();
    let mut tokens = tokens.iter();
    while let Some(token) = tokens.next() {
        match token.as_str() {
            "--config" => config = Some(tokens.next().context("--config needs a file")?),
            "--all" => all = true,
            flag if flag.starts_with("--") => {
                let value = tokens
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?;
                overrides.extend([flag.to_owned(), value.clone()]);
            }
            word if name.is_none() => name = Some(word.to_owned()),
            word => bail!("unexpected argument {word:?}: name one partition entry, or --all"),
        }
    }
    let config = PathBuf::from(config.context("--config needs a file")?);
    match (all, &name) {
        (true, Some(name)) => bail!("give a partition entry name ({name}) or --all, not both"),
        (false, None) => bail!("name a partition entry of {}, or --all", config.display()),
        _ => {}
    }
    Ok(ConfigAttach {
        config,
        all,
        name,
        overrides,
    })
}

/// Runs `attach --config ...` with the arguments after `attach`.
pub fn attach(tokens: &[String]) -> anyhow::Result<()> {
    let request = parse(tokens)?;
    let config = HostConfig::load(&request.config)?;
    match &request.name {
        Some(name) => {
            let base = config
                .attach_argv(name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", request.config.display()))?;
            device_cmds::attach_with_argv(apply_overrides(&base, &request.overrides))
        }
        None => attach_all(&request, &config),
    }
}

fn attach_all(request: &ConfigAttach, config: &HostConfig) -> anyhow::Result<()> {
    if let Some(flag) = PER_DEVICE_FLAGS
        .iter()
        .find(|flag| request.overrides.iter().any(|arg| arg == *flag))
    {
        bail!("{flag} names one device: it cannot apply to --all");
    }
    let names = config.partition_names();
    if names.is_empty() {
        bail!("{} has no partition entries", request.config.display());
    }
    let program = std::env::current_exe().context("finding this program")?;
    let mut children: Vec<(String, Child)> = Vec::with_capacity(names.len());
    for name in names {
        let child = Command::new(&program)
            .arg("attach")
            .arg("--config")
            .arg(&request.config)
            .arg(&name)
            .args(&request.overrides)
            .spawn()
            .with_context(|| format!("starting the daemon of {name}"))?;
        children.push((name, child));
    }
    forward_signals(children.iter().map(|(_, child)| child.id()).collect())?;
    let mut failed = Vec::new();
    for (name, mut child) in children {
        let status = child
            .wait()
            .with_context(|| format!("waiting for {name}"))?;
        if !status.success() {
            failed.push(format!("{name} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!("daemons that failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Blocks SIGINT and SIGTERM here and passes each one on to the children as SIGTERM, so
/// they stop their devices and exit; `attach --all` returns when they have.
fn forward_signals(pids: Vec<u32>) -> anyhow::Result<()> {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset takes valid signals.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    };
    // SAFETY: `set` is initialised; a null old-mask pointer is allowed.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        bail!(
            "blocking signals: {}",
            std::io::Error::from_raw_os_error(blocked)
        );
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a live out-parameter.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            for &pid in &pids {
                let Ok(pid) = libc::pid_t::try_from(pid) else {
                    continue;
                };
                // SAFETY: kill takes no pointers; the pid is our own child's.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_lines_split_into_file_name_and_overrides() {
        let parsed = parse(&tokens("--config /etc/h.toml vol0 --lanes-per-queue 4")).unwrap();
        assert_eq!(
            parsed,
            ConfigAttach {
                config: "/etc/h.toml".into(),
                all: false,
                name: Some("vol0".into()),
                overrides: tokens("--lanes-per-queue 4"),
            }
        );
        let parsed = parse(&tokens("--split 0 --all --config h.toml")).unwrap();
        assert!(parsed.all && parsed.name.is_none());
        assert_eq!(parsed.overrides, tokens("--split 0"));
        assert!(requested(&tokens("ublk-host attach --config f v")));
        assert!(!requested(&tokens("ublk-host attach --server s")));
    }

    #[test]
    fn ambiguous_command_lines_are_refused() {
        for bad in [
            "--config h.toml",
            "--config h.toml --all vol0",
            "--config h.toml vol0 vol1",
            "--config",
            "vol0 --queues",
            "vol0",
        ] {
            assert!(parse(&tokens(bad)).is_err(), "{bad}");
        }
    }
}
