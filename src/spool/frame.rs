//! The on-disk format of one spool segment: a header, then frames, each protected by a CRC32C.
//!
//! Segment file (all integers little-endian):
//!
//! ```text
//! header  16 bytes   magic "BVSPOOL\0" (8) | format version u32 | reserved u32 (0)
//! frame   17+n bytes length n u32 | crc32c u32 | seq u64 | source u8 | body (n bytes)
//! ```
//!
//! The checksum covers the length, the sequence number, the source tag and the body, so a torn
//! write, a flipped bit or a zeroed region is detected before anything is trusted. A zero or
//! oversized length is corruption and is detected before any allocation.
//!
//! Invariants: decoding never panics and never allocates from an untrusted length; `resync` only
//! accepts a frame whose checksum verifies and whose sequence number is larger than the last
//! good one, so skipping over damage can never reorder or duplicate records.

use crate::payload::Source;

/// The first eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"BVSPOOL\0";
/// The segment format this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub const HEADER_LEN: usize = 16;
/// Size of a frame header (length, checksum, sequence number, source tag) in bytes.
pub const FRAME_HEADER_LEN: usize = 17;

/// How far past the last good sequence number a resynchronised frame may claim to be. It bounds
/// how much a random byte pattern could ever be mistaken for a frame (besides the checksum).
const RESYNC_MAX_SEQ_JUMP: u64 = 1 << 32;

/// CRC32C (Castagnoli) lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues a CRC32C over `bytes`; start with `0` and feed pieces in order.
pub fn crc32c_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_update(0, bytes)
}

/// The one-byte tag a source is stored as.
pub fn source_tag(source: Source) -> u8 {
    match source {
        Source::PgStatActivity => 0,
        Source::PgStatStatements => 1,
        Source::PgLog => 2,
        Source::SystemMetrics => 3,
    }
}

/// The source stored as `tag`, if the tag is known.
pub fn source_from_tag(tag: u8) -> Option<Source> {
    Source::ALL.get(usize::from(tag)).copied()
}

/// The 16-byte header every segment starts with.
pub fn encode_header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Magic and version are ours.
    Valid,
    /// Shorter than a header: a segment whose creation was interrupted.
    Short,
    /// The magic is wrong: the header was damaged (the frames may still be fine).
    BadMagic,
    /// Written by a newer format this build cannot read.
    NewerVersion(u32),
}

/// Checks the header at the start of `buf`.
pub fn check_header(buf: &[u8]) -> HeaderCheck {
    if buf.len() < HEADER_LEN {
        return HeaderCheck::Short;
    }
    if buf[..8] != MAGIC {
        return HeaderCheck::BadMagic;
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version > VERSION {
        return HeaderCheck::NewerVersion(version);
    }
    HeaderCheck::Valid
}

fn frame_crc(len_bytes: [u8; 4], seq: u64, tag: u8, body: &[u8]) -> u32 {
    let mut crc = crc32c_update(0, &len_bytes);
    crc = crc32c_update(crc, &seq.to_le_bytes());
    crc = crc32c_update(crc, &[tag]);
    crc32c_update(crc, body)
}

/// Encodes one frame. `body` must not be empty (a zero length marks corruption).
pub fn encode_frame(seq: u64, source: Source, body: &[u8]) -> Vec<u8> {
    debug_assert!(
        !body.is_empty(),
        "an empty frame body reads back as corruption"
    );
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let tag = source_tag(source);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, seq, tag, body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// A frame header read from disk, not yet verified against its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length in bytes.
    pub len: u32,
    /// The stored checksum.
    pub crc: u32,
    /// The record's sequence number.
    pub seq: u64,
    /// The raw source tag.
    pub tag: u8,
}

impl FrameHeader {
    /// Parses the 17 header bytes.
    pub fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            tag: b[16],
        }
    }

    /// Why this header cannot start a valid frame, checked before reading or allocating the body.
    pub fn check(&self, max_body: usize) -> Result<(), Damage> {
        if self.len == 0 {
            return Err(Damage::ZeroLength);
        }
        if self.len as usize > max_body {
            return Err(Damage::Oversized(self.len));
        }
        if source_from_tag(self.tag).is_none() {
            return Err(Damage::UnknownSource(self.tag));
        }
        Ok(())
    }

    /// Whether `body` matches the stored checksum.
    pub fn verifies(&self, body: &[u8]) -> bool {
        frame_crc(self.len.to_le_bytes(), self.seq, self.tag, body) == self.crc
    }

    /// Total size of the frame on disk.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.len as usize
    }
}

