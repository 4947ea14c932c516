//! The Prometheus endpoint (`metrics.listen`): the daemon's counters
//! ([`super::metrics::Metrics`]) plus what is read at scrape time (the data
//! plane's counters, the node table), served on `GET /metrics` in the format
//! the scraper asks for: OpenMetrics 1.0 when its `Accept` names
//! `application/openmetrics-text` (Prometheus does), the Prometheus text format
//! 0.0.4 otherwise (curl, `promtool check metrics`, older scrapers). Series come
//! in a fixed order (label values in natural order), the same at every scrape.
//!
//! The HTTP side is deliberately tiny: one request per connection, `GET
//! /metrics` or 404, a size and time limit on the request head. It listens on
//! the address the operator configures (loopback in the example config).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::socket::Services;
use super::tables::DataplaneView;

/// Most scrapes answered at once; more get `503 Service Unavailable`.
pub const MAX_SCRAPES: usize = 8;

/// Largest request head the endpoint reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Renders every metric: the counters kept by the daemon, the node table and
/// the data plane's counters (read now).
pub async fn render<D: DataplaneView>(services: &Services<D>) -> anyhow::Result<String> {
    let metrics = &services.metrics;
    let mut registry = Registry::with_prefix("halod");
    registry.register(
        "node_failures",
        "Nodes failed, by cause",
        metrics.node_failures.clone(),
    );
    registry.register(
        "node_refusals",
        "Node connections refused or cut for misbehaving, by cause",
        metrics.node_refusals.clone(),
    );
    registry.register(
        "failovers",
        "Active nodes failed; their routes went to a spare or to other nodes",
        metrics.failovers.clone(),
    );
    registry.register(
        "heartbeat_lateness_seconds",
        "How much later than the heartbeat interval each node message arrived",
        metrics.heartbeat_lateness.clone(),
    );
    registry.register(
        "plan_push_seconds",
        "Time to write one plan's table changes into the data plane",
        metrics.plan_push.clone(),
    );
    registry.register(
        "state_file_write_failures",
        "Failed writes of the state file (each is retried)",
        metrics.state_write_failures.clone(),
    );

    let snapshot = services.snapshot().await?;
    let roles: Family<RoleLabel, Gauge> = Family::default();
    roles
        .get_or_create(&RoleLabel { role: "active" })
        .set(snapshot.active.len() as i64);
    roles
        .get_or_create(&RoleLabel { role: "spare" })
        .set(snapshot.spares.len() as i64);
    let awaiting = snapshot.nodes.iter().filter(|node| !node.connected).count();
    roles
        .get_or_create(&RoleLabel {
            role: "disconnected",
        })
        .set(awaiting as i64);
    registry.register(
        "nodes",
        "Registered nodes by role (disconnected: within a reconnect or restart grace)",
        roles,
    );
    let draining: Gauge = Gauge::default();
    draining.set(snapshot.drains.len() as i64);
    registry.register(
        "draining_routes",
        "Routes whose connections older than their last move still reach the old node (nodes.drain_ms)",
        draining,
    );

    match services.dataplane.stats().await {
        Ok(stats) => {
            let route_packets: Family<RouteLabel, Counter> = Family::default();
            let route_bytes: Family<RouteLabel, Counter> = Family::default();
            for (i, counter) in stats.routes.iter().enumerate() {
                let label = RouteLabel {
                    route: i as u16 + 1,
                };
                route_packets.get_or_create(&label).inc_by(counter.packets);
                route_bytes.get_or_create(&label).inc_by(counter.bytes);
            }
            let node_packets: Family<NodeLabel, Counter> = Family::default();
            let node_bytes: Family<NodeLabel, Counter> = Family::default();
            for node in &snapshot.nodes {
                if let Some(counter) = stats.nodes.get(node.index as usize) {
                    let label = NodeLabel {
                        node: node.name.clone(),
                    };
                    node_packets.get_or_create(&label).inc_by(counter.packets);
                    node_bytes.get_or_create(&label).inc_by(counter.bytes);
                }
            }
            let recorded: Gauge = Gauge::default();
            recorded.set(i64::from(stats.connections.is_some()));
            registry.register(
                "connections_recorded",
                "1 when the XDP program records connections (nodes.flush_pps above 0), so that the connection estimates are there",
                recorded,
            );
            if let Some(connections) = &stats.connections {
                let routes: Family<RouteLabel, Gauge> = Family::default();
                for (i, count) in connections.routes.iter().enumerate() {
                    routes
                        .get_or_create(&RouteLabel {
                            route: i as u16 + 1,
                        })
                        .set(i64::try_from(*count).unwrap_or(i64::MAX));
                }
                let nodes: Family<NodeLabel, Gauge> = Family::default();
                for node in &snapshot.nodes {
                    let count = connections
                        .nodes
                        .get(node.index as usize)
                        .copied()
                        .unwrap_or(0);
                    nodes
                        .get_or_create(&NodeLabel {
                            node: node.name.clone(),
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                registry.register(
                    "route_connections",
                    "Established TCP connections through the VIP per route, estimated from the SYNs and client FINs/RSTs the XDP program saw",
                    routes,
                );
                registry.register(
                    "node_connections",
                    "Established TCP connections through the VIP per registered node, estimated from the SYNs and client FINs/RSTs the XDP program saw",
                    nodes,
                );
            }
            let reasons: Family<ReasonLabel, Counter> = Family::default();
            for (reason, count) in &stats.reasons {
                reasons
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(*count);
            }
            registry.register(
                "route_packets",
                "Packets forwarded per route (both directions)",
                route_packets,
            );
            registry.register(
                "route_bytes",
                "Bytes forwarded per route (both directions)",
                route_bytes,
            );
            registry.register(
                "node_packets",
                "Packets forwarded per registered node (both directions)",
                node_packets,
            );
            registry.register(
                "node_bytes",
                "Bytes forwarded per registered node (both directions)",
                node_bytes,
            );
            registry.register(
                "dataplane_packets",
                "Packets seen by the XDP program, by verdict reason",
                reasons,
            );
            for (name, help, value) in [
                (
                    "drain_old_packets",
                    "Packets of draining routes' connections older than the move, sent to the old node",
                    stats.drain.to_old,
                ),
                (
                    "drain_new_connections",
                    "Connections opened to draining routes, recorded for the new node",
                    stats.drain.new_flows,
                ),
                (
                    "drain_flows_full",
                    "Connections opened to draining routes that nodes.drain_flows had no room for (kept on the old node)",
                    stats.drain.full,
                ),
                (
                    "flush_connections",
                    "Connections of failed nodes whose clients the dead-node flush told",
                    stats.flush.connections,
                ),
                (
                    "flush_segments",
                    "Segments the dead-node flush sent (two per connection)",
                    stats.flush.segments,
                ),
                (
                    "flush_unknown_connections",
                    "Connections of failed nodes the recent-flows map no longer held (not told)",
                    stats.flush.unknown,
                ),
            ] {
                let counter: Counter = Counter::default();
                counter.inc_by(value);
                registry.register(name, help, counter);
            }
        }
        Err(err) => debug!("metrics: no data plane counters: {err}"),
    }

    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(in_stable_order(&text))
}

/// The exposition formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format, version 0.0.4.
    Text,
}

impl Format {
    /// From the request's `Accept` header (absent: the plain text format).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let wants_openmetrics = accept.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (what [`render`] makes) in this format.
    pub fn encode(self, openmetrics: &str) -> String {
        match self {
            Format::OpenMetrics => openmetrics.to_string(),
            Format::Text => to_text_format(openmetrics),
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: there a counter's
/// HELP and TYPE name the sample (`halod_failovers_total`), not the family
/// (`halod_failovers`), and there is no `# EOF` or `# UNIT`.
fn to_text_format(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_string());
        }
    }
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|prefix| line.starts_with(prefix));
        match comment {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    text.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    text.push_str(line);
                }
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// `text` with the samples of every counter and gauge family sorted by their
/// labels in natural order (`route="2"` before `route="10"`). Families are
/// hash maps: their order changed from one scrape to the next. Histogram
/// lines keep their (already fixed) bucket order.
fn in_stable_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let mut sortable = false;
    let flush = |samples: &mut Vec<&str>, sortable: bool, out: &mut String| {
        if sortable {
            samples.sort_by_cached_key(|line| natural_key(line));
        }
        for line in samples.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, sortable, &mut out);
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                sortable = rest.ends_with(" counter") || rest.ends_with(" gauge");
            }
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, sortable, &mut out);
    out
}

