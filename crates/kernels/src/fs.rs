//! File-system calls the standard library lacks: moving a finished output into place without
//! ever replacing what another process put there, or swapping it with the output it replaces so
//! that the path never stops existing (Linux `renameat2`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; `AT_FDCWD` makes
    // relative paths relative to the working directory, as `std::fs::rename` does.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether the file system or kernel lacks the call (the caller falls back to a plain rename).
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP))
}

/// Renames `from` to `to`, failing with `AlreadyExists` when `to` exists, atomically: of two
/// processes moving outputs to the same path, exactly one succeeds.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return renameat2(from, to, libc::RENAME_NOREPLACE);
    #[cfg(not(target_os = "linux"))]
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Swaps `a` and `b` (both exist; either may be a file or a folder) in one step.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return renameat2(a, b, libc::RENAME_EXCHANGE);
    #[cfg(not(target_os = "linux"))]
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_replace_refuses_and_exchange_swaps() {
        let d = std::env::temp_dir().join(format!("transact-fs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        match rename_no_replace(&a, &b) {
            Err(e) if unsupported(&e) => {}
            r => {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
                exchange(&a, &b).unwrap();
                assert_eq!(std::fs::read_to_string(&b).unwrap(), "1");
                assert_eq!(std::fs::read_to_string(&a).unwrap(), "2");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
