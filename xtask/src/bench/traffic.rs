//! Packet generation and counting for the forwarding benchmark.
//!
//! - The generator is `bench_tx` (returns `XDP_TX`) run by `BPF_PROG_TEST_RUN` with
//!   `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18+; aya's `TestRunAttrs::xdp_live_frames`):
//!   the kernel builds a real frame per repetition and, for `XDP_TX`, transmits it out of
//!   the interface named by `ctx_in.ingress_ifindex`. Out of a veth, that is straight into
//!   the peer's receive ring: one program run per frame and no socket, so one core offers
//!   far more than trafgen's ~0.3 Mpps.
//! - The sink is `bench_sink` attached (XDP, native) to an interface: it counts and drops
//!   frames for one destination address, in per-CPU counters read here.
//! - Gateway CPU time is read from the NAPI kernel threads of the gateway's interfaces
//!   (`/proc/PID/schedstat`, nanoseconds on CPU): with threaded NAPI
//!   (`/sys/class/net/DEV/threaded`), all receive processing of an interface, XDP or the
//!   kernel's forwarding and NAT, runs in its own kernel thread, which we pin to a core.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Array, PerCpuArray};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use crate::command;
use crate::testbed::run_in_netns;

/// Length of the generator's frames (`TX_LEN` in bench-ebpf).
const TX_LEN: usize = 60;
/// Frames per live-frames batch (the kernel's default is 64).
const BATCH: u32 = 64;
/// Most frames per `BPF_PROG_TEST_RUN` call when sending flat out.
const BURST: u32 = 1 << 16;

/// A UDP/IPv4 Ethernet frame of `len` bytes (without FCS; 60 is the "64-byte packet" of
/// a wire), with correct IPv4 and UDP checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    len: usize,
) -> Vec<u8> {
    assert!(len >= 42, "a UDP/IPv4 frame has at least 42 bytes");
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let check = internet_checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&dst_port.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for (i, byte) in f[42..].iter_mut().enumerate() {
        *byte = b'a' + (i % 26) as u8;
    }
    let mut check = internet_checksum(&f[34..], pseudo_header(src, dst, 17, udp_len.into()));
    if check == 0 {
        check = 0xffff;
    }
    f[40..42].copy_from_slice(&check.to_be_bytes());
    f
}

/// A TCP/IPv4 Ethernet frame of `len` bytes (at least 54) with flags `flags`
/// (0x10: a bare ACK of an open connection) and correct checksums.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    len: usize,
) -> Vec<u8> {
    assert!(len >= 54, "a TCP/IPv4 frame has at least 54 bytes");
    // The UDP frame's Ethernet and IPv4 headers, with protocol 6 (and the
    // header checksum done again).
    let mut f = udp_frame(src_mac, dst_mac, src, dst, src_port, dst_port, len);
    f[23] = 6;
    f[24..26].copy_from_slice(&[0, 0]);
    let check = internet_checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&2000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let check = internet_checksum(&f[34..], pseudo_header(src, dst, 6, (len - 34) as u32));
    f[50..52].copy_from_slice(&check.to_be_bytes());
    f
}

/// The partial sum of the TCP/UDP pseudo header: addresses, protocol, length.
fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u32, len: u32) -> u32 {
    let words = |addr: Ipv4Addr| {
        let o = addr.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    words(src) + words(dst) + protocol + len
}

/// RFC 1071 checksum of `data`, starting from the partial sum `initial`.
fn internet_checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{dev}/address");
    // /sys/class/net shows the devices of the namespace that mounted sysfs, so ask `ip`.
    let out = command::run(Command::new("ip").args(["-n", ns, "-br", "link", "show", dev]))?;
    let text = out
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("no MAC address in `ip -br link` output {out:?} ({path})"))?;
    parse_mac(text)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {text:?}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow!("bad MAC address {text:?}"))
}

/// Pins the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Pins process or thread `pid` to one CPU (`taskset -p`).
pub fn pin_pid(pid: i32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(pid), &set)
        .with_context(|| format!("pinning process {pid} to CPU {cpu}"))
}