/// Why bytes at an offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The length field is zero (often a zero-filled region after a crash).
    ZeroLength,
    /// The length field exceeds the largest record the spool accepts.
    Oversized(u32),
    /// The source tag is not one of the four.
    UnknownSource(u8),
    /// The checksum does not match.
    Checksum,
    /// The frame extends past the end of the file (a torn write).
    Truncated,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::ZeroLength => write!(f, "zero frame length"),
            Damage::Oversized(n) => write!(f, "frame length {n} over the limit"),
            Damage::UnknownSource(t) => write!(f, "unknown source tag {t}"),
            Damage::Checksum => write!(f, "checksum mismatch"),
            Damage::Truncated => write!(f, "frame cut off by the end of the file"),
        }
    }
}

/// One valid frame found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's source.
    pub source: Source,
    /// The record's body.
    pub body: &'a [u8],
    /// Offset just past this frame.
    pub end: usize,
}

/// Decodes the frame at `off` in `buf`. `Ok(None)` means `off` is exactly the end of `buf`.
pub fn decode_at(buf: &[u8], off: usize, max_body: usize) -> Result<Option<Found<'_>>, Damage> {
    if off >= buf.len() {
        return Ok(None);
    }
    let Some(head) = buf.get(off..off + FRAME_HEADER_LEN) else {
        return Err(Damage::Truncated);
    };
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(head);
    let header = FrameHeader::parse(&h);
    header.check(max_body)?;
    let body_start = off + FRAME_HEADER_LEN;
    let Some(body) = buf.get(body_start..body_start + header.len as usize) else {
        return Err(Damage::Truncated);
    };
    if !header.verifies(body) {
        return Err(Damage::Checksum);
    }
    Ok(Some(Found {
        seq: header.seq,
        // check() above proved the tag is known.
        source: source_from_tag(header.tag).unwrap_or(Source::SystemMetrics),
        body,
        end: body_start + body.len(),
    }))
}

