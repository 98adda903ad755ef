//! The end of a soak: every ledger and counter added up ([`tally`]), judged against the
//! rules ([`checks`]), printed, and written as `soak-<server>.md` with a chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context as _;
use chat_protocol::message;

use super::clients::{escaped, Ended, Shared, CHURN_EOF_TIMEOUT};
use super::{duration_text, plural, Plan, Sample, CATCH_UP_STALL, CATCH_UP_TIMEOUT};
use crate::load::Mode;
use crate::results;
use crate::tally::{new_latencies, LatencySummary};
use crate::units::{count, kilobytes, micros};

/// The first tenth of a soak is warm-up: allocators, queues and socket buffers grow to their
/// working size then, and that is not a leak.
const WARM_UP_FRACTION: f64 = 0.1;

/// RSS is compared between the first and the last fifth of the samples after the warm-up.
const WINDOW_FRACTION: f64 = 0.2;

/// RSS may grow by this fraction from the early window to the late one...
const RSS_GROWTH_FRACTION: f64 = 0.2;

/// ...plus this many KiB (2 MiB): an allocator keeping a few more arenas is not a leak, but a
/// leak of a few hundred bytes per churned connection (thousands a minute) is over it.
const RSS_GROWTH_SLACK_KB: u64 = 2 * 1024;

/// With fewer samples after the warm-up than this, RSS is reported but not judged.
const RSS_SAMPLES_MIN: usize = 3;

/// Descriptors the server may hold at the end beyond those it held when the soak started:
/// "a few", for a runtime that opens something lazily. A leak of one per churned connection
/// is thousands.
pub(super) const FD_TOLERANCE: usize = 4;

/// Lines of the server's log kept in the summary when it fails.
pub(super) const LOG_LINES_SHOWN: usize = 10;

/// What the coordinator saw, besides what the clients counted.
#[derive(Debug, Default)]
pub(super) struct Watched {
    /// Every receiver saw every line before [`CATCH_UP_TIMEOUT`] passed...
    pub(super) caught_up: bool,
    /// ...this long after the senders stopped.
    pub(super) catch_up_s: f64,
    /// The server's RSS and descriptors over time (empty without its process id).
    pub(super) samples: Vec<Sample>,
    /// Before any client connected.
    pub(super) rss_idle_kb: Option<u64>,
    /// The kernel's high-water mark, at the end.
    pub(super) rss_peak_kb: Option<u64>,
    pub(super) rss_end_kb: Option<u64>,
    /// Once the well-behaved clients were in, before any other traffic.
    pub(super) fds_start: Option<usize>,
    /// Once the churners were gone and the descriptors settled.
    pub(super) fds_end: Option<usize>,
    /// `None` when the server's process is not known.
    pub(super) server_alive: Option<bool>,
}

/// Everything a soak saw.
#[derive(Debug)]
pub(super) struct Outcome {
    /// Lines the well-behaved clients sent, and deliveries they made and should have made.
    sent: u64,
    expected: u64,
    /// Deliveries not judged: lines sent after a receiver or its sender was disconnected.
    unjudged: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// Lines where they should not be: a sender's own in a room, another's on an echo
    /// server, a sequence number never sent.
    misdelivered: u64,
    /// One entry per well-behaved client that was disconnected or told it is too slow...
    disconnected: Vec<String>,
    /// ...from this many seconds into the soak to this many.
    disconnected_between: Option<(f64, f64)>,
    /// Senders still unable to send when the catch-up time was over.
    blocked_senders: usize,
    /// Overlong lines the well-behaved clients sent...
    overlong_sent: u64,
    /// ...those of clients connected to the end, and the refusals these read (a client
    /// disconnected may have lost its last refusals with its connection).
    overlong_judged: u64,
    refusals: u64,
    overlong_relayed: u64,
    other_errors: u64,
    first_other_error: Option<String>,
    unsanitised: u64,
    first_unsanitised: Option<String>,
    chatter_latency: Option<LatencySummary>,
    churn_cycles: u64,
    resets: u64,
    vanished: u64,
    half_closes: u64,
    unanswered: u64,
    closes: u64,
    visits: u64,
    evicted: u64,
    evicted_with_notice: u64,
    refused: u64,
    first_refusal: Option<String>,
    pub(super) watched: Watched,
}

