//! Counting what arrived: every delivery checked against what was sent, per sender and
//! receiver, and every latency recorded in an HDR histogram.
//!
//! Each receiver keeps its own [`ReceiverTally`], touched only by its own task (no locks, no
//! shared cache lines on the hot path); the run merges them at the end into one [`Totals`].
//! A throughput number is only worth something next to these counts: a server that drops a
//! tenth of its lines is not "faster".
//!
//! A [`SenderLedger`] knows how many lines its sender sends; a soak's senders send until a
//! deadline, so its receivers keep a [`StreamLedger`] instead, judged at the end.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds: the smallest difference that matters here (a
/// paced p99 target is 1 ms) and the unit the reports print.
pub const LATENCY_UNIT_NANOS: u64 = 1_000;

/// Largest latency the histograms hold, in microseconds (a minute); larger values are
/// recorded as a minute.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

/// Three significant digits: 1 µs resolution below 2 ms, 0.1% above. u32 counts keep one
/// histogram at about 70 KB, so a thousand receivers can each own one.
const LATENCY_DIGITS: u8 = 3;

/// A latency histogram in microseconds.
pub type Latencies = Histogram<u32>;

/// An empty latency histogram with the bounds every receiver uses, so they merge.
pub fn new_latencies() -> Latencies {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, LATENCY_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// What one arriving line was, compared with what its sender sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next line expected: the normal case.
    InOrder,
    /// A line not seen before, but after a later line of the same sender.
    OutOfOrder,
    /// A line seen before.
    Duplicate,
    /// A sequence number the sender never sent.
    Unexpected,
}

/// The lines one receiver got from one sender: which sequence numbers, in what order.
#[derive(Debug, Clone)]
pub struct SenderLedger {
    /// How many lines this sender sends.
    expected: u32,
    /// One bit per sequence number already seen.
    seen: Vec<u64>,
    /// Distinct lines seen.
    distinct: u32,
    /// One past the highest sequence number seen.
    next: u32,
    /// Every line before this one has arrived: what the sender's window waits on.
    contiguous: u32,
    duplicated: u64,
    out_of_order: u64,
}

impl SenderLedger {
    pub fn new(expected: u32) -> SenderLedger {
        SenderLedger {
            expected,
            seen: vec![0; (expected as usize).div_ceil(64)],
            distinct: 0,
            next: 0,
            contiguous: 0,
            duplicated: 0,
            out_of_order: 0,
        }
    }

