//! A comparison for people: `results.md` (the README's table with measured numbers, and every
//! workload's row) beside `results.json` and the charts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::load::{self, Mode};
use crate::plans::{Kind, Plan};
use crate::results::{record_problem, Results, Summary};
use crate::servers::VERSIONS;
use crate::units::{bytes, kilobytes, micros, per_second};

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
            load::default_window(Mode::Broadcast, plan.clients, plan.senders),
            plan.messages,
            load::default_window(Mode::Echo, plan.clients, plan.senders(Mode::Echo)),
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