/// Adds up every ledger and counter.
pub(super) fn tally(plan: &Plan, shared: &Shared, ended: &Ended, watched: Watched) -> Outcome {
    let sent: Vec<u32> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    let c = &shared.counters;
    let started = shared.traffic_started.load(Ordering::Acquire);
    let load = |counter: &AtomicU64| counter.load(Ordering::Acquire);
    let first = |slot: &Mutex<Option<String>>| slot.lock().ok().and_then(|s| s.clone());
    let mut outcome = Outcome {
        sent: sent.iter().map(|&s| u64::from(s)).sum(),
        expected: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        misdelivered: 0,
        disconnected: Vec::new(),
        disconnected_between: None,
        blocked_senders: ended.blocked_senders,
        unjudged: 0,
        overlong_sent: 0,
        overlong_judged: 0,
        refusals: 0,
        overlong_relayed: 0,
        other_errors: 0,
        first_other_error: None,
        unsanitised: load(&c.unsanitised),
        first_unsanitised: first(&c.first_unsanitised),
        chatter_latency: None,
        churn_cycles: load(&c.churn_cycles),
        resets: load(&c.resets),
        vanished: load(&c.vanished),
        half_closes: load(&c.half_closes),
        unanswered: load(&c.unanswered),
        closes: load(&c.closes),
        visits: load(&c.visits),
        evicted: load(&c.evicted),
        evicted_with_notice: load(&c.evicted_with_notice),
        refused: load(&c.refused),
        first_refusal: first(&c.first_refusal),
        watched,
    };
    let (receivers, send_failures) = (&ended.receivers, &ended.send_failures);
    let connected: Vec<bool> = receivers
        .iter()
        .zip(send_failures)
        .map(|(receiver, failure)| !receiver.closed && failure.is_none())
        .collect();
    let mut latencies = new_latencies();
    for (index, receiver) in receivers.iter().enumerate() {
        for (sender, ledger) in receiver.ledgers.iter().enumerate() {
            let Some(ledger) = ledger else { continue };
            // Between two clients connected to the end, every line sent must arrive. If
            // either was disconnected, only the lines before the last one that arrived were
            // surely sent while both were there: the rest are not judged.
            let judged = if connected[index] && connected[sender] {
                sent[sender]
            } else {
                sent[sender].min(ledger.seen_up_to())
            };
            outcome.expected += u64::from(judged);
            outcome.unjudged += u64::from(sent[sender] - judged);
            outcome.delivered += ledger.distinct();
            outcome.lost += ledger.lost(judged);
            outcome.duplicated += ledger.duplicated();
            outcome.reordered += ledger.out_of_order();
            outcome.misdelivered += ledger.never_sent(sent[sender]);
        }
        outcome.misdelivered += receiver.unexpected;
        let overlong = shared.overlong_sent[index].load(Ordering::Acquire);
        outcome.overlong_sent += u64::from(overlong);
        if connected[index] {
            outcome.overlong_judged += u64::from(overlong);
            outcome.refusals += u64::from(receiver.refusals);
        }
        outcome.overlong_relayed += receiver.overlong_relayed;
        outcome.other_errors += receiver.other_errors;
        if outcome.first_other_error.is_none() {
            outcome
                .first_other_error
                .clone_from(&receiver.first_other_error);
        }
        outcome.unsanitised += receiver.unsanitised;
        if outcome.first_unsanitised.is_none() {
            outcome
                .first_unsanitised
                .clone_from(&receiver.first_unsanitised);
        }
        let _ = latencies.add(&receiver.latencies);
        let who = if index < plan.chatters {
            format!("chatter {}", index + 1)
        } else {
            format!("flooder {}", index - plan.chatters + 1)
        };
        let last = escaped(receiver.last_line.trim_ascii());
        let at = receiver.closed_at.saturating_sub(started) as f64 / 1e9;
        let when = if receiver.closed {
            format!(" {at:.1} s in")
        } else {
            String::new()
        };
        let what = if receiver.too_slow
            && receiver.last_line.trim_ascii() == message::TOO_SLOW.as_bytes()
        {
            format!("was told \"{}\"{when}", message::TOO_SLOW)
        } else if receiver.too_slow {
            // The notice came glued to the end of a line the server had half written.
            format!("was told it is too slow{when}, in \"{last}\"")
        } else if receiver.closed {
            format!("was disconnected{when} (last line: \"{last}\")")
        } else if let Some(error) = &send_failures[index] {
            format!("could not send: {error}")
        } else {
            continue;
        };
        outcome.disconnected.push(format!("{who} {what}"));
        if receiver.closed {
            let (first, last) = outcome.disconnected_between.get_or_insert((at, at));
            (*first, *last) = (first.min(at), last.max(at));
        }
    }
    outcome.chatter_latency = LatencySummary::of(&latencies);
    outcome
}

