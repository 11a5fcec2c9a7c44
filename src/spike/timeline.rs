//! The load timeline: one compact row per activity sample (active sessions by class, idle in
//! transaction, backends in run state R and D, the host's figures), encoded column-wise so a
//! minute of rows stays small.
//!
//! Invariants: a row's classes sum to its active sessions; the encoding always carries every
//! column (a figure that is unknown is `null` in its place), so column `i` of every array
//! belongs to the same sample. Rows are kept in time order, and at most `cap` of them (the rest
//! are counted in `n_rows_left_out`).

use super::hostline::HostPoint;
use super::{class_of, is_active, is_idle_in_transaction, round, SampleSnapshot, CLASSES};
use crate::json::Json;

/// One sample's load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Row {
    /// Sample time (unix seconds).
    pub t: f64,
    /// Active sessions per class, in [`CLASSES`] order.
    pub classes: [u32; CLASSES.len()],
    /// Sessions idle in a transaction.
    pub idle_in_transaction: u32,
    /// Sampled PostgreSQL processes runnable (R).
    pub run_r: u32,
    /// Sampled PostgreSQL processes in uninterruptible sleep (D).
    pub run_d: u32,
    /// The host's figures.
    pub host: HostPoint,
}

impl Row {
    /// The row of one sample.
    pub fn from_sample(s: &SampleSnapshot, host: HostPoint) -> Row {
        let mut row = Row {
            t: s.at,
            host,
            ..Row::default()
        };
        for r in &s.rows {
            if is_active(r.state.as_deref()) {
                row.classes[class_of(r.wait_event_type.as_deref())] += 1;
            } else if is_idle_in_transaction(r.state.as_deref()) {
                row.idle_in_transaction += 1;
            }
        }
        for st in &s.run_states {
            match st {
                b'R' => row.run_r += 1,
                b'D' => row.run_d += 1,
                _ => {}
            }
        }
        row
    }

    /// Active sessions (all classes).
    pub fn active(&self) -> u32 {
        self.classes.iter().sum()
    }

    /// Writes the row as one flat JSON object (the flight recorder's line) straight into `out`,
    /// without building a [`Json`] (one row per sample): classes as an array in [`CLASSES`]
    /// order, unknown host figures left out.
    pub fn write_flat_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"t\":");
        Json::Float(round(self.t, 3)).write_to(out);
        out.push_str(",\"classes\":[");
        for (i, c) in self.classes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{c}");
        }
        let _ = write!(
            out,
            "],\"iit\":{},\"r\":{},\"d\":{}",
            self.idle_in_transaction, self.run_r, self.run_d
        );
        let h = &self.host;
        for (k, v) in [
            ("procs_running", h.procs_running),
            ("procs_blocked", h.procs_blocked),
        ] {
            if let Some(v) = v {
                let _ = write!(out, ",\"{k}\":{v}");
            }
        }
        let floats = [
            ("cpu_busy_pct", h.cpu_busy_pct.map(|x| round(x, 1))),
            ("iowait_pct", h.iowait_pct.map(|x| round(x, 1))),
            ("load1", h.load1),
            ("psi_cpu", h.psi_cpu),
            ("psi_io", h.psi_io),
            ("psi_memory", h.psi_memory),
        ];
        for (k, v) in floats {
            if let Some(v) = v {
                let _ = write!(out, ",\"{k}\":");
                Json::Float(v).write_to(out);
            }
        }
        out.push('}');
    }

    /// Reads a row written by [`Row::write_flat_json`]; `None` when `t` is missing.
    pub fn from_flat_json(v: &Json) -> Option<Row> {
        let num = |k: &str| v.get(k).and_then(json_f64);
        let count = |k: &str| num(k).map_or(0, |x| x.clamp(0.0, u32::MAX as f64) as u32);
        let mut row = Row {
            t: num("t")?,
            idle_in_transaction: count("iit"),
            run_r: count("r"),
            run_d: count("d"),
            ..Row::default()
        };
        if let Some(Json::Array(c)) = v.get("classes") {
            for (slot, x) in row.classes.iter_mut().zip(c) {
                *slot = json_f64(x).map_or(0, |x| x.clamp(0.0, u32::MAX as f64) as u32);
            }
        }
        let int = |k: &str| num(k).map(|x| x.max(0.0) as u64);
        row.host = HostPoint {
            procs_running: int("procs_running"),
            procs_blocked: int("procs_blocked"),
            cpu_busy_pct: num("cpu_busy_pct"),
            iowait_pct: num("iowait_pct"),
            load1: num("load1"),
            n_cpus: None,
            psi_cpu: num("psi_cpu"),
            psi_io: num("psi_io"),
            psi_memory: num("psi_memory"),
        };
        Some(row)
    }
}

/// A JSON number as f64.
pub fn json_f64(v: &Json) -> Option<f64> {
    match v {
        Json::Int(i) => Some(*i as f64),
        Json::UInt(u) => Some(*u as f64),
        Json::Float(f) => Some(*f),
        _ => None,
    }
}

/// The rows of an interval (or of a spike), bounded.
#[derive(Debug, Clone)]
pub struct Timeline {
    rows: Vec<Row>,
    cap: usize,
    n_left_out: u64,
}

impl Timeline {
    /// An empty timeline keeping at most `cap` rows.
    pub fn new(cap: usize) -> Timeline {
        Timeline {
            rows: Vec::new(),
            cap,
            n_left_out: 0,
        }
    }