/// What one generator run sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends copies of `frame` out of `dev` in namespace `ns` for `duration`, flat out or at
/// `rate` frames per second, from a thread pinned to `cpu`.
pub fn generate(
    bench_xdp: &Path,
    ns: &str,
    dev: &str,
    frame: &[u8],
    duration: Duration,
    rate: Option<u64>,
    cpu: usize,
) -> Result<Sent> {
    let object = fs::read(bench_xdp).with_context(|| format!("reading {}", bench_xdp.display()))?;
    run_in_netns(ns, || -> Result<Sent> {
        pin_thread(cpu)?;
        let mut ebpf = Ebpf::load(&object).context("loading bench-ebpf")?;
        if frame.len() != TX_LEN {
            bail!(
                "the generator sends {TX_LEN}-byte frames, not {}",
                frame.len()
            );
        }
        let mut template = [0u8; 64];
        template[..TX_LEN].copy_from_slice(frame);
        Array::<_, [u8; 64]>::try_from(ebpf.map_mut("TX_FRAME").context("no TX_FRAME map")?)?
            .set(0, template, 0)
            .context("writing TX_FRAME")?;
        let program: &mut Xdp = ebpf
            .program_mut("bench_tx")
            .context("bench-ebpf has no bench_tx")?
            .try_into()
            .context("bench_tx is not XDP")?;
        program.load().context("loading bench_tx (BPF_PROG_LOAD)")?;
        let ifindex = nix::net::if_::if_nametoindex(dev)
            .with_context(|| format!("no interface {dev} in namespace {ns}"))?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data = 0 and data_end = the frame length.
        let mut ctx = Vec::with_capacity(24);
        for word in [0, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&word.to_ne_bytes());
        }
        let start = Instant::now();
        let mut frames = 0u64;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            let repeat = match rate {
                None => BURST,
                Some(rate) => {
                    let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
                    if due <= frames {
                        thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    (due - frames).min(u64::from(BURST)) as u32
                }
            };
            let options = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::new()
            };
            program.test_run(options).map_err(|e| {
                anyhow!(
                    "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on {dev} in {ns} \
                     failed: {e} (needs Linux 5.18+)"
                )
            })?;
            frames += u64::from(repeat);
        }
        Ok(Sent {
            frames,
            elapsed: start.elapsed(),
        })
    })?
}

/// `bench_sink` attached to an interface; detached when dropped.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches the sink to `dev` in `ns`, counting and dropping frames to `addr`.
    pub fn attach(bench_xdp: &Path, ns: &str, dev: &str, addr: Ipv4Addr) -> Result<Sink> {
        let object =
            fs::read(bench_xdp).with_context(|| format!("reading {}", bench_xdp.display()))?;
        let ebpf = run_in_netns(ns, || -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(&object).context("loading bench-ebpf")?;
            let mut wanted: Array<_, [u8; 4]> =
                Array::try_from(ebpf.map_mut("SINK_ADDR").context("no SINK_ADDR map")?)?;
            wanted
                .set(0, addr.octets(), 0)
                .context("writing SINK_ADDR")?;
            let program: &mut Xdp = ebpf
                .program_mut("bench_sink")
                .context("bench-ebpf has no bench_sink")?
                .try_into()?;
            program.load().context("loading bench_sink")?;
            program
                .attach(dev, XdpMode::default())
                .with_context(|| format!("attaching bench_sink to {dev} in {ns}"))?;
            Ok(ebpf)
        })??;
        Ok(Sink { ebpf })
    }

    /// Frames counted (and dropped) so far.
    pub fn count(&self) -> Result<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("SINK_COUNT").context("no SINK_COUNT map")?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }
}

/// Switches `dev` in `ns` to threaded NAPI and returns the process ids of the NAPI kernel
/// threads that appeared (named `napi/DEV-ID`; told apart from other namespaces' devices
/// of the same name by appearing just now).
pub fn thread_napi(ns: &str, dev: &str) -> Result<Vec<i32>> {
    let before = napi_threads(dev)?;
    // `ip netns exec` mounts a sysfs of the namespace, so /sys/class/net/DEV is ours.
    command::run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{dev}/threaded"),
    ]))
    .with_context(|| format!("enabling threaded NAPI on {dev} in {ns}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let new: Vec<i32> = napi_threads(dev)?.difference(&before).copied().collect();
        if !new.is_empty() {
            return Ok(new);
        }
        if Instant::now() > deadline {
            bail!("no napi/{dev}-* kernel thread appeared after enabling threaded NAPI in {ns}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn napi_threads(dev: &str) -> Result<BTreeSet<i32>> {
    let prefix = format!("napi/{dev}-");
    let mut pids = BTreeSet::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm"))
            && comm.trim().starts_with(&prefix)
        {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// Nanoseconds on CPU of the given threads, summed (`/proc/PID/schedstat`, first field).
pub fn cpu_ns(pids: &[i32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("bad /proc/{pid}/schedstat: {text:?}"))?;
    }
    Ok(total)
}

/// Nanoseconds on CPU of a whole process (all threads): utime + stime from
/// `/proc/PID/stat`, in clock ticks converted to nanoseconds.
pub fn process_cpu_ns(pid: i32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields after it are plain.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, utime 14, stime 15 (1-based over the whole line).
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("bad /proc/{pid}/stat field {i}"))
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok((ticks(14)? + ticks(15)?) * 1_000_000_000 / hz)
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: i32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 1),
            40000,
            8000,
            60,
        );
        assert_eq!(f.len(), 60);
        // A correct header sums to 0xffff, i.e. its checksum over itself is 0.
        assert_eq!(internet_checksum(&f[14..34], 0), 0);
        let mut pseudo = 0u32;
        for w in [198u32 << 8 | 18, 2, 198 << 8 | 18, 1] {
            pseudo += w;
        }
        pseudo += 17 + 26;
        assert_eq!(internet_checksum(&f[34..], pseudo), 0);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        assert!(parse_mac("02:00").is_err());
    }
}