/// Whether a check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    /// Reported, not judged.
    Info,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Fail => "FAIL",
            Status::Info => "-",
        }
    }

    fn unless(failed: bool) -> Status {
        if failed {
            Status::Fail
        } else {
            Status::Pass
        }
    }
}

/// One line of the verdict.
#[derive(Debug, Clone)]
pub(super) struct Check {
    status: Status,
    what: &'static str,
    detail: String,
}

fn check(status: Status, what: &'static str, detail: String) -> Check {
    Check {
        status,
        what,
        detail,
    }
}

/// RSS over the soak, judged: the median of the last fifth of the samples after the warm-up
/// (the first tenth of the soak) against the median of the first fifth (at least one sample
/// each); growth beyond [`RSS_GROWTH_FRACTION`] plus [`RSS_GROWTH_SLACK_KB`] is a leak. With
/// fewer than [`RSS_SAMPLES_MIN`] samples after the warm-up it is not judged (`ok` is None).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RssJudgement {
    early_kb: u64,
    late_kb: u64,
    limit_kb: u64,
    ok: Option<bool>,
}

fn judge_rss(samples: &[Sample], duration_s: f64) -> Option<RssJudgement> {
    let warm = WARM_UP_FRACTION * duration_s;
    let judged: Vec<u64> = samples
        .iter()
        .filter(|s| s.at_s >= warm && s.at_s <= duration_s)
        .map(|s| s.rss_kb)
        .collect();
    if judged.is_empty() {
        return None;
    }
    let window = ((judged.len() as f64 * WINDOW_FRACTION).round() as usize).max(1);
    let early_kb = median_kb(&judged[..window]);
    let late_kb = median_kb(&judged[judged.len() - window..]);
    let limit_kb = (early_kb as f64 * (1.0 + RSS_GROWTH_FRACTION)) as u64 + RSS_GROWTH_SLACK_KB;
    Some(RssJudgement {
        early_kb,
        late_kb,
        limit_kb,
        ok: (judged.len() >= RSS_SAMPLES_MIN).then_some(late_kb <= limit_kb),
    })
}

fn median_kb(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2
    }
}

