//! The API's JSON: request bodies read strictly (every problem named), and the array's
//! views written in the API's own stable shape (documented in `docs/admin-api.md`).

use serde_json::{json, Map, Value};
use wire::Access;

use crate::array::{ArrayInfo, AssignmentView, HostView, NewSecret, PartitionView};
use crate::units::parse_size;

/// A client mistake: the message says what is wrong (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// The body as a JSON object; an empty body is an empty object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BadRequest("the body must be a JSON object".into())),
        Err(e) => Err(BadRequest(format!("the body is not valid JSON: {e}"))),
    }
}

/// Refuses fields the route does not know (a typo must not be silently ignored).
pub fn only_fields(body: &Map<String, Value>, known: &[&str]) -> Result<(), BadRequest> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(BadRequest(format!(
            "unknown field {unknown:?} (expected {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A required string field.
pub fn string<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, BadRequest> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(BadRequest(format!("field {field:?} must be a string"))),
        None => Err(BadRequest(format!("field {field:?} is required"))),
    }
}

/// An optional boolean field.
pub fn flag(body: &Map<String, Value>, field: &str) -> Result<bool, BadRequest> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(BadRequest(format!("field {field:?} must be true or false"))),
    }
}

/// A size: a number of bytes, or a string in human units (`64M`, `1.5G`, `512K`).
pub fn size(body: &Map<String, Value>, field: &str) -> Result<u64, BadRequest> {
    let bytes = match body.get(field) {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            BadRequest(format!("field {field:?} must be a whole number of bytes"))
        })?,
        Some(Value::String(s)) => {
            parse_size(s).map_err(|e| BadRequest(format!("field {field:?}: {e}")))?
        }
        Some(_) => {
            return Err(BadRequest(format!(
                "field {field:?} must be a size such as \"64M\" or a number of bytes"
            )))
        }
        None => return Err(BadRequest(format!("field {field:?} is required"))),
    };
    if bytes == 0 {
        return Err(BadRequest(format!("field {field:?} must be above zero")));
    }
    Ok(bytes)
}

/// An access right: `read-write` (`rw`) or `read-only` (`ro`); `read-write` if absent.
pub fn access(body: &Map<String, Value>) -> Result<Access, BadRequest> {
    match body.get("access") {
        None | Some(Value::Null) => Ok(Access::ReadWrite),
        Some(Value::String(s)) => parse_access(s),
        Some(_) => Err(BadRequest(
            "field \"access\" must be \"read-write\" or \"read-only\"".into(),
        )),
    }
}

/// Reads an access right from text.
pub fn parse_access(text: &str) -> Result<Access, BadRequest> {
    match text {
        "read-write" | "rw" => Ok(Access::ReadWrite),
        "read-only" | "ro" => Ok(Access::ReadOnly),
        other => Err(BadRequest(format!(
            "access {other:?} is neither \"read-write\" nor \"read-only\""
        ))),
    }
}

/// The API's name for an access right.
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::ReadWrite => "read-write",
        Access::ReadOnly => "read-only",
    }
}

/// `GET /api/array`.
pub fn array(info: &ArrayInfo) -> Value {
    let data_size = |size: u64| size.saturating_sub(crate::array::stripe::METADATA_AREA);
    json!({
        "id": info.array_id,
        "generation": info.generation,
        "chunk_size": info.chunk_size,
        "stripe_size": info.chunk_size * u64::from(info.stripe_disks),
        "block_size": info.block_size,
        "capacity": info.capacity,
        "used": info.used,
        "free": info.free,
        "partition_count": info.partitions,
        "host_count": info.hosts,
        "disks": info.disks.iter().enumerate().map(|(index, d)| json!({
            "index": index,
            "path": d.path.display().to_string(),
            "size": d.size,
            "data_size": data_size(d.size),
            "block_device": d.block_device,
            "direct_io": d.direct_io,
            "io_errors": d.io_errors,
            "last_error": d.last_error,
        })).collect::<Vec<_>>(),
    })
}

/// One partition, with its hosts and the number of live data lanes on it.
pub fn partition(view: &PartitionView, lanes: usize) -> Value {
    json!({
        "id": view.id,
        "name": view.name,
        "size": view.size,
        "shared": view.shared,
        "hosts": view.holders.iter().map(|h| json!({
            "host": h.host,
            "access": access_name(h.access),
        })).collect::<Vec<_>>(),
        "lanes": lanes,
        "attached": lanes > 0,
    })
}

/// One host, with its partitions and the number of live sessions it has.
pub fn host(view: &HostView, control: usize, lanes: usize) -> Value {
    json!({
        "name": view.name,
        "partitions": view.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "partition_id": p.partition_id,
            "access": access_name(p.access),
        })).collect::<Vec<_>>(),
        "connected": control + lanes > 0,
        "control_sessions": control,
        "lanes": lanes,
    })
}

/// One assignment.
pub fn assignment(view: &AssignmentView) -> Value {
    json!({
        "host": view.host,
        "partition": view.partition,
        "partition_id": view.partition_id,
        "access": access_name(view.access),
    })
}

/// A host's new secret, shown once, with how to use it.
pub fn secret(new: &NewSecret) -> Value {
    let file = format!("{}.secret", new.host);
    json!({
        "name": new.host,
        "secret": new.secret,
        "secret_file_name": file,
        "usage": format!(
            "save it as {file} (mode 0600) on the host, then: ublk-host discover --server ADDR \
             --host {} --secret-file {file}",
            new.host
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Map<String, Value> {
        object(text.as_bytes()).unwrap()
    }

    #[test]
    fn sizes_in_units_and_bytes() {
        assert_eq!(size(&body(r#"{"size":"64M"}"#), "size"), Ok(64 << 20));
        assert_eq!(size(&body(r#"{"size":4096}"#), "size"), Ok(4096));
        assert!(size(&body(r#"{"size":"12X"}"#), "size").is_err());
        assert!(size(&body(r#"{"size":-1}"#), "size").is_err());
        assert!(size(&body(r#"{"size":0}"#), "size").is_err());
        assert!(size(&body("{}"), "size").is_err());
    }

    #[test]
    fn strict_fields() {
        assert!(object(b"[1]").is_err());
        assert!(object(b"{").is_err());
        assert!(object(b"").unwrap().is_empty());
        assert!(only_fields(&body(r#"{"nmae":"x"}"#), &["name"]).is_err());
        assert_eq!(access(&body(r#"{"access":"ro"}"#)), Ok(Access::ReadOnly));
        assert!(access(&body(r#"{"access":"rx"}"#)).is_err());
    }
}
