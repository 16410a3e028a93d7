//! `array-server ctl`: the admin API from the command line, for scripts and the lab
//! (`ctl sessions --host H --partition P --count` prints how many data lanes H has on P).

use std::path::PathBuf;

use argh::FromArgs;
use serde_json::{json, Value};

use super::client::{AdminClient, Answer};
use super::token::AdminToken;
use crate::error::{Error, Result};

/// Manage a running array server through its admin API.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ctl")]
pub struct CtlCommand {
    /// admin service URL (default http://127.0.0.1:7780)
    #[argh(option, default = "String::from(\"http://127.0.0.1:7780\")")]
    admin: String,
    /// file holding the admin token
    #[argh(option)]
    token_file: PathBuf,
    /// print the API's JSON answer as it is
    #[argh(switch)]
    json: bool,
    #[argh(subcommand)]
    action: CtlAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum CtlAction {
    Array(ArrayArgs),
    Partition(PartitionArgs),
    Host(HostArgs),
    Assign(AssignArgs),
    Unassign(UnassignArgs),
    Sessions(SessionsArgs),
}

/// Show capacity, free space and disks.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "array")]
struct ArrayArgs {}

/// Partitions: list, create NAME SIZE [--shared], grow NAME SIZE, delete NAME [--force].
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "partition")]
struct PartitionArgs {
    /// list, create, grow or delete
    #[argh(positional)]
    verb: String,
    /// NAME, then SIZE for create and grow (bytes or units: 64M, 1.5G)
    #[argh(positional)]
    operands: Vec<String>,
    /// create a shared partition (several hosts)
    #[argh(switch)]
    shared: bool,
    /// delete even if assigned or attached (revokes and closes lanes)
    #[argh(switch)]
    force: bool,
}

/// Hosts: list, create NAME, rotate NAME, delete NAME [--force].
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "host")]
struct HostArgs {
    /// list, create, rotate or delete
    #[argh(positional)]
    verb: String,
    /// host name
    #[argh(positional)]
    name: Option<String>,
    /// write the new secret into this file (mode 0600) instead of printing it
    #[argh(option)]
    secret_file: Option<PathBuf>,
    /// delete even if it holds partitions
    #[argh(switch)]
    force: bool,
}

/// Give HOST access to PARTITION (or change its access).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "assign")]
struct AssignArgs {
    /// host name
    #[argh(positional)]
    host: String,
    /// partition name
    #[argh(positional)]
    partition: String,
    /// read-only access (default read-write)
    #[argh(switch)]
    read_only: bool,
}

/// Revoke HOST's access to PARTITION (its lanes close).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "unassign")]
struct UnassignArgs {
    /// host name
    #[argh(positional)]
    host: String,
    /// partition name
    #[argh(positional)]
    partition: String,
}

/// Live sessions, optionally filtered; --count prints only the number of data lanes.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sessions")]
struct SessionsArgs {
    /// only this host's sessions
    #[argh(option)]
    host: Option<String>,
    /// only lanes on this partition
    #[argh(option)]
    partition: Option<String>,
    /// print the number of matching data lanes
    #[argh(switch)]
    count: bool,
}

/// Runs the command; prints what the server answered.
pub fn run(command: CtlCommand) -> Result<()> {
    let token = AdminToken::load(&command.token_file)?;
    let client = AdminClient::new(&command.admin, Some(token.expose().to_owned()))
        .map_err(|e| Error::io(format!("admin URL {}", command.admin), e))?;
    let call = |method: &str, path: &str, body: Option<Value>| -> Result<Value> {
        let answer = client
            .call(method, path, body.as_ref())
            .map_err(|e| Error::io(format!("{method} {}{path}", command.admin), e))?;
        checked(answer)
    };
    let answer = match &command.action {
        CtlAction::Array(_) => call("GET", "/api/array", None)?,
        CtlAction::Partition(args) => partition(&call, args)?,
        CtlAction::Host(args) => return host(&call, args, command.json),
        CtlAction::Assign(args) => {
            let access = if args.read_only {
                "read-only"
            } else {
                "read-write"
            };
            let path = format!(
                "/api/assignments/{}/{}",
                in_path(&args.host, "host")?,
                in_path(&args.partition, "partition")?
            );
            call("PUT", &path, Some(json!({ "access": access })))?
        }
        CtlAction::Unassign(args) => {
            let path = format!(
                "/api/assignments/{}/{}",
                in_path(&args.host, "host")?,
                in_path(&args.partition, "partition")?
            );
            call("DELETE", &path, None)?
        }
        CtlAction::Sessions(args) => {
            let all = call("GET", "/api/sessions", None)?;
            let chosen = filter_sessions(&all, args);
            if args.count {
                let lanes = chosen.iter().filter(|s| s["kind"] == "data").count();
                println!("{lanes}");
                return Ok(());
            }
            json!({ "sessions": chosen })
        }
    };
    print(&answer, command.json);
    Ok(())
}