    /// Accounts for line `seq` and says what it was.
    #[inline]
    pub fn record(&mut self, seq: u32) -> Arrival {
        if seq >= self.expected {
            return Arrival::Unexpected;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seq == self.next {
            // The usual case: one past the highest seen, so never seen before.
            self.seen[word] |= bit;
            self.distinct += 1;
            self.next += 1;
            if self.contiguous == seq {
                self.contiguous += 1;
            }
            return Arrival::InOrder;
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        if seq == self.contiguous {
            self.contiguous += 1;
            while self.contiguous < self.next && self.is_seen(self.contiguous) {
                self.contiguous += 1;
            }
        }
        if seq < self.next {
            self.out_of_order += 1;
            Arrival::OutOfOrder
        } else {
            self.next = seq + 1;
            Arrival::InOrder
        }
    }

    fn is_seen(&self, seq: u32) -> bool {
        self.seen[(seq / 64) as usize] & (1u64 << (seq % 64)) != 0
    }

    /// How many lines, from the first, have all arrived.
    pub fn contiguous(&self) -> u32 {
        self.contiguous
    }

    #[cfg(test)]
    pub fn distinct(&self) -> u32 {
        self.distinct
    }

    /// Lines sent but never seen.
    pub fn lost(&self) -> u32 {
        self.expected - self.distinct
    }
}

/// The most gaps a [`StreamLedger`] remembers. A gap costs a map entry, and a server that
/// drops every other line would make one per line: past this many, a new gap is written off as
/// lost at once, so a soak's memory stays bounded however broken the server is (its verdict
/// is a failure by then anyway).
const STREAM_GAPS_MAX: usize = 100_000;

/// The lines one receiver got from one sender that sends for as long as a soak lasts, so that
/// how many it sends is known only at the end. A [`SenderLedger`] keeps a bit per line; this
/// keeps only the gaps (usually none), so an hour of flooding costs a few words.
///
/// A line past the highest seen opens a gap for the lines it skipped; a line that fills part
/// of a gap arrived out of order; a line below the highest seen and in no gap is a duplicate.
/// What is lost is judged at the end, against what the sender says it sent.
#[derive(Debug, Clone, Default)]
pub struct StreamLedger {
    /// One past the highest sequence number seen.
    next: u32,
    /// Missing lines below `next`, as `start -> end` (exclusive) ranges.
    gaps: std::collections::BTreeMap<u32, u32>,
    /// Missing lines written off because too many gaps were open.
    written_off: u64,
    distinct: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl StreamLedger {
    /// Accounts for line `seq` and says what it was ([`Arrival::Unexpected`] is never returned:
    /// a line past what was sent can only be told at the end, see [`StreamLedger::never_sent`]).
    #[inline]
    pub fn record(&mut self, seq: u32) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                if self.gaps.len() < STREAM_GAPS_MAX {
                    self.gaps.insert(self.next, seq);
                } else {
                    self.written_off += u64::from(seq - self.next);
                }
            }
            self.next = seq.saturating_add(1);
            self.distinct += 1;
            return Arrival::InOrder;
        }
        // The gap that would hold `seq`: the last one starting at or before it.
        let Some((&start, &end)) = self.gaps.range(..=seq).next_back() else {
            self.duplicated += 1;
            return Arrival::Duplicate;
        };
        if seq >= end {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, seq);
        }
        if seq + 1 < end {
            self.gaps.insert(seq + 1, end);
        }
        self.distinct += 1;
        self.out_of_order += 1;
        Arrival::OutOfOrder
    }

    /// How many lines, from the first, have all arrived.
    pub fn contiguous(&self) -> u32 {
        self.gaps.keys().next().copied().unwrap_or(self.next)
    }

    /// One past the highest sequence number seen: every line below it that did not arrive
    /// was surely sent, and so lost (or late).
    pub fn seen_up_to(&self) -> u32 {
        self.next
    }

    /// Lines `0..sent` that never arrived.
    pub fn lost(&self, sent: u32) -> u64 {
        let in_gaps: u64 = self
            .gaps
            .iter()
            .map(|(&start, &end)| u64::from(end.min(sent).saturating_sub(start)))
            .sum();
        in_gaps + self.written_off + u64::from(sent.saturating_sub(self.next))
    }

    /// Lines that arrived with a sequence number the sender never reached.
    pub fn never_sent(&self, sent: u32) -> u64 {
        let beyond = u64::from(self.next.saturating_sub(sent));
        let missing_beyond: u64 = self
            .gaps
            .iter()
            .map(|(&start, &end)| u64::from(end.saturating_sub(start.max(sent))))
            .sum();
        beyond.saturating_sub(missing_beyond)
    }

    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }
}

/// The slot of a sender this receiver expects nothing from. Slots are u16 like senders, and
/// a receiver never expects all 65 536 possible senders, so this value is free.
const NO_LEDGER: u16 = u16::MAX;

/// Everything one receiver counted.
#[derive(Debug)]
pub struct ReceiverTally {
    /// For each sender, the index of its ledger, or [`NO_LEDGER`] for a sender whose lines
    /// this receiver should not get (itself in a room; everyone else when the server echoes).
    /// Two bytes per sender, so that an echo client among a thousand senders stays small.
    slots: Vec<u16>,
    ledgers: Vec<SenderLedger>,
    latencies: Option<Latencies>,
    /// Deliveries with the same send time, received in the same read, have the same latency:
    /// they are recorded as one histogram entry with a count (a burst sender stamps 64 lines
    /// at once), which takes the histogram off the receivers' profile.
    pending: LatencyRun,
    expected: u64,
    distinct: u64,
    unexpected: u64,
}

/// Deliveries not yet in the histogram, all with the same latency.
#[derive(Debug, Default, Clone, Copy)]
struct LatencyRun {
    sent_nanos: u64,
    received_nanos: u64,
    count: u32,
}

impl LatencyRun {
    fn record_into(self, latencies: &mut Latencies) {
        if self.count > 0 {
            let micros = self.received_nanos.saturating_sub(self.sent_nanos) / LATENCY_UNIT_NANOS;
            latencies.saturating_record_n(micros.clamp(1, LATENCY_MAX_MICROS), self.count);
        }
    }
}