/// The verdict, one check per line.
pub(super) fn checks(plan: &Plan, o: &Outcome) -> Vec<Check> {
    let w = &o.watched;
    let n = plan.well_behaved();
    let mut checks = Vec::new();
    let receivers = match plan.mode {
        Mode::Broadcast => "every other well-behaved client",
        Mode::Echo => "its sender",
    };
    checks.push(check(
        Status::Info,
        "lines",
        format!(
            "{n} well-behaved clients sent {} lines, each to {receivers}: {} of {} deliveries{}",
            count(o.sent),
            count(o.delivered),
            count(o.expected),
            if o.unjudged > 0 {
                format!(
                    " ({} more not judged: sent after a client was disconnected)",
                    count(o.unjudged)
                )
            } else {
                String::new()
            }
        ),
    ));
    let behind = if w.caught_up {
        format!(
            " (everyone caught up {:.1} s after the senders stopped)",
            w.catch_up_s
        )
    } else {
        format!(
            " (receivers still behind {:.1} s after the senders stopped)",
            w.catch_up_s
        )
    };
    checks.push(check(
        Status::unless(o.lost > 0 || !w.caught_up),
        "lost",
        format!("{}{behind}", o.lost),
    ));
    checks.push(check(
        Status::unless(o.duplicated > 0),
        "duplicated",
        o.duplicated.to_string(),
    ));
    checks.push(check(
        Status::unless(o.reordered > 0),
        "reordered",
        o.reordered.to_string(),
    ));
    checks.push(check(
        Status::unless(o.misdelivered > 0),
        "misdelivered",
        format!(
            "{} (own lines back in a room, others' echoes, lines never sent)",
            o.misdelivered
        ),
    ));
    let mut evicted = format!("{} of {n}", o.disconnected.len());
    if let Some((first, last)) = o.disconnected_between {
        let _ = write!(evicted, ", {first:.1} to {last:.1} s into the soak");
    }
    if let Some(first) = o.disconnected.first() {
        let _ = write!(evicted, ": {first}");
        if o.disconnected.len() > 1 {
            let _ = write!(evicted, ", and {} more", o.disconnected.len() - 1);
        }
    }
    if o.blocked_senders > 0 {
        let _ = write!(
            evicted,
            "; {} senders still blocked in a write {:.1} s after the soak's end",
            o.blocked_senders, w.catch_up_s
        );
    }
    checks.push(check(
        Status::unless(!o.disconnected.is_empty() || o.blocked_senders > 0),
        "well-behaved evicted",
        evicted,
    ));
    checks.push(check(
        Status::unless(o.other_errors > 0),
        "error notices",
        match &o.first_other_error {
            Some(first) => format!("{} (first: \"{first}\")", o.other_errors),
            None => "0 besides the refusals of overlong lines".to_owned(),
        },
    ));
    let judged = if o.overlong_judged == o.overlong_sent {
        String::new()
    } else {
        format!(" ({} by clients connected to the end)", o.overlong_judged)
    };
    checks.push(check(
        Status::unless(o.refusals != o.overlong_judged || o.overlong_relayed > 0),
        "overlong lines",
        format!(
            "{} sent{judged}, {} refused with \"{}\", {} pieces relayed",
            o.overlong_sent,
            o.refusals,
            message::line_too_long(plan.max_line),
            o.overlong_relayed
        ),
    ));
    checks.push(check(
        Status::unless(o.unsanitised > 0),
        "sanitised",
        match &o.first_unsanitised {
            Some(first) => format!(
                "{} lines reached a client with bytes SPEC 3 forbids (first: \"{first}\")",
                o.unsanitised
            ),
            None => "no client received a control character or invalid UTF-8".to_owned(),
        },
    ));
    let mut churn = format!(
        "{} cycles: {} resets, {} vanished mid-line, {} half-closes answered, {} closes",
        count(o.churn_cycles),
        o.resets,
        o.vanished,
        o.half_closes,
        o.closes
    );
    if o.unanswered > 0 {
        let _ = write!(
            churn,
            "; {} half-closes never closed by the server within {} s",
            o.unanswered,
            CHURN_EOF_TIMEOUT.as_secs()
        );
    }
    checks.push(check(Status::unless(o.unanswered > 0), "churn", churn));
    checks.push(check(
        Status::unless(o.refused > 0),
        "connects",
        match &o.first_refusal {
            Some(first) => format!("{} refused or timed out (first: {first})", o.refused),
            None => "every connect succeeded".to_owned(),
        },
    ));
    checks.push(check(
        Status::Info,
        "non-readers",
        format!(
            "{}, {} evicted ({} with \"{}\"): allowed",
            plural(o.visits, "visit"),
            o.evicted,
            o.evicted_with_notice,
            message::TOO_SLOW
        ),
    ));
    let rss = judge_rss(&w.samples, plan.duration.as_secs_f64());
    let memory = match (w.rss_idle_kb, rss) {
        (Some(idle), Some(rss)) => {
            let verdict = match rss.ok {
                Some(_) => format!("limit {}", kilobytes(rss.limit_kb)),
                None => "too few samples to judge".to_owned(),
            };
            check(
                match rss.ok {
                    Some(ok) => Status::unless(!ok),
                    None => Status::Info,
                },
                "memory",
                format!(
                    "RSS idle {}, early {}, late {} ({verdict}), peak {}, end {}",
                    kilobytes(idle),
                    kilobytes(rss.early_kb),
                    kilobytes(rss.late_kb),
                    w.rss_peak_kb.map_or("-".to_owned(), kilobytes),
                    w.rss_end_kb.map_or("-".to_owned(), kilobytes),
                ),
            )
        }
        _ => check(
            Status::Info,
            "memory",
            "not measured (give --server-pid)".to_owned(),
        ),
    };
    checks.push(memory);
    checks.push(match (w.fds_start, w.fds_end) {
        (Some(start), Some(end)) => check(
            Status::unless(end > start + FD_TOLERANCE),
            "descriptors",
            format!(
                "start {start}, peak {}, end {end} (limit {})",
                w.samples.iter().map(|s| s.fds).max().unwrap_or(end),
                start + FD_TOLERANCE
            ),
        ),
        _ => check(
            Status::Info,
            "descriptors",
            "not measured (give --server-pid)".to_owned(),
        ),
    });
    if let Some(alive) = w.server_alive {
        checks.push(check(
            Status::unless(!alive),
            "server",
            if alive {
                "still running"
            } else {
                "EXITED during the soak"
            }
            .to_owned(),
        ));
    }
    if let Some(latency) = &o.chatter_latency {
        checks.push(check(
            Status::Info,
            "chatter latency",
            format!(
                "p50 {}, p99 {}, p99.9 {}, max {}",
                micros(latency.p50_us),
                micros(latency.p99_us),
                micros(latency.p999_us),
                micros(latency.max_us)
            ),
        ));
    }
    checks
}

