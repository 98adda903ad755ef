//! Turning runs into something a class reads: a summary per run, and for a comparison
//! `results.json` (every run, every number), `results.md` (the README's table, measured) and
//! the charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use crate::compare::{Kind, Plan, V4_TLS, VERSIONS};
use crate::load::{Mode, RunReport};
use crate::tally::LatencySummary;

/// `19.8 M`, `12.3 k`, `400`.
pub fn count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// `12.3 M/s`.
pub fn per_second(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

/// `850 µs`, `1.23 ms`, `2.50 s`.
pub fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// `12.3 MB` from kilobytes (the kernel's kB are KiB; so are these).
pub fn kilobytes(kb: u64) -> String {
    bytes(kb as f64 * 1024.0)
}

/// `2.1 KB`, `640 B`, `12.3 MB` (binary multiples, as `/proc` counts).
pub fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn latency_line(latency: &LatencySummary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        micros(latency.p50_us),
        micros(latency.p90_us),
        micros(latency.p99_us),
        micros(latency.p999_us),
        micros(latency.max_us)
    )
}

/// What `chat-bench run` prints.
pub fn run_summary(report: &RunReport) -> String {
    let w = &report.workload;
    let mut out = String::new();
    let pace = match w.rate {
        Some(rate) => format!("at {rate} lines/s each (paced)"),
        None if w.window == 0 => "as fast as possible (no window)".to_owned(),
        None => format!("as fast as possible (window {} lines)", w.window),
    };
    let mode = match w.mode {
        Mode::Broadcast => "room",
        Mode::Echo => "echo",
    };
    if w.messages == 0 {
        let _ = writeln!(out, "{mode}: {} clients, connecting only", w.clients);
    } else {
        let _ = writeln!(
            out,
            "{mode}: {} clients, {} senders x {} lines {pace}",
            w.clients, w.senders, w.messages
        );
    }
    let _ = writeln!(
        out,
        "  connected in {:.0} ms, all in (probe seen) after {:.0} ms",
        report.connect_ms, report.accept_ms
    );
    if w.messages > 0 {
        let _ = writeln!(
            out,
            "  {} of {} deliveries in {:.2} s: {}",
            count(report.delivered),
            count(report.expected),
            report.duration_s,
            per_second(report.deliveries_per_s)
        );
        if let Some(latency) = &report.latency {
            let _ = writeln!(out, "  latency {}", latency_line(latency));
        }
        if let Some(late) = &report.pacer_lateness {
            let _ = writeln!(
                out,
                "  pacer lateness (included above) p99 {}  max {}",
                micros(late.p99_us),
                micros(late.max_us)
            );
        }
        let _ = writeln!(
            out,
            "  lost {}  duplicated {}  out of order {}  unexpected {}  disconnected {}",
            report.lost,
            report.duplicated,
            report.out_of_order,
            report.unexpected,
            report.disconnected
        );
        if report.echoed_to_sender > 0 {
            let _ = writeln!(
                out,
                "  (the server also echoed {} lines to their own senders; not counted)",
                count(report.echoed_to_sender)
            );
        }
    }
    if let Some(server) = &report.server {
        let mut line = format!(
            "  server: peak RSS {}, {} threads, RSS per client {}",
            kilobytes(server.peak_rss_kb),
            server.threads,
            bytes(server.rss_per_client_bytes)
        );
        if w.messages > 0 {
            let _ = write!(
                line,
                ", CPU {:.2} s ({} per delivery), {} context switches",
                server.cpu_s,
                server
                    .cpu_ns_per_delivery
                    .map_or("-".to_owned(), |ns| format!("{ns:.0} ns")),
                server.context_switches
            );
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The loud part of a run that went wrong.
pub fn error_banner(report: &RunReport) -> String {
    let mut problems = Vec::new();
    if report.lost > 0 {
        problems.push(format!("{} LINES LOST", report.lost));
    }
    if report.duplicated > 0 {
        problems.push(format!("{} delivered twice", report.duplicated));
    }
    if report.out_of_order > 0 {
        problems.push(format!("{} out of order", report.out_of_order));
    }
    if report.unexpected > 0 {
        problems.push(format!(
            "{} delivered where they should not be",
            report.unexpected
        ));
    }
    if report.disconnected > 0 {
        let reason = report
            .disconnect_reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map_or(String::new(), |r| format!(" (one last received: \"{r}\")"));
        problems.push(format!(
            "{} clients disconnected by the server{reason}",
            report.disconnected
        ));
    }
    if report.stalled {
        problems.push("nothing arrived for 5 s, so the run was cut short".to_owned());
    }
    format!(
        "WARNING: this run is not a clean measurement: {}",
        problems.join("; ")
    )
}

/// One comparison run: which version, which workload, and what came of it.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub version: String,
    pub workload: Kind,
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
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or("unknown".to_owned(), |(_, model)| model.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".to_owned(), |k| k.trim().to_owned()),
            memory_mb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024),
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
    pub runs: Vec<RunRecord>,
}

impl Results {
    pub fn new(
        started: SystemTime,
        duration_s: f64,
        quick: bool,
        plans: &[Plan],
        tls_plans: &[Plan],
        runs: Vec<RunRecord>,
    ) -> Results {
        let mut summary = Vec::new();
        for plan in plans {
            for version in VERSIONS {
                let of_this: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| r.workload == plan.kind && r.version == version.name)
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
        Results {
            started_utc: utc_text(started),
            duration_s,
            quick,
            machine: Machine::this_one(),
            workloads: plans.to_vec(),
            summary,
            tls_workloads: tls_plans.to_vec(),
            tls_summary,
            runs,
        }
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

/// Writes results.json, results.md and the charts into `dir`.
pub fn write_all(dir: &Path, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results).context("cannot serialise the results")?;
    write(dir, "results.json", &json)?;
    write(dir, "results.md", &results_markdown(results))?;
    crate::charts::draw_all(dir, results)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A table cell for an optional value.
fn cell<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or("-".to_owned(), show)
}

/// `1.2 ms / 3.4 ms`.
fn p50_p99(summary: Option<&Summary>) -> String {
    match summary.and_then(|s| Some((s.latency_p50_us?, s.latency_p99_us?))) {
        Some((p50, p99)) => format!("{} / {}", micros(p50), micros(p99)),
        None => "-".to_owned(),
    }
}

/// The README's comparison table with measured numbers, versions as columns.
pub fn summary_table(results: &Results) -> String {
    let clients = |kind| results.plan(kind).map_or(0, |p| p.clients);
    let get = |version: &str, kind| results.summary(version, kind);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, value: &dyn Fn(&str) -> String| {
        rows.push((label, VERSIONS.iter().map(|v| value(v.name)).collect()));
    };
    row("model".into(), &|v| {
        VERSIONS
            .iter()
            .find(|x| x.name == v)
            .map_or("", |x| x.model)
            .to_owned()
    });
    row("who receives a line".into(), &|v| match VERSIONS
        .iter()
        .find(|x| x.name == v)
        .map(|x| x.mode)
    {
        Some(Mode::Echo) => "the sender (echo)".to_owned(),
        _ => "everyone else".to_owned(),
    });
    let idle = clients(Kind::Idle);
    row(format!("server threads, {idle} idle clients"), &|v| {
        cell(get(v, Kind::Idle).and_then(|s| s.threads), |t| {
            t.to_string()
        })
    });
    let burst = clients(Kind::Burst);
    row(format!("deliveries/s, burst, {burst} clients"), &|v| {
        cell(
            get(v, Kind::Burst).and_then(|s| s.deliveries_per_s),
            per_second,
        )
    });
    row(format!("latency p50 / p99, burst, {burst} clients"), &|v| {
        p50_p99(get(v, Kind::Burst))
    });
    let scale = clients(Kind::Scale);
    row(format!("deliveries/s, burst, {scale} clients"), &|v| {
        cell(
            get(v, Kind::Scale).and_then(|s| s.deliveries_per_s),
            per_second,
        )
    });
    row(format!("latency p50 / p99, burst, {scale} clients"), &|v| {
        p50_p99(get(v, Kind::Scale))
    });
    row("latency p50 / p99, paced chat".into(), &|v| {
        p50_p99(get(v, Kind::Paced))
    });
    row(format!("peak RSS, burst, {scale} clients"), &|v| {
        cell(get(v, Kind::Scale).and_then(|s| s.peak_rss_kb), kilobytes)
    });
    row("RSS per idle connection".into(), &|v| {
        cell(
            get(v, Kind::Idle).and_then(|s| s.rss_per_client_bytes),
            bytes,
        )
    });
    row(
        "kernel memory per idle connection (both ends, machine-wide)".into(),
        &|v| {
            cell(
                get(v, Kind::Idle).and_then(|s| s.kernel_per_client_bytes),
                bytes,
            )
        },
    );
    row("memory mappings per idle connection".into(), &|v| {
        cell(get(v, Kind::Idle).and_then(|s| s.maps_per_client), |maps| {
            format!("{maps:.1}")
        })
    });
    row(format!("{idle} clients accepted in"), &|v| {
        cell(get(v, Kind::Idle).and_then(|s| s.accept_ms), |ms| {
            format!("{ms:.0} ms")
        })
    });
    row(
        format!("server CPU per delivery, burst, {burst} clients"),
        &|v| {
            cell(
                get(v, Kind::Burst).and_then(|s| s.cpu_ns_per_delivery),
                |ns| format!("{ns:.0} ns"),
            )
        },
    );
    row("lost / duplicated / out of order, all runs".into(), &|v| {
        let of_v = results.summary.iter().filter(|s| s.version == v);
        let (mut lost, mut dup, mut ooo, mut failed) = (0, 0, 0, 0);
        for s in of_v {
            lost += s.lost;
            dup += s.duplicated;
            ooo += s.out_of_order;
            failed += s.failed + usize::from(s.disconnected > 0);
        }
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        format!("{lost} / {dup} / {ooo}{failed}")
    });

    let mut out = String::from("| |");
    for v in VERSIONS {
        let _ = write!(out, " {} |", v.name);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(VERSIONS.len()));
    out.push('\n');
    for (label, values) in rows {
        let _ = writeln!(out, "| {label} | {} |", values.join(" | "));
    }
    out
}

/// v4 over TLS beside plaintext v4: what the encryption and the handshakes cost.
pub fn tls_table(results: &Results) -> String {
    let tls = |kind| results.tls_summary.iter().find(|s| s.workload == kind);
    let plain = |kind| results.summary("v4-async", kind);
    let burst = results
        .tls_workloads
        .iter()
        .find(|p| p.kind == Kind::Burst)
        .map_or(0, |p| p.clients);
    let storm = results
        .tls_workloads
        .iter()
        .find(|p| p.kind == Kind::Idle)
        .map_or(0, |p| p.clients);
    let mut out = String::from("| | v4-async | v4-async over TLS |\n|---|---|---|\n");
    let rate = |s: Option<&Summary>| cell(s.and_then(|s| s.deliveries_per_s), per_second);
    let _ = writeln!(
        out,
        "| deliveries/s, burst, {burst} clients | {} | {} |",
        rate(plain(Kind::Burst)),
        rate(tls(Kind::Burst))
    );
    let _ = writeln!(
        out,
        "| latency p50 / p99, burst, {burst} clients | {} | {} |",
        p50_p99(plain(Kind::Burst)),
        p50_p99(tls(Kind::Burst))
    );
    let cpu = |s: Option<&Summary>| {
        cell(s.and_then(|s| s.cpu_ns_per_delivery), |ns| {
            format!("{ns:.0} ns")
        })
    };
    let _ = writeln!(
        out,
        "| server CPU per delivery, burst, {burst} clients | {} | {} |",
        cpu(plain(Kind::Burst)),
        cpu(tls(Kind::Burst))
    );
    let _ = writeln!(
        out,
        "| {storm} clients connected and in (TLS: handshakes included) | - | {} |",
        cell(tls(Kind::Idle).and_then(|s| s.accept_ms), |ms| format!(
            "{ms:.0} ms"
        ))
    );
    out
}

fn workload_description(plan: &Plan) -> String {
    match plan.kind {
        Kind::Burst | Kind::Scale => format!(
            "**{}**: {} clients; in a room {} of them send {} lines each as fast as the server \
             takes them (each at most {} lines ahead of a receiver); against an echo server \
             every client sends {} lines (each at most {} ahead of its echo).",
            plan.title,
            plan.clients,
            plan.senders,
            plan.messages,
            crate::load::default_window(Mode::Broadcast, plan.clients, plan.senders),
            plan.messages,
            crate::load::default_window(Mode::Echo, plan.clients, plan.senders(Mode::Echo)),
        ),
        Kind::Paced => format!(
            "**{}**: {} clients, {} of them send {} lines/s each for {} s on a fixed schedule; \
             latency is measured from the scheduled time.",
            plan.title,
            plan.clients,
            plan.senders,
            plan.rate.unwrap_or(0.0),
            f64::from(plan.messages) / plan.rate.unwrap_or(1.0)
        ),
        Kind::Idle => format!(
            "**{}**: {} clients connect at once (256 connects in flight) and stay silent; \
             accepted-in is the time until every one was proven in, RSS per connection is \
             the server's resident memory growth divided by {}.",
            plan.title, plan.clients, plan.clients
        ),
    }
}

/// The whole `results.md`.
pub fn results_markdown(results: &Results) -> String {
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# chat-bench compare, {}\n", results.started_utc);
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {} MB RAM, Linux {}. {}Took {:.0} s.\n",
        m.cpus,
        m.cpu_model,
        m.memory_mb,
        m.kernel,
        if results.quick {
            "`--quick` (smaller workloads, one run each). "
        } else {
            ""
        },
        results.duration_s
    );
    let _ = writeln!(out, "## The four models, measured\n");
    out.push_str(&summary_table(results));
    let _ = writeln!(
        out,
        "\nEach cell is the median of its runs (peak RSS and threads: the highest). A delivery \
         is one line arriving at one client: in a room a line makes one delivery per other \
         client, in an echo server (v1, v2) one, back to its sender, so the two kinds of \
         deliveries/s measure different work. Under a burst, latency is queueing: what is in \
         flight (the senders' windows) divided by the rate; its spread (p99 against p50) shows \
         how evenly the server serves its clients.\n"
    );
    if !results.tls_summary.is_empty() {
        let _ = writeln!(out, "## v4 over TLS\n");
        out.push_str(&tls_table(results));
        let _ = writeln!(
            out,
            "\nThe same burst against v4's TLS listener (TLS 1.3, rustls with ring, a self-signed \
             certificate), and {} clients connecting at once, 256 at a time, each with a full \
             handshake: the time until every one was proven in the room.\n",
            results
                .tls_workloads
                .iter()
                .find(|p| p.kind == Kind::Idle)
                .map_or(0, |p| p.clients)
        );
    }
    let _ = writeln!(out, "Workloads:\n");
    for plan in &results.workloads {
        let _ = writeln!(out, "- {}", workload_description(plan));
    }
    let _ = writeln!(
        out,
        "\nEvery server ran with `RUST_LOG=warn`, `--max-clients` above the largest workload, \
         rooms with `--announce-limit 0`, v4 with `--rate 0`; each run on a freshly started \
         server.\n"
    );

    let _ = writeln!(out, "## Every workload\n");
    let _ = writeln!(
        out,
        "| workload | version | runs | deliveries/s | p50 | p90 | p99 | p99.9 | max | peak RSS \
         | RSS/client | threads | CPU/delivery | ctx switches/delivery | accepted in | lost | dup \
         | ooo |"
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in &results.summary {
        let title = results.plan(s.workload).map_or("", |p| p.title);
        let _ = writeln!(
            out,
            "| {title} ({}) | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.clients,
            s.version,
            s.runs,
            if s.failed > 0 { format!(" ({} failed)", s.failed) } else { String::new() },
            cell(s.deliveries_per_s, per_second),
            cell(s.latency_p50_us, micros),
            cell(s.latency_p90_us, micros),
            cell(s.latency_p99_us, micros),
            cell(s.latency_p999_us, micros),
            cell(s.latency_max_us, micros),
            cell(s.peak_rss_kb, kilobytes),
            cell(s.rss_per_client_bytes, bytes),
            cell(s.threads, |t| t.to_string()),
            cell(s.cpu_ns_per_delivery, |ns| format!("{ns:.0} ns")),
            cell(s.context_switches_per_delivery, |c| format!("{c:.3}")),
            cell(s.accept_ms, |ms| format!("{ms:.0} ms")),
            s.lost,
            s.duplicated,
            s.out_of_order,
        );
    }

    let lateness: Vec<String> = results
        .summary
        .iter()
        .filter_map(|s| {
            Some(format!(
                "{} {}",
                s.version,
                micros(s.pacer_lateness_p99_us?)
            ))
        })
        .collect();
    if !lateness.is_empty() {
        let _ = writeln!(
            out,
            "\nIn paced chat, chat-bench's pacer itself sent lines late by (p99) {}; that delay \
             is part of the latencies above, as it is for any open-loop load generator on a \
             busy machine.",
            lateness.join(", ")
        );
    }

    let problems: Vec<String> = results
        .runs
        .iter()
        .filter_map(|r| {
            let problem = record_problem(r)?;
            let log = if r.server_log.is_empty() {
                String::new()
            } else {
                format!(" Server log: `{}`", r.server_log.join(" / "))
            };
            Some(format!(
                "- {} {:?} #{}: {problem}.{log}",
                r.version, r.workload, r.repeat
            ))
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "\n## Problems\n\n{}", problems.join("\n"));
    }
    let _ = writeln!(
        out,
        "\n## Charts\n\n![deliveries per second](throughput.svg)\n\n\
         ![latency percentiles, paced chat](latency-paced.svg)\n\n\
         ![latency percentiles, burst](latency-burst.svg)\n\n\
         Every run, with every number, is in `results.json`."
    );
    out
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
    fn numbers_read_like_a_person_writes_them() {
        assert_eq!(count(19_800_000), "19.8 M");
        assert_eq!(count(400), "400");
        assert_eq!(per_second(12_345_678.0), "12.35 M/s");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_234), "1.23 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
        assert_eq!(kilobytes(12_288), "12.0 MB");
        assert_eq!(bytes(2_150.0), "2.1 KB");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
