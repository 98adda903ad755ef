//! Numbers as a person writes them, for every table and summary chat-bench prints.

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

/// `850 ns`, `12.3 µs`, `1.23 ms`: a cost per delivery.
pub fn nanos(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(nanos(850.0), "850 ns");
        assert_eq!(nanos(12_345.0), "12 µs");
        assert_eq!(nanos(1_234.0), "1.2 µs");
        assert_eq!(nanos(1_234_567.0), "1.23 ms");
    }
}