/// PASS: no check failed.
pub(super) fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// What the soak prints on stdout.
pub(super) fn verdict_text(plan: &Plan, checks: &[Check], passed: bool) -> String {
    let mut out = format!(
        "soak {}, {}: {}\n",
        plan.name,
        duration_text(plan.duration),
        if passed { "PASS" } else { "FAIL" }
    );
    let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    for c in checks {
        let _ = writeln!(
            out,
            "  {:<4}  {:<width$}  {}",
            c.status.word(),
            c.what,
            c.detail
        );
    }
    out
}

/// Writes `soak-<name>.md` and `soak-<name>.svg` into `dir`; returns the summary's path.
pub(super) fn write_files(
    dir: &Path,
    plan: &Plan,
    outcome: &Outcome,
    checks: &[Check],
    command_line: Option<&str>,
    server_log: &[String],
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = format!("soak-{}", file_name(&plan.name));
    let chart = format!("{stem}.svg");
    let has_chart = !outcome.watched.samples.is_empty();
    if has_chart {
        let points: Vec<(f64, f64, f64)> = outcome
            .watched
            .samples
            .iter()
            .map(|s| (s.at_s, s.rss_kb as f64 / 1024.0, s.fds as f64))
            .collect();
        crate::charts::soak(
            &dir.join(&chart),
            &format!("soak {}: server memory and descriptors", plan.name),
            &points,
            plan.duration.as_secs_f64(),
        )?;
    }
    let summary = dir.join(format!("{stem}.md"));
    let markdown = markdown(
        plan,
        checks,
        command_line,
        server_log,
        has_chart.then_some(chart.as_str()),
    );
    std::fs::write(&summary, markdown)
        .with_context(|| format!("cannot write {}", summary.display()))?;
    Ok(summary)
}