impl ReceiverTally {
    /// A tally expecting `messages` lines from each sender for which `expects(sender)` holds.
    pub fn new(senders: usize, messages: u32, expects: impl Fn(usize) -> bool) -> ReceiverTally {
        let mut slots = Vec::new();
        let mut ledgers = Vec::new();
        if messages > 0 {
            slots = (0..senders)
                .map(|sender| {
                    if expects(sender) {
                        ledgers.push(SenderLedger::new(messages));
                        (ledgers.len() - 1) as u16
                    } else {
                        NO_LEDGER
                    }
                })
                .collect();
        }
        let expected = ledgers.len() as u64 * u64::from(messages);
        ReceiverTally {
            slots,
            ledgers,
            latencies: (expected > 0).then(new_latencies),
            pending: LatencyRun::default(),
            expected,
            distinct: 0,
            unexpected: 0,
        }
    }

    /// Accounts for one delivery of line `seq` from `sender`, sent at `sent_nanos` and read at
    /// `received_nanos`. Only first deliveries count towards latency: a duplicate's delay is
    /// not a delivery.
    #[inline]
    pub fn record(
        &mut self,
        sender: u16,
        seq: u32,
        sent_nanos: u64,
        received_nanos: u64,
    ) -> Arrival {
        let slot = self
            .slots
            .get(usize::from(sender))
            .copied()
            .unwrap_or(NO_LEDGER);
        let Some(ledger) = self.ledgers.get_mut(usize::from(slot)) else {
            self.unexpected += 1;
            return Arrival::Unexpected;
        };
        let arrival = ledger.record(seq);
        match arrival {
            Arrival::InOrder | Arrival::OutOfOrder => {
                self.distinct += 1;
                let run = &mut self.pending;
                if run.sent_nanos == sent_nanos && run.received_nanos == received_nanos {
                    run.count += 1;
                } else {
                    if let Some(latencies) = &mut self.latencies {
                        run.record_into(latencies);
                    }
                    *run = LatencyRun {
                        sent_nanos,
                        received_nanos,
                        count: 1,
                    };
                }
            }
            Arrival::Unexpected => self.unexpected += 1,
            Arrival::Duplicate => {}
        }
        arrival
    }

    /// How many lines from `sender` have arrived without a gap, from the first.
    pub fn contiguous(&self, sender: usize) -> u32 {
        let slot = self.slots.get(sender).copied().unwrap_or(NO_LEDGER);
        self.ledgers
            .get(usize::from(slot))
            .map_or(0, SenderLedger::contiguous)
    }

    #[cfg(test)]
    pub fn expected(&self) -> u64 {
        self.expected
    }

    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// True once every expected line has arrived (never for a receiver that expects none).
    pub fn is_complete(&self) -> bool {
        self.expected > 0 && self.distinct == self.expected
    }
}

/// The sum of every receiver's tally.
#[derive(Debug)]
pub struct Totals {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub latencies: Latencies,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            expected: 0,
            delivered: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            latencies: new_latencies(),
        }
    }
}

impl Totals {
    /// Adds one receiver's counts and latencies.
    pub fn add(&mut self, tally: &ReceiverTally) {
        self.expected += tally.expected;
        self.delivered += tally.distinct;
        self.unexpected += tally.unexpected;
        for ledger in &tally.ledgers {
            self.lost += u64::from(ledger.lost());
            self.duplicated += ledger.duplicated;
            self.out_of_order += ledger.out_of_order;
        }
        if let Some(latencies) = &tally.latencies {
            self.latencies
                .add(latencies)
                .expect("every histogram has the same bounds");
        }
        tally.pending.record_into(&mut self.latencies);
    }

    /// True if anything went wrong: a line lost, seen twice, out of order or never sent.
    #[cfg(test)]
    pub fn has_errors(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.unexpected > 0
    }
}

