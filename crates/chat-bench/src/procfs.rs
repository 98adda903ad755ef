//! What the kernel knows about the server process: CPU time, memory and threads from
//! `/proc/PID`, read at the edges of a run, never from inside the server.
//!
//! - CPU: nanoseconds on a CPU from `/proc/PID/task/*/schedstat`, summed over threads (or
//!   `utime + stime` from `/proc/PID/stat`, in 10 ms ticks, where schedstat is missing), read
//!   when the clock starts and when the last line has arrived; the difference is what the
//!   server spent on the workload.
//! - Memory: `VmRSS` (resident now) and `VmHWM` (the peak since the process started, kept by
//!   the kernel, so no sampling can miss it) from `/proc/PID/status`. Every comparison run
//!   starts a fresh server, so the peak belongs to that run.
//! - Threads: `Threads:` from `/proc/PID/status`.
//! - Context switches: `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` summed over
//!   `/proc/PID/task/*/status` (the per-process file counts only the main thread).
//! - Open descriptors: the entries of `/proc/PID/fd` (a soak watches them for leaks).
//! - Memory mappings: the lines of `/proc/PID/maps` (each thread of v1 adds some, and Linux
//!   caps a process at `vm.max_map_count` of them).
//! - Kernel memory: `Slab`, `KernelStack` and `PageTables` from `/proc/meminfo`. That file is
//!   system-wide, so a difference across a run counts both ends of every loopback connection
//!   (chat-bench's and the server's sockets) plus whatever else the machine did meanwhile;
//!   with thousands of connections, the connections dominate.

use std::path::PathBuf;

use anyhow::Context as _;
use nix::unistd::{sysconf, SysconfVar};

/// The kernel's own memory now, machine-wide, in KiB: slab caches (sockets, inodes, files,
/// dentries, task structures), kernel stacks (one per thread) and page tables.
pub fn kernel_memory_kb() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    parse_kernel_memory(&text).context("unexpected contents of /proc/meminfo")
}

/// `Slab + KernelStack + PageTables` from the text of `/proc/meminfo`, in KiB.
pub fn parse_kernel_memory(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    };
    Some(field("Slab:")? + field("KernelStack:")? + field("PageTables:")?)
}

/// A reading of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub threads: u64,
}

/// A process whose resource use chat-bench reports.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub pid: i32,
}

impl Process {
    fn path(self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }

    /// Memory and threads now.
    pub fn status(self) -> anyhow::Result<Status> {
        let path = self.path("status");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has the server exited?)", path.display()))?;
        parse_status(&text).with_context(|| format!("unexpected contents of {}", path.display()))
    }

    /// How many descriptors it holds open now: sockets, the listener, pipes, its runtime's own.
    pub fn open_fds(self) -> anyhow::Result<usize> {
        let path = self.path("fd");
        let entries = std::fs::read_dir(&path)
            .with_context(|| format!("cannot read {} (has the server exited?)", path.display()))?;
        Ok(entries.count())
    }

    /// How many memory mappings it has now.
    pub fn memory_maps(self) -> anyhow::Result<usize> {
        let path = self.path("maps");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has the server exited?)", path.display()))?;
        Ok(text.lines().count())
    }

    /// CPU time and context switches of all its threads so far.
    ///
    /// CPU comes from each thread's `schedstat` (nanoseconds on a CPU), because `/proc/PID/stat`
    /// counts in 10 ms ticks, too coarse for a run of a tenth of a second; it falls back to
    /// `stat` where schedstat is missing. Threads that already exited are not counted, which is
    /// fine for a run during which no client leaves.
    pub fn usage(self) -> anyhow::Result<Usage> {
        let mut usage = Usage::default();
        let mut schedstat_complete = true;
        if let Ok(tasks) = std::fs::read_dir(self.path("task")) {
            for task in tasks.flatten() {
                let path = task.path();
                match std::fs::read_to_string(path.join("schedstat"))
                    .ok()
                    .as_deref()
                    .and_then(parse_schedstat)
                {
                    Some(nanos) => usage.cpu_s += nanos as f64 / 1e9,
                    None => schedstat_complete = false,
                }
                if let Ok(status) = std::fs::read_to_string(path.join("status")) {
                    usage.context_switches += parse_context_switches(&status);
                }
            }
        }
        if !schedstat_complete || usage.cpu_s == 0.0 {
            usage.cpu_s = self.cpu_seconds()?;
        }
        Ok(usage)
    }

    /// User plus system CPU seconds of all its threads so far, in clock ticks (10 ms).
    fn cpu_seconds(self) -> anyhow::Result<f64> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has the server exited?)", path.display()))?;
        let ticks = parse_cpu_ticks(&text)
            .with_context(|| format!("unexpected contents of {}", path.display()))?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }
}

