//! Counts, sizes, rates and durations as people read them.

use std::time::Duration;

/// `1234567` as `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `23.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Rows per second, short: `850 rows/s`, `12.3k rows/s`, `1.2M rows/s`.
pub fn rate(rows_per_sec: f64) -> String {
    let (value, suffix) = match rows_per_sec {
        r if r >= 1e6 => (r / 1e6, "M"),
        r if r >= 1e4 => (r / 1e3, "k"),
        r => return format!("{r:.0} rows/s"),
    };
    format!("{value:.1}{suffix} rows/s")
}

/// A duration to the second: `42s`, `3m 05s`, `2h 01m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(0.0), "0 rows/s");
        assert_eq!(rate(850.4), "850 rows/s");
        assert_eq!(rate(9_999.0), "9999 rows/s");
        assert_eq!(rate(12_345.0), "12.3k rows/s");
        assert_eq!(rate(1_240_000.0), "1.2M rows/s");
    }

    #[test]
    fn durations_round_to_the_second() {
        assert_eq!(duration(Duration::from_millis(400)), "0s");
        assert_eq!(duration(Duration::from_millis(41_600)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(duration(Duration::from_secs(7_260)), "2h 01m");
    }
}
