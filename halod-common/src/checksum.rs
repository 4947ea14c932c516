//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All checksums and 16-bit words here are host-order values of the big-endian
//! wire fields (`u16::from_be_bytes(field)`); the ones' complement sum does not
//! care about byte order as long as every operand uses the same one.

/// Folds a 32-bit accumulator of 16-bit words into a 16-bit ones' complement sum
/// (end-around carry).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` for one 16-bit word of the covered data changing from
/// `old` to `new` (RFC 1624 eqn. 3).
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// Updates checksum `check` for a 32-bit field (an IPv4 address, as its four wire
/// bytes) changing from `old` to `new`.
#[inline(always)]
pub const fn replace_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let sum = !check as u32
        + !u16::from_be_bytes([old[0], old[1]]) as u32
        + !u16::from_be_bytes([old[2], old[3]]) as u32
        + u16::from_be_bytes([new[0], new[1]]) as u32
        + u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(sum)
}

/// The IPv4 header checksum after the TTL is decremented by one. TTL and protocol
/// share one 16-bit word of the header (RFC 791).
#[inline(always)]
pub const fn decrement_ttl(check: u16, ttl: u8, protocol: u8) -> u16 {
    let old = u16::from_be_bytes([ttl, protocol]);
    let new = u16::from_be_bytes([ttl.wrapping_sub(1), protocol]);
    replace_u16(check, old, new)
}

/// The IPv4 header checksum after one address changes and the TTL is decremented:
/// the two updates the gateway makes to every forwarded packet.
#[inline(always)]
pub const fn ipv4_forward(check: u16, old: [u8; 4], new: [u8; 4], ttl: u8, protocol: u8) -> u16 {
    decrement_ttl(replace_addr(check, old, new), ttl, protocol)
}

/// The TCP checksum after an address of the pseudo-header (RFC 793) changes.
#[inline(always)]
pub const fn tcp_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    replace_addr(check, old, new)
}

/// The UDP checksum after an address of the pseudo-header changes. A zero checksum
/// means "none was computed" (RFC 768) and stays zero; a computed checksum of zero
/// is sent as all ones.
#[inline(always)]
pub const fn udp_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_addr(check, old, new) {
        0 => 0xffff,
        updated => updated,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// Full RFC 1071 checksum of `data` (odd length padded with a zero byte).
    fn full(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum = sum.wrapping_add(word as u32);
            // Keep the accumulator from overflowing on long inputs.
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !fold(sum)
    }

    fn ipv4_header(mut header: [u8; 20]) -> [u8; 20] {
        header[0] = 0x45;
        header[10] = 0;
        header[11] = 0;
        let check = full(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        header
    }

    /// Pseudo-header (RFC 793 / 768) followed by the segment with its checksum field
    /// at `check_at` zeroed; returns the checksum the sender would compute.
    fn l4_checksum(
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        segment: &[u8],
        check_at: usize,
    ) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(&src);
        data.extend_from_slice(&dst);
        data.push(0);
        data.push(protocol);
        data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        let start = data.len();
        data.extend_from_slice(segment);
        data[start + check_at] = 0;
        data[start + check_at + 1] = 0;
        full(&data)
    }

    proptest! {
        #[test]
        fn ipv4_forward_matches_recompute(
            header in any::<[u8; 20]>(),
            new_dst in any::<[u8; 4]>(),
            ttl in 2u8..=255,
            rewrite_source in any::<bool>(),
        ) {
            let mut header = header;
            header[8] = ttl;
            let before = ipv4_header(header);
            let check = u16::from_be_bytes([before[10], before[11]]);
            let field = if rewrite_source { 12 } else { 16 };
            let old: [u8; 4] = before[field..field + 4].try_into().unwrap();

            let mut after = before;
            after[field..field + 4].copy_from_slice(&new_dst);
            after[8] = ttl - 1;
            let recomputed = ipv4_header(after);

            let updated = ipv4_forward(check, old, new_dst, ttl, before[9]);
            prop_assert_eq!(updated.to_be_bytes(), [recomputed[10], recomputed[11]]);
            // And the receiver's check: the whole header sums to zero.
            after[10..12].copy_from_slice(&updated.to_be_bytes());
            prop_assert_eq!(full(&after), 0);
        }

        #[test]
        fn tcp_addr_matches_recompute(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            new in any::<[u8; 4]>(),
            segment in proptest::collection::vec(any::<u8>(), 20..200),
        ) {
            let check = l4_checksum(src, dst, 6, &segment, 16);
            let recomputed = l4_checksum(src, new, 6, &segment, 16);
            prop_assert_eq!(tcp_addr(check, dst, new), recomputed);
        }

        #[test]
        fn udp_addr_matches_recompute(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            new in any::<[u8; 4]>(),
            segment in proptest::collection::vec(any::<u8>(), 8..200),
        ) {
            let zero_means_none = |check: u16| if check == 0 { 0xffff } else { check };
            let check = zero_means_none(l4_checksum(src, dst, 17, &segment, 6));
            let recomputed = zero_means_none(l4_checksum(src, new, 17, &segment, 6));
            prop_assert_eq!(udp_addr(check, dst, new), recomputed);
            // A sender that did not compute a checksum keeps none.
            prop_assert_eq!(udp_addr(0, dst, new), 0);
        }

        #[test]
        fn replace_u16_matches_recompute(words in proptest::collection::vec(any::<u16>(), 1..40), index in any::<usize>(), new in any::<u16>()) {
            let mut words = words;
            let index = index % words.len();
            let bytes = |words: &[u16]| words.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
            let check = full(&bytes(&words));
            let old = words[index];
            words[index] = new;
            let recomputed = full(&bytes(&words));
            // Ones' complement has two zeros; they only differ when the data is all
            // zero words, where a full recompute gives 0xffff.
            prop_assume!(words.iter().any(|w| *w != 0));
            prop_assert_eq!(replace_u16(check, old, new), recomputed);
        }
    }

    #[test]
    fn udp_result_zero_is_sent_as_all_ones() {
        // Choose a checksum whose update lands exactly on zero.
        let old = [0, 0, 0, 1];
        let new = [0, 0, 0, 2];
        // ~(~c + ~1 + 2) == 0  <=>  ~c + 1 == 0xffff  <=>  c == 1 (ones' complement).
        assert_eq!(replace_addr(1, old, new), 0);
        assert_eq!(udp_addr(1, old, new), 0xffff);
    }
}
