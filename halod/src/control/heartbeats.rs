//! The daemon's UDP heartbeat socket (protocol version 2): the heartbeats
//! that reach the kernel stack instead of being stamped by the XDP program
//! (no program on the interface they arrive on, loopback, generic mode, a
//! program that predates the heartbeat port) are checked here the same way
//! and stamped in the same table, so version 2 works wherever version 1 does.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dataplane::heartbeats::{HeartbeatTable, coarse_now_ns};
use halod_common::heartbeat;

/// Reads heartbeats from `socket` until `shutdown`, stamping each one whose
/// id, key and source address are a node's. Anything else is ignored.
pub async fn serve(socket: UdpSocket, table: HeartbeatTable, shutdown: CancellationToken) {
    // Room for one more byte than a heartbeat: a longer datagram is no heartbeat.
    let mut buffer = [0u8; heartbeat::PAYLOAD_LEN + 1];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        match received {
            Ok((length, source)) => {
                if let (Some(beat), Some(source)) =
                    (heartbeat::parse(&buffer[..length]), ipv4(source))
                {
                    table.accept(beat, source, coarse_now_ns());
                }
            }
            Err(error) => {
                // ICMP errors of earlier sends and the like: nothing to stop for.
                warn!(%error, "reading the UDP heartbeat socket");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn ipv4(source: SocketAddr) -> Option<std::net::Ipv4Addr> {
    match source.ip() {
        IpAddr::V4(addr) => Some(addr),
        IpAddr::V6(addr) => addr.to_ipv4_mapped(),
    }
}