/// CPU time and context switches, summed over a process's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub context_switches: u64,
}

/// The first field of `/proc/PID/task/TID/schedstat`: nanoseconds spent on a CPU.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc times in USER_HZ, which is 100 everywhere in practice.
    const USER_HZ_USUAL: f64 = 100.0;
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => USER_HZ_USUAL,
    }
}

/// The value of a `Name:   1234 kB` line, in the file's unit.
fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Parses `VmRSS`, `VmHWM` and `Threads` from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Status> {
    Some(Status {
        rss_kb: status_field(text, "VmRSS")?,
        peak_rss_kb: status_field(text, "VmHWM")?,
        threads: status_field(text, "Threads")?,
    })
}

fn parse_context_switches(text: &str) -> u64 {
    status_field(text, "voluntary_ctxt_switches").unwrap_or(0)
        + status_field(text, "nonvoluntary_ctxt_switches").unwrap_or(0)
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`. The command name in
/// parentheses may itself hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_cpu_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    const UTIME_AFTER_NAME: usize = 14 - 3;
    let mut fields = after_name.split_whitespace().skip(UTIME_AFTER_NAME);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tv4-async\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  876544 kB\nVmHWM:\t   31400 kB\nVmRSS:\t   12044 kB\n\
        Threads:\t3\nvoluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n";

    #[test]
    fn status_gives_rss_peak_and_threads() {
        assert_eq!(
            parse_status(STATUS),
            Some(Status {
                rss_kb: 12044,
                peak_rss_kb: 31400,
                threads: 3
            })
        );
        assert_eq!(parse_context_switches(STATUS), 157);
    }

    #[test]
    fn status_without_memory_lines_is_rejected() {
        // A zombie's status has no Vm lines.
        assert_eq!(
            parse_status("Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n"),
            None
        );
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(
            parse_schedstat("211762196 33326145 402\n"),
            Some(211_762_196)
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn stat_cpu_is_utime_plus_stime_even_with_odd_names() {
        let stat = "4242 (v1 (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 12345 1000000 300 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = Process {
            pid: std::process::id() as i32,
        };
        let status = me.status().unwrap();
        assert!(status.rss_kb > 0 && status.peak_rss_kb >= status.rss_kb);
        assert!(status.threads >= 1);
        assert!(
            me.open_fds().unwrap() >= 1,
            "at least the one reading /proc/self/fd"
        );
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        // Burn CPU until the kernel's accounting (updated at its ticks) shows some.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut usage = me.usage().unwrap();
        while usage.cpu_s == 0.0 && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                std::hint::black_box(0);
            }
            usage = me.usage().unwrap();
        }
        assert!(usage.cpu_s > 0.0, "{usage:?}");
    }

    #[test]
    fn kernel_memory_adds_slab_stacks_and_page_tables() {
        let meminfo = "MemTotal: 24000000 kB\nSlab:  441156 kB\nSReclaimable: 379300 kB\n\
                       KernelStack:  2904 kB\nPageTables:  1000 kB\n";
        assert_eq!(parse_kernel_memory(meminfo), Some(441_156 + 2_904 + 1_000));
        assert_eq!(parse_kernel_memory("Slab: 1 kB\n"), None);
    }
}
