//! The binary array decoder: the counters query answers one row of parallel arrays, read here
//! element by element straight from the driver's bytes.
//!
//! Invariants: nothing here panics on any bytes (a short or torn array ends the decoding, a
//! column sent otherwise than asked yields no entries); elements are never collected into
//! per-column vectors.

use super::baseline::{Entries, Entry, Key};
use super::columns::N_SLOTS;

/// A one-dimensional array in PostgreSQL's binary format, borrowed from the row: elements are
/// decoded one at a time, never collected into vectors.
struct RawArray<'a> {
    n: usize,
    rest: &'a [u8],
}

impl<'a> postgres::types::FromSql<'a> for RawArray<'a> {
    fn from_sql(
        _ty: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let mut r = BeReader(raw);
        let ndim = r.i32().ok_or("short array header")?;
        r.i32().ok_or("short array header")?; // has-nulls flag
        r.i32().ok_or("short array header")?; // element type
        match ndim {
            0 => Ok(RawArray { n: 0, rest: &[] }),
            1 => {
                let n = r.i32().ok_or("short array header")?;
                r.i32().ok_or("short array header")?; // lower bound
                Ok(RawArray {
                    n: usize::try_from(n).map_err(|_| "negative array length")?,
                    rest: r.0,
                })
            }
            _ => Err("multi-dimensional array".into()),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        matches!(ty.kind(), postgres::types::Kind::Array(_))
    }
}

impl<'a> RawArray<'a> {
    /// The next element's bytes (`Some(None)` for NULL); `None` past the end or when torn.
    fn next_elem(&mut self) -> Option<Option<&'a [u8]>> {
        let mut r = BeReader(self.rest);
        let len = r.i32()?;
        if len < 0 {
            self.rest = r.0;
            return Some(None);
        }
        let (elem, rest) = r.0.split_at_checked(len as usize)?;
        self.rest = rest;
        Some(Some(elem))
    }
}

/// Big-endian reads (the wire format), failing cleanly past the end.
struct BeReader<'a>(&'a [u8]);

impl BeReader<'_> {
    fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(i32::from_be_bytes(head.try_into().ok()?))
    }
}

fn be_u32(b: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_be_bytes(b?.try_into().ok()?))
}

fn be_i64(b: Option<&[u8]>) -> Option<i64> {
    Some(i64::from_be_bytes(b?.try_into().ok()?))
}

fn be_f64(b: Option<&[u8]>) -> Option<f64> {
    Some(f64::from_be_bytes(b?.try_into().ok()?))
}

/// Seconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX: f64 = 946_684_800.0;

/// A binary timestamptz (microseconds since 2000-01-01) as unix seconds.
fn be_timestamp(b: Option<&[u8]>) -> Option<f64> {
    be_i64(b).map(|us| us as f64 / 1e6 + PG_EPOCH_UNIX)
}

/// Runs the counters query (one row of parallel arrays) and decodes it in place.
pub(super) fn read_counters(
    client: &mut postgres::Client,
    sql: &str,
    capacity: usize,
) -> Result<Entries, postgres::Error> {
    let row = client.query_typed(sql, &[])?;
    let Some(row) = row.first() else {
        return Ok(Entries::default());
    };
    // array_agg over no rows is NULL: no entries.
    let Ok(Some(mut userid)) = row.try_get::<_, Option<RawArray>>(0) else {
        return Ok(Entries::default());
    };
    let mut entries: Vec<(Key, Entry)> = Vec::with_capacity(capacity.max(userid.n));
    let mut cols: Vec<RawArray> = Vec::with_capacity(4 + N_SLOTS);
    for i in 1..5 + N_SLOTS {
        match row.try_get::<_, Option<RawArray>>(i) {
            Ok(Some(a)) if a.n == userid.n => cols.push(a),
            // A column the server sent otherwise than asked: nothing can be trusted.
            _ => return Ok(Entries::default()),
        }
    }
    for _ in 0..userid.n {
        let uid = userid.next_elem().flatten();
        let mut next = |i: usize| cols[i].next_elem().flatten();
        let (dbid, queryid, toplevel, since) = (next(0), next(1), next(2), next(3));
        let mut v = [f64::NAN; N_SLOTS];
        for (i, slot) in v.iter_mut().enumerate() {
            if let Some(x) = be_f64(cols[4 + i].next_elem().flatten()) {
                *slot = x;
            }
        }
        let (Some(uid), Some(dbid), Some(queryid), Some(toplevel)) =
            (be_u32(uid), be_u32(dbid), be_i64(queryid), toplevel)
        else {
            continue;
        };
        let key = (uid, dbid, queryid, toplevel.first() == Some(&1));
        entries.push((
            key,
            Entry {
                v,
                stats_since: be_timestamp(since),
            },
        ));
    }
    Ok(Entries::from_unsorted(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_arrays_decode_elements_nulls_and_refuse_torn_input() {
        use postgres::types::{FromSql, Type};
        let mut raw = Vec::new();
        for v in [1i32, 1, 701, 3, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        raw.extend_from_slice(&8i32.to_be_bytes());
        raw.extend_from_slice(&2.5f64.to_be_bytes());
        raw.extend_from_slice(&(-1i32).to_be_bytes());
        raw.extend_from_slice(&8i32.to_be_bytes());
        raw.extend_from_slice(&(-0.0f64).to_be_bytes());
        let mut a = RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw).unwrap();
        assert_eq!(a.n, 3);
        assert_eq!(be_f64(a.next_elem().unwrap()), Some(2.5));
        assert_eq!(a.next_elem(), Some(None), "NULL");
        assert!(be_f64(a.next_elem().unwrap()).is_some());
        assert_eq!(a.next_elem(), None, "past the end");
        let mut torn = RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw[..raw.len() - 3]).unwrap();
        torn.next_elem();
        torn.next_elem();
        assert_eq!(torn.next_elem(), None);
        assert!(RawArray::from_sql(&Type::FLOAT8_ARRAY, &raw[..6]).is_err());
        let empty = [0u8; 12];
        assert_eq!(
            RawArray::from_sql(&Type::FLOAT8_ARRAY, &empty).unwrap().n,
            0
        );
        // 2000-01-01 00:00:01 UTC.
        assert_eq!(
            be_timestamp(Some(&1_000_000i64.to_be_bytes())),
            Some(946_684_801.0)
        );
        assert_eq!(be_u32(Some(&[0, 0, 1])), None);
    }
}
