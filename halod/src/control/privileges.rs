//! Whether this process may run the gateway: load and attach XDP programs
//! (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN before Linux 5.8) and change
//! network devices (CAP_NET_ADMIN). Asked before anything else, so that a
//! user without them is told so, not about the first file they cannot write.

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `Err` with what to do when the effective capabilities fall short for
/// `command` (`halod run`, `halod teardown`).
pub fn missing(command: &str) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|error| format!("reading /proc/self/status for the capabilities: {error}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("/proc/self/status has no CapEff line")?;
    match missing_from(effective) {
        missing if missing.is_empty() => Ok(()),
        missing => Err(format!(
            "{command} needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
             (deploy/halod.service grants them); this process lacks {}: run it as root (sudo) \
             or under that unit",
            missing.join(", ")
        )),
    }
}

/// The capabilities `effective` lacks, by name.
fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_missing_is_named() {
        assert!(missing_from(u64::MAX).is_empty(), "root");
        assert_eq!(missing_from(0), ["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"]);
        let unit = 1 << CAP_NET_ADMIN | 1 << CAP_BPF | 1 << CAP_PERFMON;
        assert!(missing_from(unit).is_empty());
        let old_kernel = 1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN;
        assert!(missing_from(old_kernel).is_empty());
        assert_eq!(missing_from(1 << CAP_BPF), ["CAP_NET_ADMIN", "CAP_PERFMON"]);
    }
}