/// The percentiles a report prints, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// `None` for an empty histogram.
    pub fn of(latencies: &Latencies) -> Option<LatencySummary> {
        if latencies.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: latencies.len(),
            mean_us: latencies.mean(),
            p50_us: latencies.value_at_quantile(0.50),
            p90_us: latencies.value_at_quantile(0.90),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_order_are_all_counted_and_nothing_is_lost() {
        let mut ledger = SenderLedger::new(100);
        for seq in 0..100 {
            assert_eq!(ledger.record(seq), Arrival::InOrder);
        }
        assert_eq!(
            (ledger.distinct(), ledger.lost(), ledger.contiguous()),
            (100, 0, 100)
        );
    }

    #[test]
    fn a_missing_line_is_lost_and_stops_the_contiguous_count() {
        let mut ledger = SenderLedger::new(10);
        for seq in (0..10).filter(|&seq| seq != 4) {
            ledger.record(seq);
        }
        assert_eq!(ledger.lost(), 1);
        assert_eq!(ledger.contiguous(), 4);
        assert_eq!(ledger.out_of_order, 0);
    }

    #[test]
    fn a_late_line_is_out_of_order_but_delivered() {
        let mut ledger = SenderLedger::new(5);
        for seq in [0, 2, 3] {
            assert_eq!(ledger.record(seq), Arrival::InOrder);
        }
        assert_eq!(ledger.contiguous(), 1);
        assert_eq!(ledger.record(1), Arrival::OutOfOrder);
        assert_eq!(ledger.contiguous(), 4, "the gap closed: 0..4 all seen");
        ledger.record(4);
        assert_eq!(
            (ledger.distinct(), ledger.lost(), ledger.out_of_order),
            (5, 0, 1)
        );
    }

    #[test]
    fn a_line_seen_twice_is_a_duplicate_and_counts_once() {
        let mut ledger = SenderLedger::new(3);
        ledger.record(0);
        ledger.record(1);
        assert_eq!(ledger.record(1), Arrival::Duplicate);
        assert_eq!(ledger.record(0), Arrival::Duplicate);
        ledger.record(2);
        assert_eq!(
            (ledger.distinct(), ledger.duplicated, ledger.lost()),
            (3, 2, 0)
        );
    }

    #[test]
    fn a_sequence_number_never_sent_is_unexpected() {
        let mut ledger = SenderLedger::new(3);
        assert_eq!(ledger.record(3), Arrival::Unexpected);
        assert_eq!(ledger.record(u32::MAX), Arrival::Unexpected);
        assert_eq!(ledger.distinct(), 0);
    }

    #[test]
    fn a_stream_in_order_loses_nothing_once_all_sent_lines_arrived() {
        let mut ledger = StreamLedger::default();
        for seq in 0..1000 {
            assert_eq!(ledger.record(seq), Arrival::InOrder);
        }
        assert_eq!(ledger.contiguous(), 1000);
        assert_eq!((ledger.lost(1000), ledger.never_sent(1000)), (0, 0));
        assert_eq!(ledger.lost(1003), 3, "sent but not (yet) arrived");
    }

    #[test]
    fn a_stream_gap_is_lost_unless_its_lines_turn_up_late() {
        let mut ledger = StreamLedger::default();
        for seq in [0, 1, 5, 6] {
            assert_eq!(ledger.record(seq), Arrival::InOrder);
        }
        assert_eq!(ledger.contiguous(), 2);
        assert_eq!(ledger.lost(7), 3);
        assert_eq!(
            ledger.lost(ledger.seen_up_to()),
            3,
            "2, 3 and 4 surely were sent"
        );
        assert_eq!(ledger.record(3), Arrival::OutOfOrder);
        assert_eq!(ledger.lost(7), 2);
        assert_eq!(ledger.record(2), Arrival::OutOfOrder);
        assert_eq!(ledger.record(4), Arrival::OutOfOrder);
        assert_eq!(ledger.contiguous(), 7, "the gap closed");
        assert_eq!(
            (ledger.lost(7), ledger.out_of_order(), ledger.distinct()),
            (0, 3, 7)
        );
    }

    #[test]
    fn a_stream_line_seen_twice_is_a_duplicate_inside_or_outside_gaps() {
        let mut ledger = StreamLedger::default();
        for seq in [0, 1, 4] {
            ledger.record(seq);
        }
        assert_eq!(ledger.record(1), Arrival::Duplicate, "below the gap");
        assert_eq!(ledger.record(4), Arrival::Duplicate, "the line after it");
        assert_eq!(ledger.record(2), Arrival::OutOfOrder);
        assert_eq!(ledger.record(2), Arrival::Duplicate, "once filled");
        assert_eq!((ledger.duplicated(), ledger.distinct()), (3, 4));
        assert_eq!(ledger.lost(5), 1);
    }

    #[test]
    fn a_stream_line_past_what_was_sent_is_never_sent() {
        let mut ledger = StreamLedger::default();
        for seq in [0, 1, 2, 9] {
            ledger.record(seq);
        }
        assert_eq!(
            ledger.never_sent(3),
            1,
            "line 9; 3..9 is a gap, not arrivals"
        );
        assert_eq!(ledger.lost(3), 0);
        assert_eq!(ledger.never_sent(10), 0);
        assert_eq!(ledger.lost(10), 6);
    }

    #[test]
    fn a_stream_with_too_many_gaps_writes_new_ones_off_as_lost() {
        let mut ledger = StreamLedger::default();
        let lines = (STREAM_GAPS_MAX as u32 + 10) * 2;
        for seq in (0..lines).step_by(2) {
            ledger.record(seq + 1);
        }
        assert_eq!(ledger.gaps.len(), STREAM_GAPS_MAX);
        assert_eq!(ledger.lost(lines), u64::from(lines / 2));
    }

    #[test]
    fn a_room_receiver_expects_everyone_but_itself() {
        let me = 1;
        let mut tally = ReceiverTally::new(3, 2, |sender| sender != me);
        assert_eq!(tally.expected(), 4);
        assert_eq!(
            tally.record(1, 0, 0, 10_000),
            Arrival::Unexpected,
            "its own line"
        );
        assert_eq!(
            tally.record(7, 0, 0, 10_000),
            Arrival::Unexpected,
            "no such sender"
        );
        for sender in [0, 2] {
            for seq in 0..2 {
                assert!(!tally.is_complete());
                assert_eq!(tally.record(sender, seq, 0, 10_000), Arrival::InOrder);
            }
        }
        assert!(tally.is_complete());
        assert_eq!(tally.contiguous(0), 2);
        assert_eq!(tally.contiguous(1), 0);
    }

    #[test]
    fn an_echo_receiver_among_many_senders_expects_only_itself() {
        let me = 700;
        let mut tally = ReceiverTally::new(1000, 3, |sender| sender == me);
        assert_eq!(tally.expected(), 3);
        assert_eq!(tally.record(0, 0, 0, 1), Arrival::Unexpected);
        for seq in 0..3 {
            assert_eq!(tally.record(me as u16, seq, 0, 1), Arrival::InOrder);
        }
        assert!(tally.is_complete());
        assert_eq!(tally.contiguous(me), 3);
    }

    #[test]
    fn a_receiver_that_expects_nothing_is_never_complete() {
        let tally = ReceiverTally::new(3, 0, |_| true);
        assert_eq!(tally.expected(), 0);
        assert!(!tally.is_complete());
    }

    #[test]
    fn totals_merge_counts_and_histograms_of_every_receiver() {
        let mut fast = ReceiverTally::new(1, 100, |_| true);
        for seq in 0..100 {
            fast.record(0, seq, 0, 100_000);
        }
        let mut slow = ReceiverTally::new(1, 100, |_| true);
        for seq in (0..100).filter(|seq| seq % 10 != 0) {
            slow.record(0, seq, 0, 10_000_000);
        }
        slow.record(0, 5, 0, 10_000_000);

        let mut totals = Totals::default();
        totals.add(&fast);
        totals.add(&slow);
        assert_eq!(totals.expected, 200);
        assert_eq!(totals.delivered, 190);
        assert_eq!(totals.lost, 10);
        assert_eq!(totals.duplicated, 1);
        assert!(totals.has_errors());

        let summary = LatencySummary::of(&totals.latencies).unwrap();
        assert_eq!(summary.count, 190, "duplicates have no latency");
        assert_eq!(summary.p50_us, 100, "100 of 190 samples are 100 µs");
        assert!((9_990..=10_010).contains(&summary.p99_us), "{summary:?}");
        assert!((9_990..=10_010).contains(&summary.max_us), "{summary:?}");
    }

    #[test]
    fn latencies_outside_the_histogram_are_clamped() {
        let mut tally = ReceiverTally::new(1, 2, |_| true);
        tally.record(0, 0, 5, 5);
        tally.record(0, 1, 0, u64::MAX);
        let mut totals = Totals::default();
        totals.add(&tally);
        let summary = LatencySummary::of(&totals.latencies).unwrap();
        assert_eq!(summary.count, 2);
        assert!(summary.max_us >= LATENCY_MAX_MICROS, "{summary:?}");
        assert!(!totals.has_errors());
    }

    #[test]
    fn equal_latencies_are_recorded_as_one_run_and_lose_nothing() {
        let mut tally = ReceiverTally::new(1, 6, |_| true);
        // Three lines stamped together and read together, then three read later.
        for seq in 0..3 {
            tally.record(0, seq, 1_000_000, 3_000_000);
        }
        for seq in 3..6 {
            tally.record(0, seq, 1_000_000, 9_000_000);
        }
        let mut totals = Totals::default();
        totals.add(&tally);
        let summary = LatencySummary::of(&totals.latencies).unwrap();
        assert_eq!(summary.count, 6);
        assert_eq!(summary.p50_us, 2_000);
        assert!((7_995..=8_005).contains(&summary.max_us), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_has_no_summary() {
        assert_eq!(LatencySummary::of(&new_latencies()), None);
    }
}
