//! The API's routes: method and path to handler, and the crate's errors to HTTP statuses.

use std::sync::Arc;

use serde_json::{json, Value};

use super::history::History;
use super::http::{ApiRequest, ApiResponse};
use super::json::{self, BadRequest};
use super::live::{LiveSessions, SessionKind};
use super::{metrics, page};
use crate::array::Array;
use crate::error::Error;

/// What every route works on.
#[derive(Clone)]
pub struct Context {
    /// The array's management handle.
    pub array: Arc<Array>,
    /// The server's live sessions.
    pub sessions: Arc<dyn LiveSessions>,
    /// The last 15 minutes of traffic and disk errors.
    pub history: Arc<History>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("array", &self.array.id())
            .finish()
    }
}

/// A handler's outcome: a response, or an error to be mapped to a status.
type Outcome = Result<ApiResponse, RouteError>;

/// Why a request failed.
#[derive(Debug)]
pub enum RouteError {
    /// The request itself is wrong (400).
    Bad(BadRequest),
    /// The array refused or failed.
    Array(Error),
    /// A conflict the admin layer found itself (409).
    Conflict(String),
    /// No such route or page (404).
    NotFound(String),
    /// The route exists, but not with this method (405).
    MethodNotAllowed(String),
}

impl From<BadRequest> for RouteError {
    fn from(e: BadRequest) -> Self {
        RouteError::Bad(e)
    }
}

impl From<Error> for RouteError {
    fn from(e: Error) -> Self {
        RouteError::Array(e)
    }
}

/// Answers one authenticated request.
pub fn route(ctx: &Context, request: &ApiRequest) -> ApiResponse {
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    let method = request.method.as_str();
    let outcome = match (method, segments.as_slice()) {
        ("GET", []) => Ok(page::index()),
        ("GET", ["assets", name]) => page::asset(name).ok_or_else(not_found),
        ("GET", ["metrics"]) => Ok(metrics::render(ctx)),
        (_, ["api", rest @ ..]) => api(ctx, request, method, rest),
        _ => Err(not_found()),
    };
    outcome.unwrap_or_else(|e| error_response(&e))
}

fn api(ctx: &Context, request: &ApiRequest, method: &str, path: &[&str]) -> Outcome {
    let force = || {
        request
            .query
            .get("force")
            .is_some_and(|v| v == "true" || v == "1")
    };
    let body = || json::object(&request.body);
    match (method, path) {
        ("GET", ["array"]) => ok(json::array(&ctx.array.info())),
        ("GET", ["partitions"]) => ok(list_partitions(ctx)),
        ("POST", ["partitions"]) => create_partition(ctx, &body()?),
        ("GET", ["partitions", name]) => ok(partition_json(ctx, &ctx.array.partition(name)?)),
        ("PATCH", ["partitions", name]) => grow_partition(ctx, name, &body()?),
        ("DELETE", ["partitions", name]) => delete_partition(ctx, name, force()),
        ("GET", ["hosts"]) => ok(list_hosts(ctx)),
        ("POST", ["hosts"]) => create_host(ctx, &body()?),
        ("GET", ["hosts", name]) => host_json(ctx, name).map(|v| ApiResponse::json(200, &v)),
        ("DELETE", ["hosts", name]) => delete_host(ctx, name, force()),
        ("POST", ["hosts", name, "rotate-secret"]) => {
            ok(json::secret(&ctx.array.rotate_secret(name)?))
        }
        ("GET", ["assignments"]) => ok(list_assignments(ctx)),
        ("PUT", ["assignments", host, partition]) => assign(ctx, host, partition, &body()?),
        ("DELETE", ["assignments", host, partition]) => {
            ctx.array.unassign(host, partition)?;
            ok(json!({ "host": host, "partition": partition, "revoked": true }))
        }
        ("GET", ["sessions"]) => ok(super::live::sessions_json(ctx.sessions.as_ref())),
        ("GET", ["history"]) => ok(ctx.history.to_json(&ctx.array.info().disks)),
        (_, known) if is_known(known) => Err(RouteError::MethodNotAllowed(format!(
            "method {method} is not allowed on /api/{} (see docs/admin-api.md)",
            known.join("/")
        ))),
        _ => Err(not_found()),
    }
}

