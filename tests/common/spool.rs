//! Fixtures of the spool tests: small segments (so a few records span several) and numbered
//! payloads of every source.

use std::path::Path;

use bitville_pg_agent::json::Json;
use bitville_pg_agent::payload::{AgentInfo, Payload, Source};
use bitville_pg_agent::spool::SpoolOptions;

/// Spool options for `dir` with 4 KiB segments and a fixed agent identity.
pub fn options(dir: &Path) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.segment_bytes = 4096;
    o.agent = AgentInfo {
        version: "test".into(),
        host: "h".into(),
    };
    o
}

/// Payload number `i`: the four sources in turn, about 200 bytes.
pub fn payload(i: u64) -> Payload {
    Payload {
        source: Source::ALL[(i % 4) as usize],
        collected_at: 1_700_000_000.0 + i as f64,
        correlation_id: None,
        data: Json::object().field("i", i).field("pad", "x".repeat(150)),
    }
}
