//! Reading a row of version-mapped columns and turning two readings into per-interval figures.
//!
//! Invariants: a counter's delta is shipped only when both readings exist, the counter did not
//! go backwards and the reset marker (stats_reset, postmaster start) did not change; otherwise it
//! is `null` and the reading is flagged as a reset, never a negative or garbage number. Gauges,
//! texts and flags are shipped as they are now.

use postgres::Row;

use super::version::{Kind, Resolved};
use crate::json::Json;

/// One value as read from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number (counters and gauges are read as float8).
    Num(Option<f64>),
    /// A text.
    Text(Option<String>),
    /// A boolean.
    Flag(Option<bool>),
}

impl Value {
    /// The number, if this is a non-null number.
    pub fn num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => *n,
            _ => None,
        }
    }
}

/// Reads the columns `cols` (selected with [`super::version::select_list`]) from `row` by name.
pub fn read(row: &Row, cols: &[Resolved]) -> Result<Vec<Value>, postgres::Error> {
    cols.iter()
        .map(|c| {
            Ok(match c.kind {
                Kind::Count | Kind::Millis | Kind::Gauge => Value::Num(row.try_get(c.name)?),
                Kind::Text => Value::Text(row.try_get(c.name)?),
                Kind::Flag => Value::Flag(row.try_get(c.name)?),
            })
        })
        .collect()
}

/// A number as JSON: an integer when it is one (and exactly representable), else a float.
pub fn number(v: f64) -> Json {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Json::Int(v as i64)
    } else {
        Json::Float(v)
    }
}

/// The delta of one cumulative counter, or `None` when there is no earlier reading or the counter
/// went backwards (the statistics were reset or the server restarted in between).
pub fn delta(prev: Option<f64>, cur: Option<f64>) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    (c >= p).then_some(c - p)
}

/// Whether a counter went backwards between two readings (a reset the markers did not show).
pub fn went_backwards(prev: Option<f64>, cur: Option<f64>) -> bool {
    matches!((prev, cur), (Some(p), Some(c)) if c < p)
}

/// One reading of a set of columns and the reset marker it was taken under.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Values in the order of the resolved columns.
    pub values: Vec<Value>,
    /// Changes when the counters restart from zero (stats_reset, postmaster start time).
    pub marker: Vec<Option<f64>>,
}

/// Writes the figures of `cur` into `out` (an object): deltas against `prev` for counters and
/// times, current values for the rest. Returns whether the counters were reset in between, in
/// which case every delta is `null`.
pub fn write_figures(
    cols: &[Resolved],
    prev: Option<&Reading>,
    cur: &Reading,
    out: &mut Json,
) -> bool {
    let reset = prev.is_some_and(|p| {
        marker_changed(&p.marker, &cur.marker)
            || cols
                .iter()
                .enumerate()
                .any(|(i, c)| is_cumulative(c.kind) && went_backwards(nth(p, i), nth(cur, i)))
    });
    for (i, c) in cols.iter().enumerate() {
        let v = match (c.kind, cur.values.get(i)) {
            (_, None) => Json::Null,
            (Kind::Count, Some(_)) if !reset => {
                delta(prev.and_then(|p| nth(p, i)), nth(cur, i)).map_or(Json::Null, number)
            }
            (Kind::Millis, Some(_)) if !reset => delta(prev.and_then(|p| nth(p, i)), nth(cur, i))
                .map_or(Json::Null, |d| Json::Float(round3(d))),
            (Kind::Count | Kind::Millis, Some(_)) => Json::Null,
            (Kind::Gauge, Some(v)) => v.num().map_or(Json::Null, number),
            (Kind::Text, Some(Value::Text(t))) => t.clone().into(),
            (Kind::Flag, Some(Value::Flag(b))) => (*b).into(),
            (_, Some(_)) => Json::Null,
        };
        out.push(c.name, v);
    }
    reset
}

/// Whether a reset marker changed. A marker that appears where there was none is not a reset:
/// before PG15 a database's `stats_reset` is NULL until its statistics entry is created, and its
/// counters start from the zeros read before.
pub fn marker_changed(prev: &[Option<f64>], cur: &[Option<f64>]) -> bool {
    prev.len() != cur.len() || prev.iter().zip(cur).any(|(p, c)| p.is_some() && p != c)
}

/// Whether any counter of `cur` moved since `prev` (used to leave idle databases out).
pub fn any_counter_moved(cols: &[Resolved], prev: &Reading, cur: &Reading) -> bool {
    cols.iter().enumerate().any(|(i, c)| {
        is_cumulative(c.kind) && delta(nth(prev, i), nth(cur, i)).is_some_and(|d| d > 0.0)
    })
}