fn is_known(path: &[&str]) -> bool {
    matches!(
        path,
        ["array" | "partitions" | "hosts" | "assignments" | "sessions" | "history"]
            | ["partitions" | "hosts", _]
            | ["hosts", _, "rotate-secret"]
            | ["assignments", _, _]
    )
}

fn ok(value: Value) -> Outcome {
    Ok(ApiResponse::json(200, &value))
}

fn not_found() -> RouteError {
    RouteError::NotFound("no such page or API route (see docs/admin-api.md)".into())
}

fn lanes_on(ctx: &Context, partition: u32) -> usize {
    ctx.sessions
        .snapshot()
        .iter()
        .filter(|s| s.kind == SessionKind::Data && s.partition == Some(partition))
        .count()
}

fn partition_json(ctx: &Context, view: &crate::array::PartitionView) -> Value {
    json::partition(view, lanes_on(ctx, view.id))
}

fn list_partitions(ctx: &Context) -> Value {
    let sessions = ctx.sessions.snapshot();
    let partitions: Vec<Value> = ctx
        .array
        .partitions()
        .iter()
        .map(|p| {
            let lanes = sessions
                .iter()
                .filter(|s| s.kind == SessionKind::Data && s.partition == Some(p.id))
                .count();
            json::partition(p, lanes)
        })
        .collect();
    json!({ "partitions": partitions })
}

fn create_partition(ctx: &Context, body: &serde_json::Map<String, Value>) -> Outcome {
    json::only_fields(body, &["name", "size", "shared"])?;
    let name = json::string(body, "name")?;
    let size = json::size(body, "size")?;
    let shared = json::flag(body, "shared")?;
    let view = ctx.array.create_partition(name, size, shared)?;
    Ok(ApiResponse::json(201, &partition_json(ctx, &view)))
}

fn grow_partition(ctx: &Context, name: &str, body: &serde_json::Map<String, Value>) -> Outcome {
    json::only_fields(body, &["size"])?;
    let size = json::size(body, "size")?;
    ok(partition_json(ctx, &ctx.array.grow_partition(name, size)?))
}

fn delete_partition(ctx: &Context, name: &str, force: bool) -> Outcome {
    let view = ctx.array.partition(name)?;
    let attached: Vec<String> = ctx
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| s.kind == SessionKind::Data && s.partition == Some(view.id))
        .map(|s| format!("{} queue {} lane {}", s.host, opt(s.queue), opt(s.lane)))
        .collect();
    if !attached.is_empty() && !force {
        return Err(RouteError::Conflict(format!(
            "partition {name:?} is attached ({} live lanes: {}); disconnect the hosts, or \
             delete with force=true to revoke their access and close the lanes",
            attached.len(),
            attached.join(", ")
        )));
    }
    if force {
        ctx.array.delete_partition_forced(name)?;
    } else {
        ctx.array.delete_partition(name)?;
    }
    ok(json!({ "deleted": name, "closed_lanes": attached.len() }))
}

fn opt(value: Option<u16>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn list_hosts(ctx: &Context) -> Value {
    let sessions = ctx.sessions.snapshot();
    let hosts: Vec<Value> = ctx
        .array
        .hosts()
        .iter()
        .map(|h| {
            let mine = sessions.iter().filter(|s| s.host == h.name);
            let lanes = mine.clone().filter(|s| s.kind == SessionKind::Data).count();
            json::host(h, mine.count() - lanes, lanes)
        })
        .collect();
    json!({ "hosts": hosts })
}

fn host_json(ctx: &Context, name: &str) -> Result<Value, RouteError> {
    let view = ctx
        .array
        .hosts()
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| Error::HostNotFound(name.to_owned()))?;
    let sessions = ctx.sessions.snapshot();
    let mine = sessions.iter().filter(|s| s.host == name);
    let lanes = mine.clone().filter(|s| s.kind == SessionKind::Data).count();
    Ok(json::host(&view, mine.count() - lanes, lanes))
}

