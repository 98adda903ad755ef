//! What the kernel knows about the server process: CPU time, memory and threads from
//! `/proc/PID`, read at the edges of a run, never from inside the server, through the `procfs`
//! crate (which parses each file and names its fields).
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

use anyhow::Context as _;
use procfs::prelude::*;

/// The kernel's own memory now, machine-wide, in KiB: slab caches (sockets, inodes, files,
/// dentries, task structures), kernel stacks (one per thread) and page tables.
pub fn kernel_memory_kb() -> anyhow::Result<u64> {
    let meminfo = procfs::Meminfo::current().context("cannot read /proc/meminfo")?;
    let missing = "/proc/meminfo has no KernelStack or PageTables";
    let bytes = meminfo.slab
        + meminfo.kernel_stack.context(missing)?
        + meminfo.page_tables.context(missing)?;
    Ok(bytes / 1024)
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
    fn proc(self) -> anyhow::Result<procfs::process::Process> {
        procfs::process::Process::new(self.pid)
            .with_context(|| format!("cannot read /proc/{} (has the server exited?)", self.pid))
    }

    /// Memory and threads now.
    pub fn status(self) -> anyhow::Result<Status> {
        let status = self
            .proc()?
            .status()
            .with_context(|| self.unreadable("status"))?;
        // A zombie's status has no Vm lines: it is no longer a server to measure.
        let missing = || format!("/proc/{}/status has no memory lines", self.pid);
        Ok(Status {
            rss_kb: status.vmrss.with_context(missing)?,
            peak_rss_kb: status.vmhwm.with_context(missing)?,
            threads: status.threads,
        })
    }

    /// How many descriptors it holds open now: sockets, the listener, pipes, its runtime's own.
    pub fn open_fds(self) -> anyhow::Result<usize> {
        self.proc()?
            .fd_count()
            .with_context(|| self.unreadable("fd"))
    }

    /// How many memory mappings it has now.
    pub fn memory_maps(self) -> anyhow::Result<usize> {
        Ok(self
            .proc()?
            .maps()
            .with_context(|| self.unreadable("maps"))?
            .len())
    }

    /// CPU time and context switches of all its threads so far.
    ///
    /// CPU comes from each thread's `schedstat` (nanoseconds on a CPU), because `/proc/PID/stat`
    /// counts in 10 ms ticks, too coarse for a run of a tenth of a second; it falls back to
    /// `stat` where schedstat is missing. Threads that already exited are not counted, which is
    /// fine for a run during which no client leaves.
    pub fn usage(self) -> anyhow::Result<Usage> {
        let process = self.proc()?;
        let mut usage = Usage::default();
        let mut schedstat_complete = true;
        if let Ok(tasks) = process.tasks() {
            for task in tasks.flatten() {
                match task.schedstat() {
                    Ok(schedstat) => usage.cpu_s += schedstat.sum_exec_runtime as f64 / 1e9,
                    Err(_) => schedstat_complete = false,
                }
                if let Ok(status) = task.status() {
                    usage.context_switches += status.voluntary_ctxt_switches.unwrap_or(0)
                        + status.nonvoluntary_ctxt_switches.unwrap_or(0);
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
        let stat = self
            .proc()?
            .stat()
            .with_context(|| self.unreadable("stat"))?;
        Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }

    fn unreadable(self, file: &str) -> String {
        format!(
            "cannot read /proc/{}/{file} (has the server exited?)",
            self.pid
        )
    }
}

/// CPU time and context switches, summed over a process's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub context_switches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(me.memory_maps().unwrap() >= 1);
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
        assert!(usage.context_switches > 0, "{usage:?}");
    }

    #[test]
    fn kernel_memory_is_some_megabytes() {
        let kb = kernel_memory_kb().unwrap();
        assert!(kb > 1024, "{kb} KiB");
    }

    #[test]
    fn an_exited_process_is_an_error_not_a_panic() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let gone = Process { pid };
        assert!(gone.status().is_err());
        assert!(gone.usage().is_err());
    }
}
