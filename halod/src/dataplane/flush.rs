//! The dead-node flush: when a node fails (its machine died, say), the clients
//! of its connections are told at once instead of when they next send.
//!
//! The XDP program records every TCP connection opened through the VIP
//! (`RECENT_FLOWS`: client address and port, VIP port -> the node the SYN
//! went to). When a node fails, after the failover moved its routes, its
//! connections of those routes are taken from the map (one pass) and each
//! client gets two TCP ACK segments from VIP:port with sequence numbers 2^31
//! apart, so that at least one is outside the client's receive window. The
//! client answers it with a duplicate ACK (RFC 9293 3.10.7.4, RFC 5961),
//! which the gateway forwards to the route's new node (or, with no node left,
//! takes itself: the VIP is local); that host has no such connection and
//! answers with a RST whose sequence number is the ACK's acknowledgment
//! number, the client's RCV.NXT, which the client accepts: its connection
//! ends with ECONNRESET.
//!
//! Everything runs on the flusher's own thread ([`Flusher`]) with its own
//! handles on the maps and a raw socket: neither the manager nor the data
//! plane task waits for it. Segments are paced at `nodes.flush_pps`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use halod_common::listener::{MAX_LISTENERS, route_for_port};
use halod_common::maps::{RecentFlow, RecentNode};
use serde::{Deserialize, Serialize};

/// A failed node whose clients are to be told: its name (for the log), its
/// counter index (the value its connections have in `RECENT_FLOWS`), and the
/// routes it served until the failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    pub node: String,
    pub index: u32,
    pub routes: Vec<u16>,
}

/// What the flush did since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushStats {
    /// Connections of failed nodes whose clients were sent flush segments.
    pub connections: u64,
    /// Segments sent (two per connection).
    pub segments: u64,
    /// Connections of failed nodes the recent-flows map no longer held
    /// (forgotten for room): their clients were not told.
    pub unknown: u64,
    /// Segments the raw socket refused.
    pub errors: u64,
}

/// The flush counters, shared by the flusher thread and the data plane's stats.
#[derive(Debug, Default)]
pub struct FlushCounters {
    connections: AtomicU64,
    segments: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
}