type Call<'a> = dyn Fn(&str, &str, Option<Value>) -> Result<Value> + 'a;

fn checked(answer: Answer) -> Result<Value> {
    if answer.status < 300 {
        return Ok(answer.json());
    }
    Err(Error::io(
        format!("the server answered {}", answer.status),
        std::io::Error::other(answer.error_message()),
    ))
}

fn need<'a>(value: Option<&'a String>, what: &str) -> Result<&'a str> {
    value
        .map(String::as_str)
        .ok_or_else(|| Error::io("ctl", std::io::Error::other(format!("{what} is missing"))))
}

/// `name` if it may stand in a URL path as it is: a host or partition name of the
/// server's own rule (letters, digits, `.`, `_`, `-`). Anything else (`?force=true`, `/`,
/// a line break) would change the request, not name a thing.
fn in_path<'a>(name: &'a str, what: &str) -> Result<&'a str> {
    if crate::array::catalog::acceptable_name(name) {
        return Ok(name);
    }
    Err(Error::io(
        "ctl",
        std::io::Error::other(format!(
            "{what} {name:?} is not a valid name (1 to 64 of A-Z a-z 0-9 . _ -, not starting \
             with -)"
        )),
    ))
}

fn unknown_verb(verb: &str, known: &str) -> Error {
    Error::io(
        "ctl",
        std::io::Error::other(format!("unknown action {verb:?} (use {known})")),
    )
}

fn partition(call: &Call<'_>, args: &PartitionArgs) -> Result<Value> {
    let name = || {
        in_path(
            need(args.operands.first(), "the partition name")?,
            "partition",
        )
    };
    let size = || need(args.operands.get(1), "the size");
    match args.verb.as_str() {
        "list" => call("GET", "/api/partitions", None),
        "create" => {
            let body = json!({ "name": name()?, "size": size()?, "shared": args.shared });
            call("POST", "/api/partitions", Some(body))
        }
        "grow" => {
            let path = format!("/api/partitions/{}", name()?);
            call("PATCH", &path, Some(json!({ "size": size()? })))
        }
        "delete" => {
            let force = if args.force { "?force=true" } else { "" };
            call(
                "DELETE",
                &format!("/api/partitions/{}{force}", name()?),
                None,
            )
        }
        other => Err(unknown_verb(other, "list, create, grow, delete")),
    }
}

fn host(call: &Call<'_>, args: &HostArgs, raw: bool) -> Result<()> {
    let name = || in_path(need(args.name.as_ref(), "the host name")?, "host");
    let answer = match args.verb.as_str() {
        "list" => call("GET", "/api/hosts", None)?,
        "create" => call("POST", "/api/hosts", Some(json!({ "name": name()? })))?,
        "rotate" => call(
            "POST",
            &format!("/api/hosts/{}/rotate-secret", name()?),
            None,
        )?,
        "delete" => {
            let force = if args.force { "?force=true" } else { "" };
            call("DELETE", &format!("/api/hosts/{}{force}", name()?), None)?
        }
        other => return Err(unknown_verb(other, "list, create, rotate, delete")),
    };
    match (answer["secret"].as_str(), &args.secret_file) {
        (Some(secret), Some(path)) => {
            super::token::write_private(path, secret)?;
            println!("secret of {} written to {}", name()?, path.display());
        }
        _ => print(&answer, raw),
    }
    Ok(())
}

fn filter_sessions(all: &Value, args: &SessionsArgs) -> Vec<Value> {
    let matches = |session: &Value, field: &str, wanted: &Option<String>| match wanted {
        None => true,
        Some(w) => session[field].as_str() == Some(w.as_str()),
    };
    all["sessions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|s| matches(s, "host", &args.host) && matches(s, "partition", &args.partition))
        .cloned()
        .collect()
}

fn print(answer: &Value, raw: bool) {
    if raw {
        println!("{answer}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_go_into_paths() {
        assert_eq!(in_path("vol0", "partition").unwrap(), "vol0");
        assert_eq!(in_path("web-1.a_b", "host").unwrap(), "web-1.a_b");
        for smuggled in [
            "victim?force=true",
            "a/b",
            "..",
            "x\r\nX-Y: z",
            "a b",
            "-x",
            "",
        ] {
            let error = in_path(smuggled, "partition").unwrap_err().to_string();
            assert!(error.contains("not a valid name"), "{smuggled:?}: {error}");
        }
    }
}
