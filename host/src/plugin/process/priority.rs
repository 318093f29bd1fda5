//! `cpu_shares` for a child: the CPU weight it asks for against the host's, as scheduler
//! niceness of the child's threads and of its session's autogroup (no cgroup needed).

use std::time::Duration;

/// The scheduler's weight of each niceness from 0 to 19 (the kernel's `sched_prio_to_weight`,
/// where nice 0 weighs 1024 as a cgroup's default `cpu.shares` does).
const NICE_WEIGHTS: [u32; 20] = [
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
];

/// The niceness whose weight is nearest to `shares` (on a log scale, as weights compound).
fn nice_for_shares(shares: u32) -> i32 {
    let wanted = f64::from(shares.max(1)).ln();
    let distance = |weight: u32| (f64::from(weight).ln() - wanted).abs();
    (0..)
        .zip(NICE_WEIGHTS)
        .min_by(|(_, a), (_, b)| distance(*a).total_cmp(&distance(*b)))
        .map_or(0, |(nice, _)| nice)
}

/// Gives this process the CPU weight `shares` against the host's: the niceness of this thread
/// (threads started later inherit it) and of the session's autogroup, which is what the
/// scheduler weighs when the process is not in a cgroup of its own (this runner starts a
/// session, so the group is its own). Both are the host's plus the step `shares` asks for, so
/// the ratio holds whatever niceness the host runs at; raising niceness needs no privilege.
pub fn lower(shares: u32, host_pid: u32) {
    let step = nice_for_shares(shares);
    // The runner starts with the niceness of the host thread that started it.
    let host_nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let nice = (host_nice + step).min(MAX_NICE);
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(%error, cpu_shares = shares, "cannot lower the plugin's CPU priority; it runs with the host's");
        return;
    }
    // Absent when the kernel has no autogroups; then the threads' niceness is all there is.
    if std::path::Path::new(AUTOGROUP).exists() {
        let host_group = std::fs::read_to_string(format!("/proc/{host_pid}/autogroup"))
            .ok()
            .and_then(|text| autogroup_nice(&text))
            .unwrap_or(0);
        // A new group starts at 0, and going below needs privilege.
        let group = (host_group + step).clamp(0, MAX_NICE);
        if let Err(error) = set_autogroup_nice(group) {
            tracing::warn!(%error, cpu_shares = shares, "cannot lower the CPU priority of the plugin's autogroup");
        }
    }
    tracing::debug!(cpu_shares = shares, nice, "the plugin's CPU weight is set");
}

const MAX_NICE: i32 = 19;

/// The niceness in an autogroup file's text (`/autogroup-42 nice 3`).
fn autogroup_nice(text: &str) -> Option<i32> {
    text.split_whitespace().last()?.parse().ok()
}

/// Writes this session's autogroup niceness. The kernel takes one such write from an
/// unprivileged process every 100 ms, system-wide, and refuses the others with EAGAIN: retry
/// for a while.
fn set_autogroup_nice(nice: i32) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::write(AUTOGROUP, nice.to_string()) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && tries < 80 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            result => return result,
        }
    }
}

const AUTOGROUP: &str = "/proc/self/autogroup";

#[cfg(test)]
mod tests {
    use super::{autogroup_nice, nice_for_shares};

    #[test]
    fn shares_map_to_the_nearest_weight() {
        assert_eq!(nice_for_shares(1024), 0);
        assert_eq!(nice_for_shares(900), 1);
        assert_eq!(nice_for_shares(512), 3);
        assert_eq!(nice_for_shares(128), 9);
        assert_eq!(nice_for_shares(15), 19);
        assert_eq!(nice_for_shares(2), 19);
    }

    #[test]
    fn autogroup_text_is_read() {
        assert_eq!(autogroup_nice("/autogroup-2196 nice 6\n"), Some(6));
        assert_eq!(autogroup_nice("/autogroup-7 nice -3"), Some(-3));
        assert_eq!(autogroup_nice(""), None);
    }
}
