//! Fixtures shared by the activity sampler's unit tests: an execution, a session row, a
//! directory laid out like `/proc` (removed on drop) and readers of the summary's JSON.

use super::execution::Execution;
use super::query::SessionRow;
use super::{ActivityConfig, ActivitySampler};
use crate::collect::procfs::ProcReader;
use crate::json::Json;
use crate::payload::Payload;

/// A finished client execution of `duration_s` and `cpu_ticks`, with OS figures seen.
pub(super) fn exec(pid: i32, duration_s: f64, cpu_ticks: u64) -> Execution {
    let row = SessionRow {
        pid,
        now: 1000.5,
        query_start: Some(1000.0),
        xact_start: Some(999.0),
        state: Some("active"),
        datname: Some("app"),
        usename: Some("u"),
        backend_type: Some("client backend"),
        query: Some("SELECT ?"),
        ..SessionRow::default()
    };
    let mut e = ActivitySampler::new(ActivityConfig::default()).new_execution(&row);
    e.last_seen = 1000.0 + duration_s;
    e.n_seen = 2;
    e.state = "active".into();
    e.cpu_ticks = cpu_ticks;
    e.os_seen = true;
    e.cpu_attributed = true;
    e
}

pub(super) const UUID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";

pub(super) const UUID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

/// A directory laid out like /proc, removed on drop.
pub(super) struct FakeProc(pub(super) std::path::PathBuf);

impl FakeProc {
    pub(super) fn new(tag: &str) -> FakeProc {
        let dir = std::env::temp_dir().join(format!("bv-act-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeProc(dir)
    }

    /// A postgres backend with `cpu` ticks of utime, started at `start`.
    pub(super) fn set(&self, pid: i32, cpu: u64, start: u64, io: Option<(u64, u64)>) {
        let d = self.0.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stat"),
            format!(
                "{pid} (postgres) S 1 1 1 0 -1 0 0 0 0 0 {cpu} 0 0 0 20 0 1 0 {start} 1000 256 0\n"
            ),
        )
        .unwrap();
        if let Some((r, w)) = io {
            std::fs::write(d.join("io"), format!("read_bytes: {r}\nwrite_bytes: {w}\n")).unwrap();
        }
    }

    pub(super) fn sampler(&self, cfg: ActivityConfig) -> ActivitySampler {
        ActivitySampler::with_proc(cfg, ProcReader::with_root(&self.0))
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn row(pid: i32, now: f64, query_start: f64) -> SessionRow<'static> {
    SessionRow {
        pid,
        now,
        query_start: Some(query_start),
        xact_start: Some(query_start),
        state: Some("active"),
        datname: Some("app"),
        usename: Some("u"),
        application_name: Some("bitville-aaaaaaaa-0000-4000-8000-000000000001"),
        backend_type: Some("client backend"),
        query: Some("SELECT * FROM t WHERE id = 42"),
        ..SessionRow::default()
    }
}

pub(super) fn sessions(payloads: &[Payload]) -> &[Json] {
    match payloads[0].data.get("sessions") {
        Some(Json::Array(a)) => a,
        other => panic!("{other:?}"),
    }
}

pub(super) fn field_f64(v: &Json, key: &str) -> f64 {
    match v.get(key) {
        Some(Json::UInt(u)) => *u as f64,
        Some(Json::Int(i)) => *i as f64,
        Some(Json::Float(f)) => *f,
        other => panic!("{key}: {other:?}"),
    }
}
