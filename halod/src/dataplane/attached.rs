//! Which XDP program an interface already runs, asked from the kernel over
//! rtnetlink (`RTM_GETLINK`, attribute `IFLA_XDP`) before halod attaches its
//! own. An interface runs one XDP program per mode and native and generic
//! exclude each other, so a program someone else attached makes halod's
//! attach fail with a bare `bpf_link_create` error; with this the operator
//! is told which program is in the way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub id: u32,
    /// `native`, `generic` or `offloaded`.
    pub mode: &'static str,
    /// The program's name as the kernel has it (`None` when it cannot be read).
    pub name: Option<String>,
}

// linux/if_link.h
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
/// Nested attributes carry this flag in their type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HEADER: usize = 16;
const IFINFOMSG: usize = 16;

/// The XDP program attached to interface `ifindex`, if any.
pub fn attached_program(ifindex: u32) -> io::Result<Option<AttachedProgram>> {
    let reply = get_link(ifindex)?;
    let Some(xdp) = attributes(reply.get(NLMSG_HEADER + IFINFOMSG..).unwrap_or_default())
        .find(|(kind, _)| *kind == IFLA_XDP)
        .map(|(_, value)| value)
    else {
        return Ok(None);
    };
    let mut attached = 0u8;
    let mut ids = [None; 4];
    for (kind, value) in attributes(xdp) {
        let number = || {
            value
                .get(..4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        };
        match kind {
            IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => ids[0] = number(),
            IFLA_XDP_DRV_PROG_ID => ids[1] = number(),
            IFLA_XDP_SKB_PROG_ID => ids[2] = number(),
            IFLA_XDP_HW_PROG_ID => ids[3] = number(),
            _ => {}
        }
    }
    let (id, mode) = match attached {
        0 => return Ok(None),
        XDP_ATTACHED_DRV => (ids[0].or(ids[1]), "native"),
        XDP_ATTACHED_SKB => (ids[0].or(ids[2]), "generic"),
        XDP_ATTACHED_HW => (ids[0].or(ids[3]), "offloaded"),
        // Several modes at once: name the first one found.
        _ => match ids {
            [_, Some(id), _, _] => (Some(id), "native"),
            [_, _, Some(id), _] => (Some(id), "generic"),
            [_, _, _, id] => (id, "offloaded"),
        },
    };
    let Some(id) = id.filter(|id| *id != 0) else {
        return Ok(None);
    };
    Ok(Some(AttachedProgram {
        id,
        mode,
        name: program_name(id),
    }))
}

fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == id)
        .and_then(|program| program.name_as_str().map(str::to_string))
}

/// Sends `RTM_GETLINK` for `ifindex`; returns the reply message.
fn get_link(ifindex: u32) -> io::Result<Vec<u8>> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = Vec::with_capacity(NLMSG_HEADER + IFINFOMSG);
    request.extend_from_slice(&((NLMSG_HEADER + IFINFOMSG) as u32).to_ne_bytes());
    request.extend_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    request.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    request.push(libc::AF_UNSPEC as u8);
    request.push(0);
    request.extend_from_slice(&0u16.to_ne_bytes()); // device type
    request.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes()); // flags
    request.extend_from_slice(&0u32.to_ne_bytes()); // change mask
    // SAFETY: the buffer is valid for its length; the kernel is the peer
    // (a netlink socket without a destination sends to the kernel).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for writes of its length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(received as usize);
    if reply.len() < NLMSG_HEADER + 4 {
        return Err(io::Error::other("short rtnetlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes(reply[16..20].try_into().unwrap());
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != libc::RTM_NEWLINK || reply.len() < NLMSG_HEADER + IFINFOMSG {
        return Err(io::Error::other(format!(
            "unexpected rtnetlink reply type {kind}"
        )));
    }
    Ok(reply)
}

/// The attributes (type, value) in `bytes`, each aligned to 4 bytes.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let value = &bytes[4..length];
        bytes = bytes.get((length + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_their_padding() {
        // IFLA_XDP { ATTACHED = 1 (u8, padded), PROG_ID = 42 } then IFNAME "lo".
        let mut xdp = Vec::new();
        xdp.extend_from_slice(&5u16.to_ne_bytes());
        xdp.extend_from_slice(&IFLA_XDP_ATTACHED.to_ne_bytes());
        xdp.extend_from_slice(&[1, 0, 0, 0]);
        xdp.extend_from_slice(&8u16.to_ne_bytes());
        xdp.extend_from_slice(&IFLA_XDP_PROG_ID.to_ne_bytes());
        xdp.extend_from_slice(&42u32.to_ne_bytes());
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + xdp.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&(IFLA_XDP | 0x8000).to_ne_bytes());
        bytes.extend_from_slice(&xdp);
        bytes.extend_from_slice(&7u16.to_ne_bytes());
        bytes.extend_from_slice(&3u16.to_ne_bytes());
        bytes.extend_from_slice(b"lo\0\0");
        let outer: Vec<(u16, &[u8])> = attributes(&bytes).collect();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[0].0, IFLA_XDP);
        assert_eq!(outer[1], (3, &b"lo\0"[..]));
        let inner: Vec<(u16, &[u8])> = attributes(outer[0].1).collect();
        assert_eq!(inner[0], (IFLA_XDP_ATTACHED, &[1u8][..]));
        assert_eq!(inner[1], (IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()[..]));
    }

    #[test]
    fn loopback_runs_no_xdp_program() {
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        assert_eq!(attached_program(lo).unwrap(), None);
        let error = attached_program(999_999).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENODEV), "{error}");
    }
}