/// `127.0.0.1:8080` as a file name: `127.0.0.1-8080`.
fn file_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The whole `soak-<name>.md`.
fn markdown(
    plan: &Plan,
    checks: &[Check],
    command_line: Option<&str>,
    server_log: &[String],
    chart: Option<&str>,
) -> String {
    let passed = passed(checks);
    let m = results::Machine::this_one();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# chat-bench soak: {}, {}: {}\n",
        plan.name,
        duration_text(plan.duration),
        if passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        out,
        "{}, on {} CPUs ({}), {} MB RAM, Linux {}.\n",
        results::utc_text(std::time::SystemTime::now()),
        m.cpus,
        m.cpu_model,
        m.memory_mb,
        m.kernel
    );
    if let Some(command_line) = command_line {
        let _ = writeln!(
            out,
            "Server: `{command_line}` (release build, `RUST_LOG=warn`).\n"
        );
    }
    let _ = writeln!(out, "Clients: {}.\n", plan.describe());
    out.push_str("| | check | result |\n|---|---|---|\n");
    for c in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            c.status.word(),
            c.what,
            c.detail.replace('|', "\\|")
        );
    }
    let _ = writeln!(
        out,
        "\nRules: every line of a chatter or flooder must reach {}, once and in order, with \
         no well-behaved client disconnected or told it is too slow (after the senders stop, \
         receivers get up to {} s to catch up, or until nothing arrived for {} s). Overlong \
         lines must each be refused once and never relayed; nothing SPEC 3 forbids may reach \
         a client. Memory: the median RSS of the last fifth of the samples after a warm-up \
         (the first tenth of the soak) may exceed that of the first fifth by at most {:.0} % \
         + {}. Descriptors: once the churners are gone, at most {FD_TOLERANCE} more than when \
         the soak started. Non-readers may be evicted.",
        match plan.mode {
            Mode::Broadcast => "every other well-behaved client",
            Mode::Echo => "its sender",
        },
        CATCH_UP_TIMEOUT.as_secs(),
        CATCH_UP_STALL.as_secs(),
        RSS_GROWTH_FRACTION * 100.0,
        kilobytes(RSS_GROWTH_SLACK_KB),
    );
    if let Some(chart) = chart {
        let _ = writeln!(out, "\n![server RSS and open descriptors]({chart})");
    }
    if !passed && !server_log.is_empty() {
        let _ = writeln!(out, "\nThe server's last log lines:\n\n```text");
        for line in server_log.iter().rev().take(LOG_LINES_SHOWN).rev() {
            let _ = writeln!(out, "{line}");
        }
        out.push_str("```\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &rss_kb)| Sample {
                at_s: i as f64 + 1.0,
                rss_kb,
                fds: 10,
            })
            .collect()
    }

    #[test]
    fn flat_memory_passes_and_the_warm_up_is_not_held_against_it() {
        // 20 s: the first 2 s are warm-up, where memory grows to its working size.
        let mut rss = vec![1_000, 20_000];
        rss.extend([30_000; 18]);
        let judged = judge_rss(&samples(&rss), 20.0).unwrap();
        assert_eq!((judged.early_kb, judged.late_kb), (30_000, 30_000));
        assert_eq!(judged.ok, Some(true));
    }

    #[test]
    fn memory_that_keeps_growing_fails() {
        // 100 KiB more every second for a minute: 6 MB.
        let rss: Vec<u64> = (0..60).map(|i| 10_000 + i * 100).collect();
        let judged = judge_rss(&samples(&rss), 60.0).unwrap();
        assert!(judged.late_kb > judged.limit_kb, "{judged:?}");
        assert_eq!(judged.ok, Some(false));
    }

    #[test]
    fn a_spike_in_the_last_window_is_not_a_leak_but_a_plateau_is() {
        let mut rss = vec![10_000; 50];
        rss[47] = 40_000;
        assert_eq!(judge_rss(&samples(&rss), 50.0).unwrap().ok, Some(true));
        for late in &mut rss[40..] {
            *late = 40_000;
        }
        assert_eq!(judge_rss(&samples(&rss), 50.0).unwrap().ok, Some(false));
    }

    #[test]
    fn too_few_samples_are_reported_not_judged() {
        let judged = judge_rss(&samples(&[10_000, 90_000]), 2.0).unwrap();
        assert_eq!(judged.ok, None);
        assert_eq!(judge_rss(&[], 60.0), None);
    }

    #[test]
    fn addresses_become_file_names() {
        assert_eq!(file_name("v4-async"), "v4-async");
        assert_eq!(file_name("127.0.0.1:8080"), "127.0.0.1-8080");
        assert_eq!(file_name("[::1]:8080"), "1-8080");
    }
}
