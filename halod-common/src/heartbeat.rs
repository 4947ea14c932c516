//! Protocol version 2's UDP heartbeat (docs/protocol.md, "UDP heartbeats"):
//! a 16-byte datagram, `HLHB`, the node's id (big-endian u32) and its
//! session key (8 bytes, big-endian u64). The XDP program and the daemon's
//! fallback socket parse it with the same function.

/// Length of a heartbeat datagram's payload, in bytes.
pub const PAYLOAD_LEN: usize = 16;
/// The first four bytes of every heartbeat.
pub const MAGIC: [u8; 4] = *b"HLHB";

/// A heartbeat's id and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node's counter index (`hb_udp.id` of its `welcome`).
    pub id: u32,
    /// The session key (`hb_udp.key`); 0 never matches.
    pub key: u64,
}

/// The heartbeat in a UDP payload, or `None` when the payload is not one
/// (another length, another magic).
#[inline(always)]
pub fn parse(payload: &[u8]) -> Option<Heartbeat> {
    if payload.len() != PAYLOAD_LEN {
        return None;
    }
    parse_exact(payload.try_into().ok()?)
}

/// As [`parse`], for a payload known to be [`PAYLOAD_LEN`] bytes long.
#[inline(always)]
pub fn parse_exact(payload: &[u8; PAYLOAD_LEN]) -> Option<Heartbeat> {
    if payload[0] != MAGIC[0]
        || payload[1] != MAGIC[1]
        || payload[2] != MAGIC[2]
        || payload[3] != MAGIC[3]
    {
        return None;
    }
    Some(Heartbeat {
        id: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
        key: u64::from_be_bytes([
            payload[8],
            payload[9],
            payload[10],
            payload[11],
            payload[12],
            payload[13],
            payload[14],
            payload[15],
        ]),
    })
}

/// The payload of a heartbeat.
pub fn encode(heartbeat: Heartbeat) -> [u8; PAYLOAD_LEN] {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..4].copy_from_slice(&MAGIC);
    payload[4..8].copy_from_slice(&heartbeat.id.to_be_bytes());
    payload[8..].copy_from_slice(&heartbeat.key.to_be_bytes());
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_round_trips_and_has_the_documented_layout() {
        let heartbeat = Heartbeat {
            id: 0x0102_0304,
            key: 0x1122_3344_5566_7788,
        };
        let payload = encode(heartbeat);
        assert_eq!(
            payload,
            [
                b'H', b'L', b'H', b'B', 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88
            ]
        );
        assert_eq!(parse(&payload), Some(heartbeat));
    }

    #[test]
    fn other_payloads_are_not_heartbeats() {
        let payload = encode(Heartbeat { id: 7, key: 9 });
        assert_eq!(parse(&payload[..15]), None);
        let mut longer = [0u8; 17];
        longer[..16].copy_from_slice(&payload);
        assert_eq!(parse(&longer), None);
        assert_eq!(parse(&[]), None);
        for i in 0..4 {
            let mut wrong = payload;
            wrong[i] ^= 0x20;
            assert_eq!(parse(&wrong), None, "magic byte {i} changed");
        }
    }
}