/// The offset of the next valid frame at or after `from` whose sequence number is above
/// `after_seq`, scanning byte by byte past damage.
pub fn resync(buf: &[u8], from: usize, after_seq: u64, max_body: usize) -> Option<usize> {
    let mut off = from;
    while off + FRAME_HEADER_LEN <= buf.len() {
        // A zeroed region (a sparse or zero-filled file) cannot hold a frame, whose length is
        // never zero: jump to three bytes before the next non-zero byte, the first offset whose
        // length field could be non-zero.
        if buf[off..off + 4] == [0, 0, 0, 0] {
            match buf[off + 4..].iter().position(|&b| b != 0) {
                Some(i) => {
                    off = (off + 4 + i).saturating_sub(3).max(off + 1);
                    continue;
                }
                None => return None,
            }
        }
        let len = u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
        if len as usize > max_body {
            off += 1;
            continue;
        }
        // Cheap header checks first; the checksum only runs on plausible candidates.
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&buf[off..off + FRAME_HEADER_LEN]);
        let header = FrameHeader::parse(&h);
        let plausible = header.check(max_body).is_ok()
            && header.seq > after_seq
            && header.seq - after_seq <= RESYNC_MAX_SEQ_JUMP
            && off + header.frame_len() <= buf.len();
        if plausible {
            let body = &buf[off + FRAME_HEADER_LEN..off + header.frame_len()];
            if header.verifies(body) {
                return Some(off);
            }
        }
        off += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The standard check value of CRC-32C over "123456789" (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let split = crc32c_update(crc32c_update(0, b"1234"), b"56789");
        assert_eq!(split, 0xE306_9283);
    }

    #[test]
    fn frame_round_trips() {
        let f = encode_frame(42, Source::PgLog, b"{\"a\":1}");
        assert_eq!(f.len(), FRAME_HEADER_LEN + 7);
        let found = decode_at(&f, 0, 1024).unwrap().unwrap();
        assert_eq!(found.seq, 42);
        assert_eq!(found.source, Source::PgLog);
        assert_eq!(found.body, b"{\"a\":1}");
        assert_eq!(found.end, f.len());
        assert_eq!(decode_at(&f, f.len(), 1024), Ok(None));
    }

    #[test]
    fn every_source_tag_round_trips() {
        for s in Source::ALL {
            assert_eq!(source_from_tag(source_tag(s)), Some(s));
        }
        assert_eq!(source_from_tag(4), None);
    }

    #[test]
    fn each_kind_of_damage_is_detected() {
        let good = encode_frame(7, Source::PgStatActivity, b"hello");

        let mut flipped = good.clone();
        flipped[FRAME_HEADER_LEN + 1] ^= 0x01;
        assert_eq!(decode_at(&flipped, 0, 1024), Err(Damage::Checksum));

        let mut crc_bit = good.clone();
        crc_bit[4] ^= 0x80;
        assert_eq!(decode_at(&crc_bit, 0, 1024), Err(Damage::Checksum));

        let mut zero = good.clone();
        zero[..4].fill(0);
        assert_eq!(decode_at(&zero, 0, 1024), Err(Damage::ZeroLength));

        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_at(&huge, 0, 1024), Err(Damage::Oversized(u32::MAX)));

        let mut tag = good.clone();
        tag[16] = 9;
        assert_eq!(decode_at(&tag, 0, 1024), Err(Damage::UnknownSource(9)));

        assert_eq!(
            decode_at(&good[..good.len() - 1], 0, 1024),
            Err(Damage::Truncated)
        );
        assert_eq!(decode_at(&good[..5], 0, 1024), Err(Damage::Truncated));
    }

    #[test]
    fn resync_finds_the_next_good_frame_after_garbage() {
        let mut buf = encode_frame(1, Source::PgLog, b"one");
        let garbage_at = buf.len();
        buf.extend_from_slice(&[0xAB; 23]);
        let second_at = buf.len();
        buf.extend(encode_frame(2, Source::PgLog, b"two"));
        assert!(decode_at(&buf, garbage_at, 1024).is_err());
        assert_eq!(resync(&buf, garbage_at, 1, 1024), Some(second_at));
        // A frame with an old sequence number is not accepted: resync never goes backwards.
        assert_eq!(resync(&buf, garbage_at, 2, 1024), None);
        assert_eq!(resync(&buf[..buf.len() - 1], garbage_at, 1, 1024), None);
    }

    #[test]
    fn header_checks() {
        let h = encode_header();
        assert_eq!(check_header(&h), HeaderCheck::Valid);
        assert_eq!(check_header(&h[..10]), HeaderCheck::Short);
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(check_header(&bad), HeaderCheck::BadMagic);
        let mut newer = h;
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(check_header(&newer), HeaderCheck::NewerVersion(VERSION + 1));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        // A tiny xorshift PRNG: deterministic, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let n = (next() % 200) as usize;
            let buf: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let off = (next() % 50) as usize;
            if let Ok(Some(f)) = decode_at(&buf, off, 64) {
                assert!(f.end <= buf.len() && !f.body.is_empty());
            }
            let after = next() % 10;
            if let Some(at) = resync(&buf, off, after, 64) {
                let f = decode_at(&buf, at, 64).unwrap().unwrap();
                assert!(f.seq > after, "resync only lands on a newer, valid frame");
            }
        }
    }
}