impl FlushCounters {
    pub fn read(&self) -> FlushStats {
        FlushStats {
            connections: self.connections.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// TCP flags of a flush segment: ACK alone.
const TCP_ACK: u8 = 0x10;
/// Window of a flush segment (any non-zero value).
const WINDOW: u16 = 1024;
const SEGMENT_LEN: usize = 40;

/// An IPv4 + TCP segment (no options, no data) from `from` to `to` with flag
/// ACK, sequence number `seq` and acknowledgment number `ack`, both checksums
/// computed: what the raw socket sends (`IP_HDRINCL`).
pub fn segment(from: SocketAddrV4, to: SocketAddrV4, seq: u32, ack: u32) -> [u8; SEGMENT_LEN] {
    let mut packet = [0u8; SEGMENT_LEN];
    let (ip, tcp) = packet.split_at_mut(20);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(SEGMENT_LEN as u16).to_be_bytes());
    // Don't fragment (it never needs to be), TTL 64, TCP.
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let check = internet_checksum(0, ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());

    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_ACK;
    tcp[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.ip().octets());
    pseudo[4..8].copy_from_slice(&to.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((SEGMENT_LEN - 20) as u16).to_be_bytes());
    let check = internet_checksum(sum(0, &pseudo), tcp);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    packet
}

fn sum(mut acc: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    acc
}

/// RFC 1071 checksum of `data` on top of the partial sum `acc`.
fn internet_checksum(acc: u32, data: &[u8]) -> u16 {
    !halod_common::checksum::fold(sum(acc, data))
}

/// Where the flusher thread takes its work from; cheap to clone.
#[derive(Clone, Debug)]
pub struct FlushSender {
    jobs: mpsc::Sender<Flush>,
}

impl FlushSender {
    /// Queues a flush; returns at once. Dropped when the flusher is gone.
    pub fn send(&self, flush: Flush) {
        let _ = self.jobs.send(flush);
    }
}

/// What the flusher needs to start.
pub struct FlusherConfig {
    pub vip: Ipv4Addr,
    pub routes: u16,
    pub listeners: Vec<u16>,
    /// Segments per second (> 0).
    pub pps: u32,
    /// Most entries of `RECENT_FLOWS`: bounds a pass over it.
    pub flows: u32,
}

/// The ids of the maps the flusher opens its own handles on.
pub struct MapIds {
    pub flows: u32,
    pub nodes: u32,
    pub routes: u32,
}

/// The flusher thread's state: its own handles on the maps (the data plane
/// keeps its own) and the raw socket.
pub struct Flusher {
    config: FlusherConfig,
    flows: BpfHashMap<MapData, RecentFlow, RecentNode>,
    nodes: PerCpuArray<MapData, u64>,
    /// `ROUTE_CONNECTIONS`, whose second half it keeps.
    routes: PerCpuArray<MapData, u64>,
    socket: socket2::Socket,
    counters: Arc<FlushCounters>,
}

impl Flusher {
    /// Opens the raw socket (CAP_NET_RAW; in the calling thread's network
    /// namespace) and new handles on the maps with these ids, and starts the
    /// thread. Returns the way to reach it.
    pub fn start(
        config: FlusherConfig,
        ids: MapIds,
        counters: Arc<FlushCounters>,
    ) -> Result<FlushSender, String> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|error| format!("opening a raw IPv4 socket (needs CAP_NET_RAW): {error}"))?;
        let flows = MapData::from_id(ids.flows)
            .map_err(|error| error.to_string())
            .and_then(|data| {
                BpfHashMap::try_from(Map::LruHashMap(data)).map_err(|error| error.to_string())
            })
            .map_err(|error| format!("opening RECENT_FLOWS: {error}"))?;
        let per_cpu = |id: u32, name: &str| {
            MapData::from_id(id)
                .map_err(|error| error.to_string())
                .and_then(|data| {
                    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|error| error.to_string())
                })
                .map_err(|error| format!("opening {name}: {error}"))
        };
        let nodes = per_cpu(ids.nodes, "RECENT_NODES")?;
        let routes = per_cpu(ids.routes, "ROUTE_CONNECTIONS")?;
        let mut flusher = Flusher {
            config,
            flows,
            nodes,
            routes,
            socket,
            counters,
        };
        let (jobs, inbox) = mpsc::channel::<Flush>();
        std::thread::Builder::new()
            .name("halod-flush".into())
            .spawn(move || {
                for job in inbox {
                    flusher.flush(&job);
                }
            })
            .map_err(|error| format!("starting the flusher thread: {error}"))?;
        Ok(FlushSender { jobs })
    }

    fn flush(&mut self, job: &Flush) {
        let started = Instant::now();
        let (flows, unknown) = self.take(job);
        let (sent, errors) = self.send(&flows);
        let c = &self.counters;
        c.connections
            .fetch_add(flows.len() as u64, Ordering::Relaxed);
        c.segments.fetch_add(sent, Ordering::Relaxed);
        c.unknown.fetch_add(unknown, Ordering::Relaxed);
        c.errors.fetch_add(errors, Ordering::Relaxed);
        tracing::info!(
            node = %job.node,
            segments = sent,
            errors,
            ms = started.elapsed().as_millis() as u64,
            "flushed {} connections of node {} ({unknown} not known: recent-flows map)",
            flows.len(),
            job.node
        );
    }

    /// The failed node's connections of its routes, taken out of the map (one
    /// pass), and how many of its connections the map had forgotten.
    fn take(&mut self, job: &Flush) -> (Vec<RecentFlow>, u64) {
        let routes: HashSet<u16> = job.routes.iter().copied().collect();
        let mut listeners = [0u16; MAX_LISTENERS];
        let count = self.config.listeners.len().min(MAX_LISTENERS);
        listeners[..count].copy_from_slice(&self.config.listeners[..count]);
        let mut found = HashSet::new();
        // Entries that go while the pass runs can make the kernel start
        // over: bounded, and duplicates are dropped.
        let bound = 2 * self.config.flows as usize + 16;
        for entry in self.flows.iter().take(bound) {
            let Ok((flow, index)) = entry else { continue };
            let route = route_for_port(
                u16::from_be_bytes(flow.vip_port),
                &listeners,
                self.config.listeners.len() as u16,
                self.config.routes,
            );
            if index == job.index && route.is_some_and(|route| routes.contains(&route)) {
                found.insert(flow);
            }
        }
        let recorded = self
            .nodes
            .get(&job.index, 0)
            .map(|values| values.iter().fold(0u64, |a, b| a.wrapping_add(*b)) as i64)
            .unwrap_or(0);
        let unknown = (recorded - found.len() as i64).max(0) as u64;
        for flow in &found {
            let _ = self.flows.remove(flow);
        }
        // The node's count starts again (its index may serve another node).
        if let Ok(cpus) = aya::util::nr_cpus()
            && let Ok(zeros) = PerCpuValues::try_from(vec![0u64; cpus])
        {
            let _ = self.nodes.set(job.index, zeros, 0);
        }
        let mut flows: Vec<RecentFlow> = found.into_iter().collect();
        flows.sort_by_key(|flow| (flow.client, flow.client_port, flow.vip_port));
        self.count_flushed(&flows, &listeners);
        (flows, unknown)
    }

    /// Adds the connections taken out of `RECENT_FLOWS` to their routes'
    /// flushed counts (`ROUTE_CONNECTIONS`' second half, which only this
    /// thread writes), so that the routes' estimates no longer hold them.
    fn count_flushed(&mut self, flows: &[RecentFlow], listeners: &[u16; MAX_LISTENERS]) {
        let routes = self.config.routes;
        let mut per_route: std::collections::BTreeMap<u16, u64> = Default::default();
        for flow in flows {
            if let Some(route) = route_for_port(
                u16::from_be_bytes(flow.vip_port),
                listeners,
                self.config.listeners.len() as u16,
                routes,
            ) {
                *per_route.entry(route).or_default() += 1;
            }
        }
        let Ok(cpus) = aya::util::nr_cpus() else {
            return;
        };
        for (route, count) in per_route {
            let index = u32::from(routes) + u32::from(route) - 1;
            let before = self
                .routes
                .get(&index, 0)
                .map(|values| values.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
                .unwrap_or(0);
            let mut values = vec![0u64; cpus];
            values[0] = before.wrapping_add(count);
            if let Ok(values) = PerCpuValues::try_from(values) {
                let _ = self.routes.set(index, values, 0);
            }
        }
    }

    /// Sends two segments per flow, paced at `pps`. Returns segments sent and
    /// refused.
    fn send(&self, flows: &[RecentFlow]) -> (u64, u64) {
        let interval = Duration::from_secs(1) / self.config.pps.max(1);
        let start = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let (mut sent, mut errors) = (0u64, 0u64);
        for (i, flow) in flows.iter().enumerate() {
            let from = SocketAddrV4::new(self.config.vip, u16::from_be_bytes(flow.vip_port));
            let to = SocketAddrV4::new(
                Ipv4Addr::from(flow.client),
                u16::from_be_bytes(flow.client_port),
            );
            let seq = seed.wrapping_add((i as u32).wrapping_mul(0x9e37_79b1));
            for seq in [seq, seq.wrapping_add(1 << 31)] {
                // Paced: segment n leaves n intervals after the start.
                let due = start + interval * (sent + errors) as u32;
                let now = Instant::now();
                if due > now + Duration::from_millis(1) {
                    std::thread::sleep(due - now);
                }
                let packet = segment(from, to, seq, seq ^ 0x5555_5555);
                match self.socket.send_to(&packet, &socket2::SockAddr::from(to)) {
                    Ok(_) => sent += 1,
                    Err(error) => {
                        if errors == 0 {
                            tracing::warn!(%error, client = %to, "sending a flush segment failed");
                        }
                        errors += 1;
                    }
                }
            }
        }
        (sent, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn segments_parse_with_valid_checksums() {
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8003);
        let to = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 51234);
        for seq in [0, 1, 0x8000_0000, u32::MAX] {
            let packet = segment(from, to, seq, 77);
            let sliced = SlicedPacket::from_ip(&packet).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
                panic!("not IPv4");
            };
            let header = ip.header();
            assert_eq!(header.source_addr(), *from.ip());
            assert_eq!(header.destination_addr(), *to.ip());
            assert_eq!(header.total_len(), 40);
            assert!(header.dont_fragment());
            let ipv4 = header.to_header();
            assert_eq!(ipv4.header_checksum, ipv4.calc_header_checksum());
            let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
                panic!("not TCP");
            };
            assert_eq!(tcp.source_port(), 8003);
            assert_eq!(tcp.destination_port(), 51234);
            assert_eq!(tcp.sequence_number(), seq);
            assert_eq!(tcp.acknowledgment_number(), 77);
            assert!(tcp.ack() && !tcp.syn() && !tcp.rst() && !tcp.fin() && !tcp.psh());
            assert!(tcp.window_size() > 0);
            assert!(tcp.payload().is_empty());
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&ipv4, tcp.payload())
                .unwrap();
            assert_eq!(tcp.checksum(), expected);
        }
    }
}
