//! What a comparison measured: every run's record, the medians over repeats, the machine,
//! and the folder they are written to. `results.json` is [`Results`] serialised.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use crate::load::RunReport;
use crate::plans::{versions_for, Kind, Plan, V4_TLS, V4_WS};
use crate::report::error_banner;
use crate::tally::LatencySummary;
use crate::units::{bytes, kilobytes, micros, per_second};

/// One comparison run: which version, which workload, and what came of it.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub version: String,
    pub workload: Kind,
    /// Its size: the crowd runs one workload at several.
    pub clients: usize,
    pub repeat: u32,
    pub report: Option<RunReport>,
    /// Why the run could not be measured (a limit hit, a server that did not start).
    pub error: Option<String>,
    /// The server's last log lines (warnings only: it ran with RUST_LOG=warn).
    pub server_log: Vec<String>,
}

/// What is wrong with a run, if anything.
pub fn record_problem(record: &RunRecord) -> Option<String> {
    if let Some(error) = &record.error {
        return Some(error.clone());
    }
    let report = record.report.as_ref()?;
    report.has_errors().then(|| error_banner(report))
}

/// The one line a comparison prints per run.
pub fn run_line(record: &RunRecord) -> String {
    let Some(report) = &record.report else {
        return "FAILED (see below)".to_owned();
    };
    let server = report.server.as_ref();
    if report.workload.messages == 0 {
        return format!(
            "{} clients in after {:.0} ms; server RSS {} per client, {} threads",
            report.workload.clients,
            report.accept_ms,
            server.map_or("-".to_owned(), |s| bytes(s.rss_per_client_bytes)),
            server.map_or("-".to_owned(), |s| s.threads.to_string()),
        );
    }
    let latency = report.latency.as_ref().map_or("-".to_owned(), |l| {
        format!("p50 {}, p99 {}", micros(l.p50_us), micros(l.p99_us))
    });
    format!(
        "{} deliveries, {latency}, peak RSS {}, lost {}",
        per_second(report.deliveries_per_s),
        server.map_or("-".to_owned(), |s| kilobytes(s.peak_rss_kb)),
        report.lost
    )
}

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mb: u64,
}

impl Machine {
    pub fn this_one() -> Machine {
        use procfs::Current as _;
        let cpu_model = procfs::CpuInfo::current()
            .ok()
            .and_then(|cpus| cpus.model_name(0).map(str::to_owned));
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpu_model.unwrap_or_else(|| "unknown".to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".to_owned(), |k| k.trim().to_owned()),
            memory_mb: procfs::Meminfo::current().map_or(0, |m| m.mem_total / 1024 / 1024),
        }
    }
}

/// Medians over the repeats of one workload on one version.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub version: String,
    pub workload: Kind,
    pub runs: usize,
    pub failed: usize,
    pub clients: usize,
    pub deliveries_per_s: Option<f64>,
    pub latency_p50_us: Option<u64>,
    pub latency_p90_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub latency_p999_us: Option<u64>,
    pub latency_max_us: Option<u64>,
    /// The highest over the repeats.
    pub peak_rss_kb: Option<u64>,
    pub threads: Option<u64>,
    pub rss_per_client_bytes: Option<f64>,
    pub kernel_per_client_bytes: Option<f64>,
    pub maps_per_client: Option<f64>,
    pub accept_ms: Option<f64>,
    pub cpu_ns_per_delivery: Option<f64>,
    pub context_switches_per_delivery: Option<f64>,
    /// How late chat-bench's own pacer sent lines (paced runs), p99: part of the latency.
    pub pacer_lateness_p99_us: Option<u64>,
    /// Sums over the repeats.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub disconnected: u64,
    pub errors: Vec<String>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Summary {
    fn of(version: &str, plan: &Plan, runs: &[&RunRecord]) -> Summary {
        let reports: Vec<&RunReport> = runs.iter().filter_map(|r| r.report.as_ref()).collect();
        let pick = |f: &dyn Fn(&RunReport) -> Option<f64>| {
            median(reports.iter().filter_map(|r| f(r)).collect())
        };
        let latency = |f: fn(&LatencySummary) -> u64| {
            pick(&|r: &RunReport| r.latency.as_ref().map(|l| f(l) as f64)).map(|v| v.round() as u64)
        };
        let measured = plan.messages > 0;
        Summary {
            version: version.to_owned(),
            workload: plan.kind,
            runs: runs.len(),
            failed: runs.iter().filter(|r| r.report.is_none()).count(),
            clients: plan.clients,
            deliveries_per_s: pick(&|r| measured.then_some(r.deliveries_per_s)),
            latency_p50_us: latency(|l| l.p50_us),
            latency_p90_us: latency(|l| l.p90_us),
            latency_p99_us: latency(|l| l.p99_us),
            latency_p999_us: latency(|l| l.p999_us),
            latency_max_us: latency(|l| l.max_us),
            peak_rss_kb: reports
                .iter()
                .filter_map(|r| Some(r.server.as_ref()?.peak_rss_kb))
                .max(),
            threads: reports
                .iter()
                .filter_map(|r| Some(r.server.as_ref()?.threads))
                .max(),
            rss_per_client_bytes: pick(&|r| Some(r.server.as_ref()?.rss_per_client_bytes)),
            kernel_per_client_bytes: pick(&|r| r.server.as_ref()?.kernel_per_client_bytes),
            maps_per_client: pick(&|r| Some(r.server.as_ref()?.maps_per_client)),
            accept_ms: pick(&|r| Some(r.accept_ms)),
            cpu_ns_per_delivery: pick(&|r| r.server.as_ref()?.cpu_ns_per_delivery),
            context_switches_per_delivery: pick(&|r| {
                let server = r.server.as_ref()?;
                (r.delivered > 0).then(|| server.context_switches as f64 / r.delivered as f64)
            }),
            pacer_lateness_p99_us: pick(&|r| r.pacer_lateness.as_ref().map(|l| l.p99_us as f64))
                .map(|v| v.round() as u64),
            lost: reports.iter().map(|r| r.lost).sum(),
            duplicated: reports.iter().map(|r| r.duplicated).sum(),
            out_of_order: reports.iter().map(|r| r.out_of_order).sum(),
            unexpected: reports.iter().map(|r| r.unexpected).sum(),
            disconnected: reports.iter().map(|r| r.disconnected as u64).sum(),
            errors: runs.iter().filter_map(|r| record_problem(r)).collect(),
        }
    }
}

