//! The BPF filesystem: mounted at /sys/fs/bpf (mounted here if it is not), pin directories per instance.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::L4Error;

/// Root of Padis pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/padis";

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a valid C string into a zeroed struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure bpffs is mounted at /sys/fs/bpf (idempotent) and returns the pin directory of `instance`.
pub fn pin_dir(instance: &str) -> Result<PathBuf, L4Error> {
    let root = Path::new("/sys/fs/bpf");
    if !is_bpffs(root) {
        tracing::info!("mounting bpffs on /sys/fs/bpf");
        let io = |source| L4Error::Bpffs { path: root.to_path_buf(), source };
        std::fs::create_dir_all(root).map_err(io)?;
        let (src, tgt, fs) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: valid C strings, no data argument.
        if unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
            let e = std::io::Error::last_os_error();
            if !is_bpffs(root) {
                return Err(io(e));
            }
        }
    }
    let dir = Path::new(PIN_ROOT).join(instance);
    std::fs::create_dir_all(&dir).map_err(|source| L4Error::Bpffs { path: dir.clone(), source })?;
    Ok(dir)
}

/// Removes the pins of `instance` (maps and links): its state is gone afterwards.
pub fn remove_instance(instance: &str) -> Result<(), L4Error> {
    let dir = Path::new(PIN_ROOT).join(instance);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(L4Error::Bpffs { path: dir, source }),
    }
}
