//! A comparison for people: `results.md` (the README's table with measured numbers, and every
//! workload's row) beside `results.json` and the charts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::load::{self, Mode};
use crate::plans::{versions_for, Kind, Plan, CROWD_ECHO_RATE, CROWD_ROOM_RATE};
use crate::results::{record_problem, Results, Summary};
use crate::servers::{EPOLL_VERSIONS, VERSIONS};
use crate::units::{bytes, kilobytes, micros, nanos, per_second};

/// Writes results.json, results.md and the charts into `dir`.
pub fn write_all(dir: &Path, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results).context("cannot serialise the results")?;
    write(dir, "results.json", &json)?;
    write(dir, "results.md", &results_markdown(results))?;
    if !results.crowd_plans().is_empty() {
        write(dir, "crowd.md", &crowd_markdown(results))?;
    }
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
    // The crowd's poller rows: v2 and v3 as "poll / epoll", v4 (which waits with epoll) alone.
    let crowd = results.crowd_plans();
    for plan in [crowd.first(), crowd.last()].into_iter().flatten() {
        let n = plan.clients;
        let cost = |name: &str| {
            cell(
                results.crowd(name, n).and_then(|s| s.cpu_ns_per_delivery),
                nanos,
            )
        };
        let p99 = |name: &str| {
            cell(
                results.crowd(name, n).and_then(|s| s.latency_p99_us),
                micros,
            )
        };
        row(
            format!("server CPU per delivery, crowd of {n} (poll / epoll)"),
            &|v| pollers(v, &cost),
        );
        row(format!("latency p99, crowd of {n} (poll / epoll)"), &|v| {
            pollers(v, &p99)
        });
        if crowd.len() == 1 {
            break;
        }
    }
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

/// A crowd cell for version `v`: "poll / epoll" for v2 and v3, one value for v4, none for v1.
fn pollers(v: &str, value: &dyn Fn(&str) -> String) -> String {
    if let Some(epoll) = EPOLL_VERSIONS.iter().find(|e| e.binary == v) {
        format!("{} / {}", value(v), value(epoll.name))
    } else if versions_for(Kind::Crowd).iter().any(|c| c.name == v) {
        value(v)
    } else {
        "-".to_owned()
    }
}

/// What `compare` calls a crowd column: v2 and v3 say which poller.
fn crowd_column(name: &str) -> String {
    match VERSIONS.iter().find(|v| v.name == name) {
        Some(v) if EPOLL_VERSIONS.iter().any(|e| e.binary == v.binary) => format!("{name} poll"),
        _ => name.to_owned(),
    }
}

/// The crowd as N grows: server CPU per delivery, then latency, one column per version and
/// poller.
pub fn crowd_tables(results: &Results) -> String {
    let lineup = versions_for(Kind::Crowd);
    let header = |first: &str| {
        let mut out = format!("| {first} |");
        for v in &lineup {
            let _ = write!(out, " {} |", crowd_column(v.name));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(lineup.len()));
        out.push('\n');
        out
    };
    let mut out =
        String::from("Server CPU per delivery (an echo, or a line reaching one client):\n\n");
    out.push_str(&header("clients (10 talking)"));
    for plan in results.crowd_plans() {
        let _ = write!(out, "| {} |", plan.clients);
        for v in &lineup {
            let cost = results
                .crowd(v.name, plan.clients)
                .and_then(|s| s.cpu_ns_per_delivery);
            let _ = write!(out, " {} |", cell(cost, nanos));
        }
        out.push('\n');
    }
    out.push_str("\nLatency p50 / p99:\n\n");
    out.push_str(&header("clients (10 talking)"));
    for plan in results.crowd_plans() {
        let _ = write!(out, "| {} |", plan.clients);
        for v in &lineup {
            let _ = write!(out, " {} |", p50_p99(results.crowd(v.name, plan.clients)));
        }
        out.push('\n');
    }
    out
}

/// What the crowd is, and what limited it.
fn crowd_description(results: &Results) -> String {
    let mut out = format!(
        "**crowd**: N clients connect and 10 of them talk on a fixed schedule for a few \
         seconds; the other N-10 stay connected and silent. Against an echo server (v2) each \
         of the 10 sends {CROWD_ECHO_RATE} lines/s and hears its echoes; in a room (v3, v4) \
         each of the 10 sends {CROWD_ROOM_RATE} line/s to all N. Latency is measured from \
         each line's scheduled time. Server CPU per delivery is the server's CPU time over \
         the run divided by the lines delivered: with `poll`, every turn of the loop also \
         pays for every silent client."
    );
    if let Some(cap) = &results.crowd_cap {
        let _ = write!(
            out,
            " The largest crowd asked for was {} clients; it stopped at {} because chat-bench \
             holds one descriptor per client and may open {} (its hard limit, \
             `ulimit -Hn`), less a few for itself. A helper process holding half the \
             clients would not get much further: the server holds one descriptor per client \
             too, under the same limit.",
            cap.wanted, cap.reached, cap.descriptors
        );
    }
    out
}

