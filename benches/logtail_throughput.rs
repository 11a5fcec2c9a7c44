//! Measures how fast the log parser and the tailer read a stderr log (target: 50 MB/s on one
//! core). Run with `cargo bench --bench logtail_throughput -- [MB]` (part of `make bench`).

use std::io::Write;
use std::time::{Duration, Instant};

use bitville_pg_agent::logtail::tail::{Follow, TailConfig, Tailer};
use bitville_pg_agent::logtail::{EntryParser, Format};

const PREFIX: &str = "%m [%p] %q%u@%d %a ";

/// A realistic mix: statements with durations, correlated application names, errors with
/// STATEMENT lines, multi-line queries, background messages.
fn sample_log(target_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(target_bytes + 1024);
    let mut i = 0u64;
    while out.len() < target_bytes {
        let pid = 1000 + i % 97;
        let ts = format!(
            "2024-05-01 12:{:02}:{:02}.{:03} UTC",
            (i / 60000) % 60,
            (i / 1000) % 60,
            i % 1000
        );
        let app = if i % 3 == 0 {
            "bitville-0123abcd-0123-4567-89ab-0123456789ab"
        } else {
            "psql"
        };
        let _ = match i % 10 {
            0..=5 => writeln!(
                out,
                "{ts} [{pid}] app_user@shop {app} LOG:  duration: {}.{:03} ms  statement: SELECT o.id, o.total FROM orders o WHERE o.customer_id = {} AND o.state = 'open' ORDER BY o.created_at DESC LIMIT 50",
                i % 5000,
                i % 1000,
                i
            ),
            6 => writeln!(
                out,
                "{ts} [{pid}] app_user@shop {app} ERROR:  duplicate key value violates unique constraint \"orders_pkey\"\n{ts} [{pid}] app_user@shop {app} DETAIL:  Key (id)=({i}) already exists.\n{ts} [{pid}] app_user@shop {app} STATEMENT:  INSERT INTO orders (id, total) VALUES ({i}, 10.5)"
            ),
            7 => writeln!(
                out,
                "{ts} [{pid}] app_user@shop {app} LOG:  duration: 12.5 ms  execute <unnamed>: SELECT *\n\tFROM line_items li\n\tJOIN products p ON p.id = li.product_id\n\tWHERE li.order_id = $1"
            ),
            8 => writeln!(out, "{ts} [{pid}] LOG:  checkpoint complete: wrote {i} buffers (0.1%); 0 WAL file(s) added, 0 removed, 1 recycled; write=0.101 s, sync=0.002 s, total=0.120 s"),
            _ => writeln!(out, "{ts} [{pid}] app_user@shop {app} LOG:  connection authorized: user=app_user database=shop application_name={app}"),
        };
        i += 1;
    }
    out
}

/// The same entries as csvlog or jsonlog lines (one line per entry; multi-line texts escaped or
/// quoted as PostgreSQL does).
fn structured(stderr: &[u8], format: Format) -> Vec<u8> {
    let mut p = EntryParser::new(Format::Stderr, PREFIX);
    let mut entries = Vec::new();
    let mut off = 0u64;
    for line in stderr.split(|&b| b == b'\n') {
        p.push(line, off, true, &mut entries);
        off += line.len() as u64 + 1;
    }
    p.flush(&mut entries);
    let mut out = Vec::with_capacity(stderr.len() * 2);
    for e in &entries {
        let level = e.level.map_or("LOG", |l| l.as_str());
        let ts = e.timestamp.as_deref().unwrap_or("");
        let app = e.application_name.as_deref().unwrap_or("");
        let pid = e.pid.unwrap_or(0);
        let _ = match format {
            Format::Csv => {
                let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                writeln!(
                    out,
                    "{ts},\"app_user\",\"shop\",{pid},\"[local]\",66323f00.1092,1,\"SELECT\",{ts},3/17,0,{level},00000,{},{},,,,,{},,,{},\"client backend\",,0",
                    q(&e.message),
                    e.detail.as_deref().map(q).unwrap_or_default(),
                    e.statement.as_deref().map(q).unwrap_or_default(),
                    q(app)
                )
            }
            _ => {
                let j = |s: &str| bitville_pg_agent::json::Json::from(s).to_json_string();
                writeln!(
                    out,
                    "{{\"timestamp\":{},\"user\":\"app_user\",\"dbname\":\"shop\",\"pid\":{pid},\"remote_host\":\"[local]\",\"session_id\":\"66323f00.1092\",\"line_num\":1,\"ps\":\"SELECT\",\"error_severity\":\"{level}\",\"message\":{},\"application_name\":{},\"backend_type\":\"client backend\",\"query_id\":0}}",
                    j(ts),
                    j(&e.message),
                    j(app)
                )
            }
        };
    }
    out
}

fn main() {
    // `cargo bench` adds its own `--bench` argument: take the first number given.
    let mb: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64);
    let data = sample_log(mb * 1024 * 1024);
    let size = data.len() as f64 / 1e6;

    // Parser alone, from memory.
    let mut best = Duration::MAX;
    let mut n_entries = 0;
    for _ in 0..3 {
        let mut p = EntryParser::new(Format::Stderr, PREFIX);
        let mut out = Vec::with_capacity(1024);
        let start = Instant::now();
        let mut off = 0u64;
        for line in data.split(|&b| b == b'\n') {
            p.push(line, off, true, &mut out);
            off += line.len() as u64 + 1;
            n_entries += out.len();
            out.clear();
        }
        p.flush(&mut out);
        best = best.min(start.elapsed());
    }
    println!(
        "parser: {:.1} MB in {:.3} s = {:.1} MB/s ({} entries per pass)",
        size,
        best.as_secs_f64(),
        size / best.as_secs_f64(),
        n_entries / 3
    );

    // csvlog and jsonlog parsers on the same entries' shape.
    for (format, text) in [
        (Format::Csv, structured(&data, Format::Csv)),
        (Format::Json, structured(&data, Format::Json)),
    ] {
        let mut p = EntryParser::new(format, "");
        let mut out = Vec::with_capacity(1024);
        let start = Instant::now();
        let mut off = 0u64;
        let mut n = 0;
        for line in text.split(|&b| b == b'\n') {
            p.push(line, off, true, &mut out);
            off += line.len() as u64 + 1;
            n += out.len();
            out.clear();
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = text.len() as f64 / 1e6;
        println!(
            "{}: {mb:.1} MB in {secs:.3} s = {:.1} MB/s ({n} entries)",
            format.as_str(),
            mb / secs
        );
    }

    // The tailer over a file (page cache), in batches, as the agent runs it.
    let path = std::env::temp_dir().join(format!("logtail-throughput-{}.log", std::process::id()));
    std::fs::write(&path, &data).expect("write sample log");
    let mut cfg = TailConfig::new(Follow::Path(path.clone()), None);
    cfg.start_at_end = false;
    cfg.settle = Duration::ZERO;
    let mut t = Tailer::new(cfg, EntryParser::new(Format::Stderr, PREFIX));
    let start = Instant::now();
    let mut n = 0;
    loop {
        let b = t.poll();
        if b.entries.is_empty() && !b.more {
            break;
        }
        n += b.entries.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    println!(
        "tailer: {:.1} MB in {:.3} s = {:.1} MB/s ({n} entries)",
        size,
        secs,
        size / secs
    );
}
