//! A zone's last serial and the hash of the content it stands for (`<zone>.serial` in the state directory), so
//! serials stay monotonic across restarts. It is written on every serial change, which can be several times a
//! second: the file stays open and each write overwrites one fixed-size record in place (one `pwrite`; no
//! temporary file, rename or directory update per change).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Size of the record: `<serial> <hash>`, padded with spaces, then a newline (a u32 and a u64 in decimal need at
/// most 10 + 1 + 20 characters).
const RECORD: usize = 32;

/// The serial file of one zone.
#[derive(Debug)]
pub struct SerialFile {
    path: PathBuf,
    file: Option<File>,
}

impl SerialFile {
    /// The file at `path` (not opened yet).
    pub fn new(path: PathBuf) -> SerialFile {
        SerialFile { path, file: None }
    }

    /// The serial and content hash last written, if the file holds them.
    pub fn read(&self) -> Option<(u32, u64)> {
        let text = fs::read_to_string(&self.path).ok()?;
        let mut it = text.split_whitespace();
        match (it.next()?.parse(), it.next()?.parse()) {
            (Ok(s), Ok(h)) => Some((s, h)),
            _ => None,
        }
    }

    /// Records `serial` and `hash` (overwriting the previous record).
    pub fn write(&mut self, serial: u32, hash: u64) -> io::Result<()> {
        let mut rec = format!("{serial} {hash}");
        rec.truncate(RECORD - 1);
        while rec.len() < RECORD - 1 {
            rec.push(' ');
        }
        rec.push('\n');
        let res = self.open().and_then(|f| f.write_all_at(rec.as_bytes(), 0));
        if res.is_err() {
            self.file = None; // reopened on the next write (e.g. the state directory was recreated)
        }
        res
    }

    fn open(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
            f.set_len(RECORD as u64)?;
            self.file = Some(f);
        }
        self.file.as_ref().ok_or_else(|| io::Error::other("serial file not open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records overwrite each other in place, whatever their lengths, and a file in the earlier format (one line
    /// of its own length) reads and is overwritten the same way.
    #[test]
    fn overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/z.serial");
        let mut f = SerialFile::new(path.clone());
        assert_eq!(f.read(), None);
        f.write(u32::MAX, u64::MAX).unwrap();
        assert_eq!(f.read(), Some((u32::MAX, u64::MAX)));
        f.write(7, 9).unwrap();
        assert_eq!(f.read(), Some((7, 9)));
        assert_eq!(fs::metadata(&path).unwrap().len(), RECORD as u64);
        fs::write(&path, "12 34\n").unwrap();
        let mut g = SerialFile::new(path.clone());
        assert_eq!(g.read(), Some((12, 34)));
        g.write(13, 35).unwrap();
        assert_eq!(SerialFile::new(path).read(), Some((13, 35)));
    }
}