    /// Adds a row (counted instead when full).
    pub fn push(&mut self, row: Row) {
        if self.rows.len() < self.cap {
            self.rows.push(row);
        } else {
            self.n_left_out += 1;
        }
    }

    /// The rows kept.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Empties the timeline.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.n_left_out = 0;
    }

    /// The column-wise encoding (docs/payloads.md, "timeline").
    pub fn to_json(&self) -> Json {
        let col = |f: &dyn Fn(&Row) -> Json| Json::Array(self.rows.iter().map(f).collect());
        let mut by_class = Json::object();
        for (i, c) in CLASSES.iter().enumerate() {
            by_class.push(*c, col(&|r| r.classes[i].into()));
        }
        Json::object()
            .field("n_rows", self.rows.len())
            .field("n_rows_left_out", self.n_left_out)
            .field("t", col(&|r| round(r.t, 3).into()))
            .field("active", col(&|r| r.active().into()))
            .field("by_class", by_class)
            .field(
                "idle_in_transaction",
                col(&|r| r.idle_in_transaction.into()),
            )
            .field("run_r", col(&|r| r.run_r.into()))
            .field("run_d", col(&|r| r.run_d.into()))
            .field("procs_running", col(&|r| r.host.procs_running.into()))
            .field("procs_blocked", col(&|r| r.host.procs_blocked.into()))
            .field(
                "cpu_busy_pct",
                col(&|r| r.host.cpu_busy_pct.map(|x| round(x, 1)).into()),
            )
            .field(
                "iowait_pct",
                col(&|r| r.host.iowait_pct.map(|x| round(x, 1)).into()),
            )
            .field("load1", col(&|r| r.host.load1.into()))
            .field("psi_cpu_some_avg10", col(&|r| r.host.psi_cpu.into()))
            .field("psi_io_some_avg10", col(&|r| r.host.psi_io.into()))
            .field("psi_memory_some_avg10", col(&|r| r.host.psi_memory.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::SampleRow;
    use super::*;

    fn srow(state: &str, wait: Option<&str>) -> SampleRow {
        SampleRow {
            state: Some(state.into()),
            wait_event_type: wait.map(str::to_string),
            ..SampleRow::default()
        }
    }

    #[test]
    fn a_sample_becomes_a_row_by_class() {
        let s = SampleSnapshot {
            at: 1000.25,
            rows: vec![
                srow("active", None),
                srow("active", Some("Lock")),
                srow("active", Some("Lock")),
                srow("active", Some("IO")),
                srow("idle in transaction", Some("Client")),
                SampleRow::default(),
            ],
            run_states: vec![b'R', b'S', b'D', b'R'],
            waiters: None,
        };
        let row = Row::from_sample(&s, HostPoint::default());
        assert_eq!(row.active(), 4);
        assert_eq!(row.classes[0], 1);
        assert_eq!(row.classes[2], 2);
        assert_eq!(row.idle_in_transaction, 1);
        assert_eq!((row.run_r, row.run_d), (2, 1));
        let mut text = String::new();
        row.write_flat_json(&mut text);
        let back = Row::from_flat_json(&crate::spike::jsonread::parse(&text).unwrap()).unwrap();
        assert_eq!(back, row);
    }

    #[test]
    fn columns_line_up_and_unknown_is_null() {
        let mut t = Timeline::new(2);
        let mut a = Row {
            t: 1.0,
            ..Row::default()
        };
        a.classes[2] = 40;
        a.host.load1 = Some(3.5);
        t.push(a);
        t.push(Row {
            t: 2.0,
            ..Row::default()
        });
        t.push(Row::default());
        let j = t.to_json().to_json_string();
        assert!(
            j.contains(r#""n_rows":2,"n_rows_left_out":1,"t":[1.0,2.0],"active":[40,0]"#),
            "{j}"
        );
        assert!(j.contains(r#""Lock":[40,0]"#), "{j}");
        assert!(j.contains(r#""load1":[3.5,null]"#), "{j}");
    }

    #[test]
    fn the_flat_row_is_written_as_its_json_says() {
        let mut row = Row {
            t: 1795710416.5945,
            idle_in_transaction: 2,
            run_r: 3,
            ..Row::default()
        };
        row.classes[2] = 40;
        let text = |r: &Row| {
            let mut out = String::new();
            r.write_flat_json(&mut out);
            out
        };
        assert_eq!(
            text(&row),
            r#"{"t":1795710416.595,"classes":[0,0,40,0,0,0,0,0,0,0,0],"iit":2,"r":3,"d":0}"#
        );
        row.host = HostPoint {
            procs_running: Some(7),
            procs_blocked: Some(0),
            cpu_busy_pct: Some(83.333),
            iowait_pct: Some(0.0),
            load1: Some(4.25),
            n_cpus: Some(2),
            psi_cpu: Some(12.5),
            psi_io: None,
            psi_memory: Some(0.0),
        };
        let written = text(&row);
        assert!(
            written.ends_with(concat!(
                r#""procs_running":7,"procs_blocked":0,"cpu_busy_pct":83.3,"iowait_pct":0.0,"#,
                r#""load1":4.25,"psi_cpu":12.5,"psi_memory":0.0}"#
            )),
            "{written}"
        );
        let back = Row::from_flat_json(&crate::spike::jsonread::parse(&written).unwrap()).unwrap();
        assert_eq!(back.host.procs_running, Some(7));
        assert_eq!(back.host.psi_io, None);
        assert_eq!(back.classes, row.classes);
    }
}
