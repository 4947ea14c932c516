//! Prometheus metrics (`metrics.listen`): what the daemon counts as it goes
//! ([`Metrics`]) plus what is read at scrape time (the data plane's counters,
//! the node table), served as OpenMetrics text on `GET /metrics`.
//!
//! The HTTP side is deliberately tiny: one request per connection, `GET
//! /metrics` or 404, a size and time limit on the request head. It listens on
//! the address the operator configures (loopback in the example config).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::socket::Services;
use super::tables::DataplaneView;

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

/// What the daemon counts as events happen. Cloning shares the counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The heartbeat interval lateness is measured against.
    heartbeat_ms: u64,
    /// Nodes failed, by cause (`heartbeat`, `disconnected`, ...).
    pub node_failures: Family<CauseLabel, Counter>,
    /// Active nodes failed (their routes went to a spare or to other nodes).
    pub failovers: Counter,
    /// How much later than `heartbeat_ms` each heartbeat arrived (seconds).
    pub heartbeat_lateness: Histogram,
    /// Time to write one plan's table changes into the data plane (seconds).
    pub plan_push: Histogram,
    /// State-file writes that failed (each is retried).
    pub state_write_failures: Counter,
    /// Node connections refused or cut for misbehaving, by reason
    /// (`bad_request`, `line_too_long`, `hello_timeout`, `bad_token`, ...).
    pub node_refusals: Family<CauseLabel, Counter>,
}

impl Metrics {
    pub fn new(heartbeat: Duration) -> Metrics {
        Metrics {
            heartbeat_ms: heartbeat.as_millis() as u64,
            node_failures: Family::default(),
            failovers: Counter::default(),
            // 1 ms .. about 16 s.
            heartbeat_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 50 us .. about 1.6 s.
            plan_push: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            state_write_failures: Counter::default(),
            node_refusals: Family::default(),
        }
    }

    /// A node connection was refused or cut for `reason`.
    pub fn node_refused(&self, reason: &'static str) {
        self.node_refusals
            .get_or_create(&CauseLabel { cause: reason })
            .inc();
    }

    /// A heartbeat (or any message) arrived `gap_ms` after the previous one.
    pub fn heartbeat_gap(&self, gap_ms: u64) {
        let late = gap_ms.saturating_sub(self.heartbeat_ms);
        self.heartbeat_lateness.observe(late as f64 / 1000.0);
    }

    pub fn node_failed(&self, cause: &'static str) {
        self.node_failures
            .get_or_create(&CauseLabel { cause })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Duration::from_millis(100))
    }
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
        }
        Err(err) => debug!("metrics: no data plane counters: {err}"),
    }

    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
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
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let services = services.clone();
                tokio::spawn(async move {
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
    let response = match request_target(&head) {
        Some(("GET", "/metrics")) => match render(services).await {
            Ok(body) => response(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            ),
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