/// Everything a comparison measured: what `results.json` holds.
#[derive(Debug, Serialize)]
pub struct Results {
    pub started_utc: String,
    pub duration_s: f64,
    pub quick: bool,
    pub machine: Machine,
    pub workloads: Vec<Plan>,
    pub summary: Vec<Summary>,
    /// v4 over TLS: its burst and its connection storm.
    pub tls_workloads: Vec<Plan>,
    pub tls_summary: Vec<Summary>,
    /// v4 with every client on its WebSocket: its burst.
    pub ws_workloads: Vec<Plan>,
    pub ws_summary: Vec<Summary>,
    /// Set when the crowd stopped short of its largest size for want of descriptors.
    pub crowd_cap: Option<CrowdCap>,
    pub runs: Vec<RunRecord>,
}

/// A crowd smaller than asked for, and why: chat-bench holds one descriptor per client.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CrowdCap {
    pub wanted: usize,
    pub reached: usize,
    /// What this process may open (its hard limit).
    pub descriptors: u64,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        started: SystemTime,
        duration_s: f64,
        quick: bool,
        plans: &[Plan],
        tls_plans: &[Plan],
        ws_plans: &[Plan],
        crowd_cap: Option<CrowdCap>,
        runs: Vec<RunRecord>,
    ) -> Results {
        let mut summary = Vec::new();
        for plan in plans {
            for version in versions_for(plan.kind) {
                let of_this: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| {
                        r.workload == plan.kind
                            && r.clients == plan.clients
                            && r.version == version.name
                    })
                    .collect();
                if !of_this.is_empty() {
                    summary.push(Summary::of(version.name, plan, &of_this));
                }
            }
        }
        let mut tls_summary = Vec::new();
        for plan in tls_plans {
            let of_this: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.workload == plan.kind && r.version == V4_TLS)
                .collect();
            if !of_this.is_empty() {
                tls_summary.push(Summary::of(V4_TLS, plan, &of_this));
            }
        }
        let mut ws_summary = Vec::new();
        for plan in ws_plans {
            let of_this: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.workload == plan.kind && r.version == V4_WS)
                .collect();
            if !of_this.is_empty() {
                ws_summary.push(Summary::of(V4_WS, plan, &of_this));
            }
        }
        Results {
            started_utc: utc_text(started),
            duration_s,
            quick,
            machine: Machine::this_one(),
            workloads: plans.to_vec(),
            summary,
            tls_workloads: tls_plans.to_vec(),
            tls_summary,
            ws_workloads: ws_plans.to_vec(),
            ws_summary,
            crowd_cap,
            runs,
        }
    }

    /// The crowd's plans, smallest first.
    pub fn crowd_plans(&self) -> Vec<&Plan> {
        self.workloads
            .iter()
            .filter(|p| p.kind == Kind::Crowd)
            .collect()
    }

    /// `version` in the crowd of `clients`.
    pub fn crowd(&self, version: &str, clients: usize) -> Option<&Summary> {
        self.summary
            .iter()
            .find(|s| s.version == version && s.workload == Kind::Crowd && s.clients == clients)
    }

    pub fn summary(&self, version: &str, kind: Kind) -> Option<&Summary> {
        self.summary
            .iter()
            .find(|s| s.version == version && s.workload == kind)
    }

    pub fn plan(&self, kind: Kind) -> Option<&Plan> {
        self.workloads.iter().find(|p| p.kind == kind)
    }
}

/// Year, month and day of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `(date, hours, minutes, seconds)` in UTC.
fn utc_parts(time: SystemTime) -> ((i64, u32, u32), u64, u64, u64) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day_secs = secs % 86_400;
    (
        civil_from_days((secs / 86_400) as i64),
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
    )
}

/// `2026-05-01 12:00:00 UTC`.
pub fn utc_text(time: SystemTime) -> String {
    let ((y, mo, d), h, mi, s) = utc_parts(time);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// `2026-05-01T12-00-00Z`: sorts by time, and no `:` to trouble a file system or a shell.
fn utc_folder_name(time: SystemTime) -> String {
    let ((y, mo, d), h, mi, s) = utc_parts(time);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}Z")
}

/// Creates `out/<time>/` (with a suffix if two comparisons start in the same second).
pub fn results_dir(out: &Path, started: SystemTime) -> anyhow::Result<PathBuf> {
    let name = utc_folder_name(started);
    for attempt in 0..100 {
        let dir = if attempt == 0 {
            out.join(&name)
        } else {
            out.join(format!("{name}-{attempt}"))
        };
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            return Ok(dir);
        }
    }
    anyhow::bail!(
        "{} already holds a hundred results named {name}",
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn folder_names_sort_by_time_and_avoid_colons() {
        let time = UNIX_EPOCH + std::time::Duration::from_secs(19_723 * 86_400 + 3_723);
        assert_eq!(utc_folder_name(time), "2024-01-01T01-02-03Z");
        assert_eq!(utc_text(time), "2024-01-01 01:02:03 UTC");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
