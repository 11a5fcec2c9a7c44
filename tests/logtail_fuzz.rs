//! Property and fuzz tests: random prefixes with rendered lines must parse back; random bytes
//! fed to every parser must never panic and never break the entry cap.

use bitville_pg_agent::logtail::csvlog::CsvRecord;
use bitville_pg_agent::logtail::entry::{
    parse_statement_message, timestamp_to_unix, Level, MAX_ENTRY_BYTES,
};
use bitville_pg_agent::logtail::jsonlog::parse_flat_object;
use bitville_pg_agent::logtail::prefix::PrefixParser;
use bitville_pg_agent::logtail::{EntryParser, Format};
use bitville_pg_agent::normalize::{extract_correlation_id, normalize};

/// xorshift64*: tiny, deterministic, good enough to explore inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A value PostgreSQL could write for each escape.
fn render(esc: char, rng: &mut Rng) -> String {
    match esc {
        'a' => rng
            .pick(&[
                "psql",
                "bitville-0123abcd-0123-4567-89ab-0123456789ab",
                "my app",
                "",
            ])
            .to_string(),
        'u' => rng.pick(&["alice", "bob_2", "[unknown]"]).to_string(),
        'd' => rng.pick(&["shop", "db-1"]).to_string(),
        'r' => rng.pick(&["10.0.0.1(5432)", "[local]"]).to_string(),
        'h' => rng.pick(&["10.0.0.1", "[local]"]).to_string(),
        'b' => rng.pick(&["client backend", "checkpointer"]).to_string(),
        'p' => "4242".to_string(),
        'P' => rng.pick(&["", "77"]).to_string(),
        't' | 's' => "2024-05-01 12:00:00 UTC".to_string(),
        'm' => "2024-05-01 12:00:00.123 CEST".to_string(),
        'n' => "1714564800.123".to_string(),
        'i' => rng.pick(&["SELECT", "idle in transaction", ""]).to_string(),
        'e' => "42P01".to_string(),
        'c' => "66323f00.1092".to_string(),
        'l' => "17".to_string(),
        'v' => rng.pick(&["3/17", ""]).to_string(),
        'x' => "0".to_string(),
        'Q' => "-42".to_string(),
        _ => String::new(),
    }
}

#[test]
fn random_prefixes_parse_the_lines_they_describe() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let escapes = [
        'a', 'u', 'd', 'r', 'h', 'b', 'p', 'P', 't', 'm', 'n', 'i', 'e', 'c', 'l', 's', 'v', 'x',
        'Q',
    ];
    let seps = [" ", " [", "] ", "@", ":", "|", " - ", ",", "="];
    let levels = [
        Level::Log,
        Level::Error,
        Level::Warning,
        Level::Fatal,
        Level::Detail,
        Level::Statement,
    ];
    for round in 0..3000 {
        let n = 1 + rng.below(6);
        let mut prefix = String::new();
        let mut line = String::new();
        let mut n_pid = 0;
        for _ in 0..n {
            let esc = *rng.pick(&escapes);
            n_pid += usize::from(esc == 'p');
            let value = render(esc, &mut rng);
            let pad = if rng.below(5) == 0 { 12 } else { 0 };
            if pad > 0 {
                prefix.push_str(&format!("%-{pad}{esc}"));
                line.push_str(&format!("{value:<pad$}"));
            } else {
                prefix.push('%');
                prefix.push(esc);
                line.push_str(&value);
            }
            // Every field is followed by a separator, as real prefixes are.
            let sep = *rng.pick(&seps);
            prefix.push_str(sep);
            line.push_str(sep);
        }
        let level = *rng.pick(&levels);
        line.push_str(level.as_str());
        line.push_str(":  the message ");
        line.push_str(&round.to_string());
        let p = PrefixParser::new(&prefix);
        let m = p
            .parse(line.as_bytes())
            .unwrap_or_else(|| panic!("prefix {prefix:?} line {line:?}"));
        assert_eq!(m.level, level, "prefix {prefix:?} line {line:?}");
        assert_eq!(
            &line[m.message_start..],
            format!("the message {round}"),
            "prefix {prefix:?}"
        );
        if n_pid == 1 {
            assert_eq!(
                m.captures.get(b'p', line.as_bytes()),
                Some(&b"4242"[..]),
                "prefix {prefix:?} line {line:?}"
            );
        }
    }
}

#[test]
fn random_bytes_never_panic_and_respect_the_cap() {
    let mut rng = Rng(42);
    let alphabet: &[u8] = b"\n\n\t\"\",,{}[]:\\\\u0a LOG:  ERROR:  DETAIL:  2024-05-01 12:00:00.1 UTC [1] duration: 1 ms  statement: $$'' bitville-\xff\xc3\x28\r";
    let prefixes = [
        "%m [%p] ",
        "%t %q%u@%d %a ",
        "%a%u%d",
        "%",
        "%-5%",
        "%q%q",
        "",
        "[%l-1] %c %x %v %e ",
        "%m:%r:%u@%d:[%p]:",
    ];
    let mut key_buf = Vec::new();
    let mut scratch = Vec::new();
    for round in 0..400 {
        let len = rng.below(4000);
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(3) == 0 {
                    rng.next() as u8
                } else {
                    *rng.pick(alphabet)
                }
            })
            .collect();
        if round % 50 == 0 {
            // A giant line, to hit the entry cap.
            bytes.extend(std::iter::repeat_n(b'x', MAX_ENTRY_BYTES * 2));
        }
        for format in [Format::Stderr, Format::Csv, Format::Json] {
            let prefix = *rng.pick(&prefixes);
            let mut p = EntryParser::new(format, prefix);
            let mut out = Vec::new();
            let mut off = 0u64;
            for piece in bytes.split_inclusive(|&b| b == b'\n') {
                let end = piece.last() == Some(&b'\n');
                let body = if end {
                    &piece[..piece.len() - 1]
                } else {
                    piece
                };
                // Sometimes in pieces, as the tailer does with overlong lines.
                if body.len() > 10 && rng.below(4) == 0 {
                    let cut = rng.below(body.len());
                    p.push(&body[..cut], off, false, &mut out);
                    p.push(&body[cut..], off + cut as u64, end, &mut out);
                } else {
                    p.push(body, off, end, &mut out);
                }
                off += piece.len() as u64;
                assert!(p.pending_start().is_none_or(|s| s <= off));
            }
            p.flush(&mut out);
            for e in &out {
                assert!(
                    e.size() <= MAX_ENTRY_BYTES,
                    "{format:?} entry of {} bytes",
                    e.size()
                );
                assert!(e.level.is_some_and(Level::is_primary));
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_flat_object(&bytes, &mut key_buf, &mut scratch, |_, _| {});
        let mut r = CsvRecord::new();
        r.push(&bytes, true);
        let _ = r.take(&bitville_pg_agent::normalize::CorrelationPattern::default());
        let norm = normalize(&text);
        // Every literal becomes one `?`: the text never grows.
        assert!(norm.len() <= text.len(), "normalized text grew: {norm:?}");
        let _ = parse_statement_message(&text);
        let _ = extract_correlation_id(&text, "bitville-");
        let _ =
            bitville_pg_agent::normalize::CorrelationPattern::default().find(Some(&text), &[&text]);
        let head: String = text.chars().take(40).collect();
        let _ = timestamp_to_unix(&head);
    }
}