/// `crowd.md`: the crowd alone, for the README and the v2 and v3 lessons.
pub fn crowd_markdown(results: &Results) -> String {
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# chat-bench compare: poll against epoll, {}\n",
        results.started_utc
    );
    let repeats = results.crowd_plans().first().map_or(1, |p| p.repeats);
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {} MB RAM, Linux {}. Each cell is the median of {repeats} \
         run(s). Generated by `chat-bench compare --only crowd`.\n",
        m.cpus, m.cpu_model, m.memory_mb, m.kernel
    );
    out.push_str(&crowd_description(results));
    out.push_str("\n\n");
    out.push_str(&crowd_tables(results));
    let _ = writeln!(
        out,
        "\n![server CPU per delivery as the crowd grows](crowd.svg)"
    );
    let problems = problems(results, |r| r.workload == Kind::Crowd);
    if !problems.is_empty() {
        let _ = writeln!(out, "\n## Problems\n\n{}", problems.join("\n"));
    }
    out
}

/// One line per run that went wrong, among those `which` selects.
fn problems(results: &Results, which: impl Fn(&crate::results::RunRecord) -> bool) -> Vec<String> {
    results
        .runs
        .iter()
        .filter(|r| which(r))
        .filter_map(|r| {
            let problem = record_problem(r)?;
            let log = if r.server_log.is_empty() {
                String::new()
            } else {
                format!(" Server log: `{}`", r.server_log.join(" / "))
            };
            Some(format!(
                "- {} {:?} ({} clients) #{}: {problem}.{log}",
                r.version, r.workload, r.clients, r.repeat
            ))
        })
        .collect()
}

/// v4 over TLS and over WebSocket beside plaintext v4: what the encryption and the handshakes
/// cost, and what a frame per line costs.
pub fn tls_table(results: &Results) -> String {
    let tls = |kind| results.tls_summary.iter().find(|s| s.workload == kind);
    let ws = |kind| results.ws_summary.iter().find(|s| s.workload == kind);
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
    let mut out = String::from(
        "| | v4-async | v4-async over TLS | v4-async over WebSocket |\n|---|---|---|---|\n",
    );
    let rate = |s: Option<&Summary>| cell(s.and_then(|s| s.deliveries_per_s), per_second);
    let _ = writeln!(
        out,
        "| deliveries/s, burst, {burst} clients | {} | {} | {} |",
        rate(plain(Kind::Burst)),
        rate(tls(Kind::Burst)),
        rate(ws(Kind::Burst))
    );
    let _ = writeln!(
        out,
        "| latency p50 / p99, burst, {burst} clients | {} | {} | {} |",
        p50_p99(plain(Kind::Burst)),
        p50_p99(tls(Kind::Burst)),
        p50_p99(ws(Kind::Burst))
    );
    let cpu = |s: Option<&Summary>| {
        cell(s.and_then(|s| s.cpu_ns_per_delivery), |ns| {
            format!("{ns:.0} ns")
        })
    };
    let _ = writeln!(
        out,
        "| server CPU per delivery, burst, {burst} clients | {} | {} | {} |",
        cpu(plain(Kind::Burst)),
        cpu(tls(Kind::Burst)),
        cpu(ws(Kind::Burst))
    );
    let _ = writeln!(
        out,
        "| {storm} clients connected and in (TLS: handshakes included) | - | {} | - |",
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
        Kind::Crowd => format!(
            "**crowd of {}**: see \"poll against epoll\" above.",
            plan.clients
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
    if results.workloads.iter().all(|p| p.kind == Kind::Crowd) {
        let _ = writeln!(out, "(Only the crowd was measured: see below.)");
    }
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
    if !results.tls_summary.is_empty() || !results.ws_summary.is_empty() {
        let _ = writeln!(out, "## v4 over TLS and over WebSocket\n");
        out.push_str(&tls_table(results));
        let _ = writeln!(
            out,
            "\nThe same burst against v4's TLS listener (TLS 1.3, rustls with ring, a self-signed \
             certificate), and {} clients connecting at once, 256 at a time, each with a full \
             handshake: the time until every one was proven in the room. Over WebSocket, the \
             same burst with every client on v4's `--web-addr` WebSocket, each line one \
             message.\n",
            results
                .tls_workloads
                .iter()
                .find(|p| p.kind == Kind::Idle)
                .map_or(0, |p| p.clients)
        );
    }
    if !results.crowd_plans().is_empty() {
        let _ = writeln!(out, "## poll against epoll: a crowd that mostly listens\n");
        out.push_str(&crowd_description(results));
        out.push_str("\n\n");
        out.push_str(&crowd_tables(results));
        out.push('\n');
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

    let problems = problems(results, |_| true);
    if !problems.is_empty() {
        let _ = writeln!(out, "\n## Problems\n\n{}", problems.join("\n"));
    }
    let _ = writeln!(
        out,
        "\n## Charts\n\n![deliveries per second](throughput.svg)\n\n\
         ![latency percentiles, paced chat](latency-paced.svg)\n\n\
         ![latency percentiles, burst](latency-burst.svg)\n\n\
         ![server CPU per delivery as the crowd grows](crowd.svg)\n\n\
         Every run, with every number, is in `results.json`."
    );
    out
}