fn create_host(ctx: &Context, body: &serde_json::Map<String, Value>) -> Outcome {
    json::only_fields(body, &["name"])?;
    let name = json::string(body, "name")?;
    let secret = ctx.array.create_host(name)?;
    Ok(ApiResponse::json(201, &json::secret(&secret)))
}

fn delete_host(ctx: &Context, name: &str, force: bool) -> Outcome {
    if force {
        ctx.array.delete_host_forced(name)?;
    } else {
        ctx.array.delete_host(name)?;
    }
    ok(json!({ "deleted": name }))
}

fn list_assignments(ctx: &Context) -> Value {
    let all: Vec<Value> = ctx
        .array
        .assignments()
        .iter()
        .map(json::assignment)
        .collect();
    json!({ "assignments": all })
}

fn assign(
    ctx: &Context,
    host: &str,
    partition: &str,
    body: &serde_json::Map<String, Value>,
) -> Outcome {
    json::only_fields(body, &["access"])?;
    let access = json::access(body)?;
    match ctx.array.assign(host, partition, access) {
        Ok(view) => Ok(ApiResponse::json(201, &json::assignment(&view))),
        Err(Error::AlreadyAssigned { .. }) => {
            let view = ctx.array.set_access(host, partition, access)?;
            ok(json::assignment(&view))
        }
        Err(e) => Err(e.into()),
    }
}

/// The HTTP status and message for a failed request.
pub fn error_response(error: &RouteError) -> ApiResponse {
    match error {
        RouteError::Bad(BadRequest(message)) => ApiResponse::error(400, message.clone()),
        RouteError::Conflict(message) => ApiResponse::error(409, message.clone()),
        RouteError::NotFound(message) => ApiResponse::error(404, message.clone()),
        RouteError::MethodNotAllowed(message) => ApiResponse::error(405, message.clone()),
        RouteError::Array(e @ Error::StillAssigned { .. }) => ApiResponse::error(
            409,
            format!("{e} (or delete with force=true, which revokes every assignment at once)"),
        ),
        RouteError::Array(e) => ApiResponse::error(status_of(e), e.to_string()),
    }
}

fn status_of(error: &Error) -> u16 {
    match error {
        Error::InvalidName(_) | Error::ZeroSize | Error::BadChunkSize(_) => 400,
        Error::PartitionNotFound(_) | Error::HostNotFound(_) | Error::NotAssigned { .. } => 404,
        Error::PartitionExists(_)
        | Error::HostExists(_)
        | Error::AlreadyAssigned { .. }
        | Error::PrivatePartitionTaken { .. }
        | Error::StillAssigned { .. }
        | Error::CannotShrink { .. }
        | Error::NoSpace { .. } => 409,
        Error::MetadataTooLarge { .. } => 507,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::admin::NoSessions;
    use crate::array::commit_tests::{formatted, DISKS};
    use crate::array::disk::faults::{self, Fault};

    #[test]
    fn the_api_reports_a_failed_commit_and_it_never_reappears() {
        let (_dir, paths, array) = formatted();
        let context = Context {
            array: array.clone(),
            sessions: Arc::new(NoSessions),
            history: Arc::new(History::default()),
        };
        let request = ApiRequest {
            method: "POST".into(),
            segments: vec!["api".into(), "hosts".into()],
            query: HashMap::new(),
            headers: Vec::new(),
            body: br#"{"name":"lost"}"#.to_vec(),
        };
        faults::arm(&paths[DISKS - 1], Fault::BeforeWrite);
        let response = route(&context, &request);
        assert_eq!(response.status, 500);
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            body.contains("metadata"),
            "the error says what failed: {body}"
        );
        drop(context);
        drop(array);
        let array = Array::open(&paths).unwrap();
        let names: Vec<String> = array.hosts().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["kept"]);
    }
}
