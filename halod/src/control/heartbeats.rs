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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use halod_common::heartbeat::{Heartbeat, encode};

    /// Waits until `index`'s stamp differs from `before`, at most a second.
    async fn stamped(table: &HeartbeatTable, index: u32, before: Option<u64>) -> bool {
        for _ in 0..100 {
            if table.last_ns(index) != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn heartbeats_that_reach_the_socket_are_checked_and_stamped() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let table = HeartbeatTable::in_memory(4);
        // The node at 127.0.0.1 (the policy refuses loopback node addresses;
        // the table does not care).
        assert!(table.arm(2, 77, Ipv4Addr::LOCALHOST, 1));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(socket, table.clone(), shutdown.clone()));
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        node.connect(("127.0.0.1", port)).await.unwrap();

        // Not heartbeats, or not this node's: nothing stamped.
        let good = encode(Heartbeat { id: 2, key: 77 });
        let mut longer = good.to_vec();
        longer.push(0);
        for payload in [
            &encode(Heartbeat { id: 2, key: 78 })[..],
            &encode(Heartbeat { id: 3, key: 77 })[..],
            &good[..15],
            &longer[..],
        ] {
            node.send(payload).await.unwrap();
        }
        assert!(
            !stamped(&table, 2, Some(1)).await,
            "stamped by a wrong datagram"
        );
        node.send(&good).await.unwrap();
        assert!(
            stamped(&table, 2, Some(1)).await,
            "the heartbeat was not stamped"
        );
        shutdown.cancel();
        served.await.unwrap();
    }
}
