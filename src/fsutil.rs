//! Safe reading of files the agent does not control: configuration, password and CA files,
//! spool and state files; and the one way the agent replaces a file it owns
//! ([`write_atomically`]).
//!
//! Invariants: a file is opened without blocking (`O_NONBLOCK`, so a FIFO cannot hang the
//! open), checked with `fstat` on the open descriptor (no race between check and read), refused
//! unless it is a regular file (a FIFO, a device such as `/dev/zero`, a directory or a socket),
//! and never read past `max_bytes` (a larger file is refused, not truncated). `/dev/null` is the
//! one exception: it reads as an empty file. A file the agent owns (cursor, baseline, log
//! position, status, pid file, settings cache) is never written in place: the new content goes
//! to a temp file next to it and is renamed over it, so a reader or a crash sees the old or the
//! new content, never a mix; the caller's [`Durability`] says whether it is also fsynced.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The cap for small text files the operator writes: the configuration, a password file, a
/// CA bundle, the status file (1 MiB; real ones are a few KiB).
pub const MAX_TEXT_FILE: u64 = 1 << 20;

/// What kind of file `meta` describes, in words for a message ("a FIFO", "a directory").
pub fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is (or a symbolic link leads to) a regular file; otherwise an
/// `InvalidInput` error that says what it is instead. The open never blocks on a FIFO.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() && !is_null_device(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", kind(&meta)),
        ));
    }
    Ok(file)
}

/// `/dev/null` (by device number, so also through a link) reads as an empty file: `-c /dev/null`
/// is the usual way to say "no configuration file", and it can neither block nor stream.
fn is_null_device(meta: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.file_type().is_char_device()
        && std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev())
}

/// Reads the regular file at `path` whole, refusing a non-regular file and a file larger than
/// `max_bytes` with an error that says which (and names neither contents nor secrets).
pub fn read_regular_file(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        return Err(too_large(len, max_bytes));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // `take` bounds the read even if the file grows while it is read.
    file.take(max_bytes + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max_bytes {
        return Err(too_large(buf.len() as u64, max_bytes));
    }
    Ok(buf)
}

/// [`read_regular_file`] as UTF-8 text (`InvalidData` when it is not).
pub fn read_regular_to_string(path: &Path, max_bytes: u64) -> io::Result<String> {
    String::from_utf8(read_regular_file(path, max_bytes)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is not valid UTF-8 text",
        )
    })
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes, more than the {max} bytes such a file may have"),
    )
}

/// How far [`write_atomically`] goes to make the new content outlive a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Temp file and rename, nothing fsynced: a reader or a crash of the agent (even `kill -9`)
    /// sees the old or the new content, never a mix, but after a power failure the old content
    /// (or, on some filesystems, an empty file) may be back. For files rewritten often whose loss
    /// costs nothing lasting: the status file, the pid file, the log settings cache.
    Atomic,
    /// [`Durability::Atomic`] plus an fsync of the temp file before the rename and of the
    /// directory after it: once the call returns, the new content survives a power failure. For
    /// state that must never go back: the spool cursor (ARCHITECTURE.md's durability invariant),
    /// the statements baseline, the log position.
    Durable,
}

/// The temp file [`write_atomically`] writes first: the target's file name plus `.tmp`, in the
/// same directory (a rename is atomic only within one filesystem); `cursor` → `cursor.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces the file at `path` with `bytes`: written to [`temp_path`], fsynced when `durability`
/// asks, renamed over `path`, and the directory fsynced when `durability` asks. The directory
/// must exist. An error leaves the old file as it was.
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    write_atomically_with(path, durability, |f| f.write_all(bytes))
}

/// [`write_atomically`] with the content written by `fill` into the temp file (to stream a large
/// file instead of building it whole; `fill` brings its own buffer if it needs one).
pub fn write_atomically_with(
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    {
        let mut file = File::create(&tmp)?;
        fill(&mut file)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durability == Durability::Durable {
        // The rename itself is durable only once the directory entry is.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> crate::testdir::TempDir {
        crate::testdir::TempDir::new(&format!("fsutil-{name}"))
    }

    #[test]
    fn reads_a_regular_file_and_refuses_one_too_large() {
        let d = temp("regular");
        let p = d.join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_regular_file(&p, 5).unwrap(), b"hello");
        let e = read_regular_file(&p, 4).unwrap_err();
        assert!(e.to_string().contains("more than the 4 bytes"), "{e}");
    }

    #[test]
    fn refuses_a_fifo_without_hanging_and_a_device_and_a_directory() {
        let d = temp("special");
        let fifo = d.join("fifo");
        crate::sys::mkfifo(&fifo).unwrap();
        let e = read_regular_file(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let link = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular_file(&link, 100).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_regular_file(&d, 100).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        assert_eq!(read_regular_file(Path::new("/dev/null"), 100).unwrap(), b"");
    }

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_temp_file() {
        let d = temp("atomic");
        let p = d.join("state");
        assert_eq!(temp_path(&p), d.join("state.tmp"));
        for durability in [Durability::Atomic, Durability::Durable] {
            write_atomically(&p, b"one", durability).unwrap();
            write_atomically(&p, b"two", durability).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"two");
            assert!(!temp_path(&p).exists());
        }
        // A temp file that cannot be created fails the write and leaves the old content.
        std::fs::create_dir(temp_path(&p)).unwrap();
        assert!(write_atomically(&p, b"three", Durability::Durable).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }

    #[test]
    fn a_failing_fill_leaves_the_old_content() {
        let d = temp("fill");
        let p = d.join("state");
        write_atomically(&p, b"old", Durability::Atomic).unwrap();
        let e = write_atomically_with(&p, Durability::Durable, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("fill failed"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "fill failed");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
