//! Pacing: the shipper never sends more than `max_requests_per_minute`, and honours the
//! listener's `Retry-After`.
//!
//! The rule is a minimum spacing of `60 s / max_requests_per_minute` between the *end* of one
//! request and the *start* of the next. Measured from the end, it guarantees that any N + 1
//! consecutive requests arrive at the listener at least 60 s apart, whatever the network delay,
//! so no 60 s window (the listener's fixed windows included) ever sees more than N. A backlog
//! therefore drains smoothly at the configured pace instead of in bursts.
//!
//! Like the breaker, the pacer never reads a clock: time is passed in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Used when a 429 carries no usable `Retry-After`: the listener's rate-limit window.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest `Retry-After` honoured; a larger value is treated as this (a listener asking for
/// more is misconfigured, and the agent should not go silent for hours).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Spaces requests and holds them back after a 429.
#[derive(Debug, Clone)]
pub struct Pacer {
    spacing: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for at most `max_per_minute` requests per minute (at least 1).
    pub fn new(max_per_minute: u32) -> Pacer {
        Pacer {
            spacing: Duration::from_secs(60) / max_per_minute.max(1),
            next: None,
        }
    }

    /// The minimum gap between the end of a request and the start of the next.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// How long to wait at `now` before the next request may start (zero when it may start).
    pub fn wait(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |next| next.saturating_duration_since(now))
    }

    /// Records that a request ended at `now`.
    pub fn finished(&mut self, now: Instant) {
        self.hold(now + self.spacing);
    }

    /// No request before `until` (a 429's `Retry-After`, a configuration error's back-off).
    /// Never shortens an existing hold.
    pub fn hold(&mut self, until: Instant) {
        self.next = Some(self.next.map_or(until, |n| n.max(until)));
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (IMF-fixdate, as RFC 9110
/// requires senders to use). `now` is the wall clock used for dates. `None` when unusable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_imf_fixdate(value)?;
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Duration::from_secs(at.saturating_sub(now))
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → unix seconds.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let (_weekday, rest) = s.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = crate::calendar::days_from_civil(year, i64::from(month), i64::from(day));
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_is_a_minute_divided_by_the_limit() {
        assert_eq!(Pacer::new(60).spacing(), Duration::from_secs(1));
        assert_eq!(Pacer::new(0).spacing(), Duration::from_secs(60));
        assert_eq!(Pacer::new(600).spacing(), Duration::from_millis(100));
    }

    #[test]
    fn waits_from_the_end_of_the_previous_request_and_holds_never_shrink() {
        let t0 = Instant::now();
        let mut p = Pacer::new(60);
        assert_eq!(p.wait(t0), Duration::ZERO);
        p.finished(t0);
        assert_eq!(p.wait(t0), Duration::from_secs(1));
        assert_eq!(p.wait(t0 + Duration::from_secs(2)), Duration::ZERO);
        p.hold(t0 + Duration::from_secs(30));
        p.finished(t0 + Duration::from_secs(1));
        assert_eq!(p.wait(t0), Duration::from_secs(30));
    }

    #[test]
    fn n_plus_one_requests_always_span_a_minute() {
        // Whatever each request's latency, 61 consecutive starts at the pace of 60 per minute
        // span at least 60 s.
        let t0 = Instant::now();
        let mut p = Pacer::new(60);
        let mut now = t0;
        let mut starts = Vec::new();
        for i in 0..61u64 {
            now += p.wait(now);
            starts.push(now);
            now += Duration::from_millis((i * 37) % 900);
            p.finished(now);
        }
        assert!(starts[60] - starts[0] >= Duration::from_secs(60));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:50:07 GMT", now),
            None
        );
    }
}