fn is_cumulative(kind: Kind) -> bool {
    matches!(kind, Kind::Count | Kind::Millis)
}

fn nth(r: &Reading, i: usize) -> Option<f64> {
    r.values.get(i).and_then(Value::num)
}

/// Rounds milliseconds to microseconds, so payloads do not carry float noise.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Resolved> {
        vec![
            Resolved {
                name: "n",
                kind: Kind::Count,
                expr: Some("x"),
            },
            Resolved {
                name: "t",
                kind: Kind::Millis,
                expr: Some("y"),
            },
            Resolved {
                name: "g",
                kind: Kind::Gauge,
                expr: Some("z"),
            },
            Resolved {
                name: "missing",
                kind: Kind::Count,
                expr: None,
            },
        ]
    }

    fn reading(n: f64, t: f64, g: f64, marker: f64) -> Reading {
        Reading {
            values: vec![
                Value::Num(Some(n)),
                Value::Num(Some(t)),
                Value::Num(Some(g)),
                Value::Num(None),
            ],
            marker: vec![Some(marker)],
        }
    }

    fn figures(prev: Option<&Reading>, cur: &Reading) -> (String, bool) {
        let mut out = Json::object();
        let reset = write_figures(&cols(), prev, cur, &mut out);
        (out.to_json_string(), reset)
    }

    #[test]
    fn counters_become_deltas_and_gauges_stay_as_they_are() {
        let a = reading(10.0, 1.5, 7.0, 1.0);
        let b = reading(13.0, 2.25, 3.0, 1.0);
        assert_eq!(
            figures(Some(&a), &b),
            (r#"{"n":3,"t":0.75,"g":3,"missing":null}"#.into(), false)
        );
    }

    #[test]
    fn the_first_reading_has_no_deltas() {
        let a = reading(10.0, 1.5, 7.0, 1.0);
        assert_eq!(
            figures(None, &a),
            (r#"{"n":null,"t":null,"g":7,"missing":null}"#.into(), false)
        );
    }

    #[test]
    fn a_counter_going_backwards_is_a_reset_not_a_negative_delta() {
        let a = reading(10.0, 1.5, 7.0, 1.0);
        let b = reading(2.0, 9.0, 7.0, 1.0);
        let (json, reset) = figures(Some(&a), &b);
        assert!(reset);
        assert_eq!(json, r#"{"n":null,"t":null,"g":7,"missing":null}"#);
    }

    #[test]
    fn a_changed_marker_is_a_reset_even_when_counters_grew() {
        let a = reading(10.0, 1.5, 7.0, 1.0);
        let b = reading(20.0, 3.0, 7.0, 2.0);
        let (json, reset) = figures(Some(&a), &b);
        assert!(reset);
        assert!(json.starts_with(r#"{"n":null,"t":null"#), "{json}");
    }

    #[test]
    fn a_marker_appearing_is_not_a_reset() {
        assert!(!marker_changed(&[None, Some(1.0)], &[Some(5.0), Some(1.0)]));
        assert!(marker_changed(
            &[Some(4.0), Some(1.0)],
            &[Some(5.0), Some(1.0)]
        ));
        assert!(marker_changed(&[Some(4.0)], &[None]));
        let mut a = reading(10.0, 1.5, 7.0, 1.0);
        a.marker = vec![None];
        let b = reading(12.0, 1.5, 7.0, 1.0);
        assert!(!figures(Some(&a), &b).1, "not a reset");
    }

    #[test]
    fn movement_is_detected_only_on_counters() {
        let a = reading(10.0, 1.5, 7.0, 1.0);
        assert!(!any_counter_moved(
            &cols(),
            &a,
            &reading(10.0, 1.5, 99.0, 1.0)
        ));
        assert!(any_counter_moved(
            &cols(),
            &a,
            &reading(11.0, 1.5, 7.0, 1.0)
        ));
    }

    #[test]
    fn numbers_are_integers_when_they_are_integral() {
        assert_eq!(number(3.0), Json::Int(3));
        assert_eq!(number(2.5), Json::Float(2.5));
        assert_eq!(number(1e300), Json::Float(1e300));
        assert_eq!(delta(Some(5.0), Some(4.0)), None);
        assert_eq!(delta(None, Some(4.0)), None);
        assert_eq!(delta(Some(1.0), Some(4.0)), Some(3.0));
    }
}
