//! One run in words: what `chat-bench run` prints, and the warning for a run that went wrong.

use std::fmt::Write as _;

use crate::load::{Mode, RunReport};
use crate::tally::LatencySummary;
use crate::units::{bytes, count, kilobytes, micros, per_second};

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
