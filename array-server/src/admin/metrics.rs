//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::http::ApiResponse;
use super::live::{SessionKind, Traffic, LATENCY_BOUNDS_US};
use super::routes::Context;

/// Reads one counter out of the traffic totals.
type Field = fn(&Traffic) -> u64;

/// Renders every metric.
pub fn render(ctx: &Context) -> ApiResponse {
    let mut out = String::new();
    array_metrics(ctx, &mut out);
    session_metrics(ctx, &mut out);
    traffic_metrics(ctx, &mut out);
    path_metrics(ctx, &mut out);
    disk_metrics(ctx, &mut out);
    ApiResponse::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        out.into_bytes(),
    )
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn array_metrics(ctx: &Context, out: &mut String) {
    let info = ctx.array.info();
    let gauges = [
        (
            "multilane_array_capacity_bytes",
            "Logical bytes in the array.",
            info.capacity,
        ),
        (
            "multilane_array_used_bytes",
            "Bytes given to partitions.",
            info.used,
        ),
        (
            "multilane_array_free_bytes",
            "Bytes not given to any partition.",
            info.free,
        ),
        (
            "multilane_array_generation",
            "Metadata generation.",
            info.generation,
        ),
        (
            "multilane_partitions",
            "Partitions defined.",
            info.partitions as u64,
        ),
        ("multilane_hosts", "Hosts defined.", info.hosts as u64),
    ];
    for (name, text, value) in gauges {
        help(out, name, "gauge", text);
        let _ = writeln!(out, "{name} {value}");
    }
    help(
        out,
        "multilane_partition_size_bytes",
        "gauge",
        "Size of each partition.",
    );
    for p in ctx.array.partitions() {
        let _ = writeln!(
            out,
            "multilane_partition_size_bytes{{partition=\"{}\"}} {}",
            label(&p.name),
            p.size
        );
    }
}

fn session_metrics(ctx: &Context, out: &mut String) {
    let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for host in ctx.array.hosts() {
        counts.insert((host.name.clone(), "control"), 0);
        counts.insert((host.name, "data"), 0);
    }
    for s in ctx.sessions.snapshot() {
        let kind = if s.kind == SessionKind::Data {
            "data"
        } else {
            "control"
        };
        *counts.entry((s.host, kind)).or_default() += 1;
    }
    help(
        out,
        "multilane_sessions",
        "gauge",
        "Live authenticated connections per host and kind (control, data lanes).",
    );
    for ((host, kind), count) in &counts {
        let _ = writeln!(
            out,
            "multilane_sessions{{host=\"{}\",kind=\"{kind}\"}} {count}",
            label(host)
        );
    }
    help(
        out,
        "multilane_handshakes_refused_total",
        "counter",
        "Handshakes refused (unknown host, wrong proof, partition not assigned...).",
    );
    let refused = ctx.sessions.refused_handshakes();
    let _ = writeln!(out, "multilane_handshakes_refused_total {refused}");
}

fn traffic_metrics(ctx: &Context, out: &mut String) {
    let mut totals: BTreeMap<(String, String), Traffic> = BTreeMap::new();
    for t in ctx.sessions.traffic() {
        totals
            .entry((t.host, t.partition))
            .or_default()
            .add(&t.traffic);
    }
    let ops: [(&str, Field); 5] = [
        ("read", |t| t.reads),
        ("write", |t| t.writes),
        ("flush", |t| t.flushes),
        ("discard", |t| t.discards),
        ("write_zeroes", |t| t.write_zeroes),
    ];
    let name = "multilane_requests_total";
    help(out, name, "counter", "Block requests run, per operation.");
    for ((host, partition), traffic) in &totals {
        for (op, value) in ops {
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",partition=\"{}\",op=\"{op}\"}} {}",
                label(host),
                label(partition),
                value(traffic)
            );
        }
    }
    let counters: [(&str, &str, Field); 3] = [
        (
            "multilane_request_errors_total",
            "Block requests answered with an errno.",
            |t| t.errors,
        ),
        (
            "multilane_read_bytes_total",
            "Bytes returned by reads.",
            |t| t.read_bytes,
        ),
        (
            "multilane_written_bytes_total",
            "Bytes accepted by writes.",
            |t| t.write_bytes,
        ),
    ];
    for (name, text, value) in counters {
        help(out, name, "counter", text);
        for ((host, partition), traffic) in &totals {
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",partition=\"{}\"}} {}",
                label(host),
                label(partition),
                value(traffic)
            );
        }
    }
    let name = "multilane_request_duration_seconds";
    help(
        out,
        name,
        "histogram",
        "Time from a request's arrival to its reply being queued.",
    );
    for ((host, partition), traffic) in &totals {
        let labels = format!(
            "host=\"{}\",partition=\"{}\"",
            label(host),
            label(partition)
        );
        histogram(out, name, &labels, traffic);
    }
}

/// Data traffic per server address (multipath path), every host and partition summed.
fn path_metrics(ctx: &Context, out: &mut String) {
    let paths = ctx.sessions.path_traffic();
    let counters: [(&str, &str, Field); 3] = [
        (
            "multilane_path_requests_total",
            "Block requests that came in on this server address (path).",
            |t| t.ops(),
        ),
        (
            "multilane_path_read_bytes_total",
            "Bytes returned by reads on this server address (path).",
            |t| t.read_bytes,
        ),
        (
            "multilane_path_written_bytes_total",
            "Bytes accepted by writes on this server address (path).",
            |t| t.write_bytes,
        ),
    ];
    for (name, text, value) in counters {
        help(out, name, "counter", text);
        for path in &paths {
            let _ = writeln!(
                out,
                "{name}{{local=\"{}\"}} {}",
                label(&path.local),
                value(&path.traffic)
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, traffic: &Traffic) {
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
        cumulative += traffic.latency[i];
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let count: u64 = traffic.latency.iter().sum();
    let sum = traffic.latency_sum_us as f64 / 1e6;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn disk_metrics(ctx: &Context, out: &mut String) {
    help(
        out,
        "multilane_disk_io_errors_total",
        "counter",
        "Failed data I/Os per member disk.",
    );
    for (index, disk) in ctx.array.disks().iter().enumerate() {
        let _ = writeln!(
            out,
            "multilane_disk_io_errors_total{{disk=\"{index}\",path=\"{}\"}} {}",
            label(&disk.path().display().to_string()),
            disk.io_errors()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_ends_in_inf() {
        let mut traffic = Traffic {
            latency_sum_us: 1_500,
            ..Traffic::default()
        };
        traffic.latency[0] = 2;
        traffic.latency[4] = 1;
        traffic.latency[LATENCY_BOUNDS_US.len()] = 1;
        let mut out = String::new();
        histogram(&mut out, "m", "a=\"b\"", &traffic);
        assert!(out.contains("m_bucket{a=\"b\",le=\"0.00005\"} 2\n"));
        assert!(out.contains("m_bucket{a=\"b\",le=\"0.001\"} 3\n"));
        assert!(out.contains("m_bucket{a=\"b\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("m_sum{a=\"b\"} 0.0015\n"));
        assert!(out.contains("m_count{a=\"b\"} 4\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