/// A sort key that orders digit runs by their value.
fn natural_key(line: &str) -> Vec<(u8, u64, String)> {
    let mut key = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            let (number, tail) = rest.split_at(digits);
            key.push((0, number.parse().unwrap_or(u64::MAX), number.to_string()));
            rest = tail;
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            let (word, tail) = rest.split_at(text);
            key.push((1, 0, word.to_string()));
            rest = tail;
        }
    }
    key
}

/// Binds `listen` (before the data plane starts, so a busy port fails early).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| {
        format!("metrics.listen: cannot listen on {listen} (is the address on this host, the port free?)")
    })
}

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve<D: DataplaneView>(
    listener: TcpListener,
    services: Services<D>,
    shutdown: CancellationToken,
) {
    // Each scrape reads the node table and the data plane's counters; a
    // scraper that opens connections in a loop must not pile those up.
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((mut stream, _)) => {
                let Ok(slot) = open.clone().try_acquire_owned() else {
                    debug!("metrics request refused: {MAX_SCRAPES} being answered");
                    let busy = response(
                        "503 Service Unavailable",
                        "text/plain; charset=utf-8",
                        "too many scrapes at once; try again\n",
                    );
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            REQUEST_TIMEOUT,
                            stream.write_all(busy.as_bytes()),
                        )
                        .await;
                    });
                    continue;
                };
                let services = services.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(err) = answer(stream, &services).await {
                        debug!("metrics request: {err:#}");
                    }
                });
            }
            Err(err) => {
                warn!("accepting a metrics connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer<D: DataplaneView>(
    mut stream: TcpStream,
    services: &Services<D>,
) -> anyhow::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .context("no request within 5 s")??;
    let format = Format::negotiate(header(&head, "accept"));
    let response = match request_target(&head) {
        Some(("GET", "/metrics")) => match render(services).await {
            Ok(body) => response("200 OK", format.content_type(), &format.encode(&body)),
            Err(err) => response(
                "500 Internal Server Error",
                "text/plain",
                &format!("{err:#}\n"),
            ),
        },
        Some(("GET", _)) => response("404 Not Found", "text/plain", "try /metrics\n"),
        Some(_) => response(
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n",
        ),
        None => response("400 Bad Request", "text/plain", "bad request\n"),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(read > 0, "connection closed before the request ended");
        head.extend_from_slice(&buffer[..read]);
        anyhow::ensure!(head.len() <= MAX_REQUEST, "request head over 8 KiB");
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The value of header `name` (case-insensitive) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Method and path of an HTTP/1.x request line.
fn request_target(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/1.").then_some(())?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::metrics::Metrics;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_target("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_target("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target("GET /metrics\r\n\r\n"), None);
        assert_eq!(request_target(""), None);
    }

    #[test]
    fn the_format_is_the_one_asked_for() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Text
        );
        let head = "GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: text/plain\r\n\r\n";
        assert_eq!(header(head, "accept"), Some("text/plain"));
        assert_eq!(header(head, "user-agent"), None);
    }

    fn sample_registry(order: &[u16]) -> String {
        let metrics = Metrics::default();
        metrics.node_failed("heartbeat");
        metrics.node_failed("disconnected");
        let routes: Family<RouteLabel, Counter> = Family::default();
        for &route in order {
            routes
                .get_or_create(&RouteLabel { route })
                .inc_by(route.into());
        }
        let mut registry = Registry::with_prefix("halod");
        registry.register(
            "node_failures",
            "Nodes failed",
            metrics.node_failures.clone(),
        );
        registry.register("route_packets", "Packets per route", routes);
        registry.register("plan_push_seconds", "Plan push", metrics.plan_push.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        in_stable_order(&text)
    }

    #[test]
    fn series_come_in_natural_order_every_time() {
        let one = sample_registry(&[10, 2, 1, 11, 3]);
        let other = sample_registry(&[3, 11, 1, 2, 10]);
        assert_eq!(one, other);
        let routes: Vec<&str> = one
            .lines()
            .filter(|l| l.starts_with("halod_route_packets_total"))
            .collect();
        assert_eq!(
            routes,
            [
                r#"halod_route_packets_total{route="1"} 1"#,
                r#"halod_route_packets_total{route="2"} 2"#,
                r#"halod_route_packets_total{route="3"} 3"#,
                r#"halod_route_packets_total{route="10"} 10"#,
                r#"halod_route_packets_total{route="11"} 11"#,
            ]
        );
        let buckets: Vec<&str> = one
            .lines()
            .filter(|l| l.starts_with("halod_plan_push_seconds_bucket"))
            .collect();
        assert!(buckets.last().unwrap().contains(r#"le="+Inf""#), "{one}");
    }

    /// Checks text in the Prometheus 0.0.4 format the way `promtool check
    /// metrics` does what matters here: every sample belongs to the family
    /// the last HELP/TYPE named (a counter's HELP/TYPE name ends in
    /// `_total`), each family is described once, and nothing else is there.
    fn check_text_format(text: &str) {
        let mut described = std::collections::HashSet::new();
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(described.insert(name.to_string()), "{name} described twice");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(described.contains(name), "TYPE {name} without HELP");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                }
                family = Some((name.to_string(), kind.to_string()));
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (name, kind) = family.as_ref().expect("a sample before any TYPE");
            let sample = line.split(['{', ' ']).next().unwrap();
            let belongs = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample == format!("{name}{suffix}")),
                _ => sample == name,
            };
            assert!(belongs, "sample {sample} is not of family {name} ({kind})");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let openmetrics = sample_registry(&[2, 1]);
        assert!(openmetrics.contains("# TYPE halod_node_failures counter"));
        assert!(openmetrics.ends_with("# EOF\n"));
        let text = Format::Text.encode(&openmetrics);
        assert!(
            text.contains("# HELP halod_node_failures_total Nodes failed.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE halod_node_failures_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE halod_plan_push_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        check_text_format(&text);
        assert_eq!(Format::OpenMetrics.encode(&openmetrics), openmetrics);
        // The real checker too, where installed (`cargo xtask setup` installs
        // it; tests/mistakes.rs requires it against a running daemon).
        if let Some(problems) = promtool_check(&text) {
            assert_eq!(problems, "", "promtool check metrics:\n{text}");
        }
    }

    /// What `promtool check metrics` says about `text` (empty: nothing);
    /// `None` without promtool.
    fn promtool_check(text: &str) -> Option<String> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(if output.status.success() {
            said
        } else {
            format!("failed: {said}")
        })
    }

    #[test]
    fn lateness_is_measured_against_the_interval() {
        let metrics = Metrics::new(Duration::from_millis(100));
        metrics.heartbeat_gap(90);
        metrics.heartbeat_gap(350);
        let mut registry = Registry::default();
        registry.register("late", "", metrics.heartbeat_lateness.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("late_count 2"), "{text}");
        assert!(text.contains("late_sum 0.25"), "{text}");
    }
}
