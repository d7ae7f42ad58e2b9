//! Outputs appear complete or not at all: written into a temporary sibling, flushed to disk, then
//! moved into place in one step.
//!
//! - Without `force`, the move refuses to replace anything (`renameat2(RENAME_NOREPLACE)`): of two
//!   runs writing the same output, exactly one wins and the other fails with a clear error.
//! - With `force`, the new output is swapped with the old one (`RENAME_EXCHANGE`), so the path
//!   never stops existing, and the old one is removed afterwards.
//! - Files and folders are fsynced before the move and the parent folder after it: a crash never
//!   leaves a name pointing at unwritten data.
//! - A temporary sibling left by a run that was killed (`.NAME.tmp-PID` of a process that no longer
//!   exists) is removed by the next run writing NAME.
//! - Errors name the user's path, never the temporary one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use transact_kernels::fs as kfs;

fn file_name(out: &Path) -> String {
    out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn temp_sibling(out: &Path) -> PathBuf {
    out.with_file_name(format!(".{}.tmp-{}", file_name(out), std::process::id()))
}

/// Removes temporary siblings of `out` whose process is gone (killed mid-write); returns them.
pub fn remove_stale_temporaries(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.tmp-", file_name(out));
    let dir = match out.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        // A live process (this one, or a concurrent run) may still be writing it.
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let p = e.path();
        let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        if gone.is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Checks, before any long work, that `out` can be written: it does not exist (unless `force`)
/// and its nearest existing ancestor is a directory (missing folders are created when it is
/// written), so a mistyped path fails in milliseconds rather than after the job.
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!("{}: already exists; choose another path or replace it (`force`)", out.display());
    }
    let mut dir = out.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        dir = d.parent();
    }
    if let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        bail!("{}: cannot be written: {} is not a directory", out.display(), d.display());
    }
    Ok(())
}

/// Creates `out`'s missing parent folders.
fn create_parent(out: &Path) -> Result<()> {
    match out.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create its folder {}", out.display(), d.display())),
        None => Ok(()),
    }
}

/// Flushes `p` (a file, or a folder with everything in it) to disk.
fn sync_all(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            sync_all(&e?.path())?;
        }
    }
    std::fs::File::open(p)?.sync_all()
}

fn sync_parent(out: &Path) {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Best effort: some file systems cannot sync a folder; the data itself is already synced.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
}

fn remove(p: &Path) -> std::io::Result<()> {
    if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
}

/// Moves the finished `tmp` to `out` (see the module's rules).
fn put_in_place(tmp: &Path, out: &Path, force: bool) -> Result<()> {
    let o = out.display();
    sync_all(tmp).with_context(|| format!("{o}: cannot flush to disk"))?;
    let exists = std::fs::symlink_metadata(out).is_ok();
    let moved = if exists && force { kfs::exchange(tmp, out) } else { kfs::rename_no_replace(tmp, out) };
    match moved {
        Ok(()) if exists && force => {
            remove(tmp).with_context(|| format!("{o}: replaced, but its old version could not be removed"))?;
        }
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{o}: already exists (another run wrote it while this one worked); nothing was replaced")
        }
        // A file system without renameat2: replace in two steps.
        Err(e) if kfs::unsupported(&e) => {
            if exists {
                if !force {
                    bail!("{o}: already exists; choose another path or replace it (`force`)");
                }
                remove(out).with_context(|| format!("{o}: cannot remove"))?;
            }
            std::fs::rename(tmp, out).with_context(|| format!("{o}: cannot move into place"))?;
        }
        Err(e) => return Err(anyhow!(e).context(format!("{o}: cannot move into place"))),
    }
    sync_parent(out);
    Ok(())
}

/// Runs `fill` on `tmp`, then moves it to `out`; on failure removes `tmp` and reports the error
/// with `tmp` spelled as `out`.
fn write_via(out: &Path, force: bool, tmp: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let done = fill(tmp).map_err(|e| {
        let (t, o) = (tmp.display().to_string(), out.display().to_string());
        anyhow!("{}", format!("{e:#}").replace(&t, &o)).context(format!("{o}: cannot write"))
    });
    match done.and_then(|()| put_in_place(tmp, out, force)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = remove(tmp);
            Err(e)
        }
    }
}

/// Creates directory `out` by letting `fill` populate a temporary directory.
pub fn write_dir(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_output(out, force)?;
    create_parent(out)?;
    remove_stale_temporaries(out);
    let tmp = temp_sibling(out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create a temporary folder beside it", out.display()))?;
    write_via(out, force, &tmp, fill)
}

/// Creates file `out` by letting `fill` write a temporary file.
pub fn write_file(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_output(out, force)?;
    create_parent(out)?;
    remove_stale_temporaries(out);
    let tmp = temp_sibling(out);
    write_via(out, force, &tmp, fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_in_new_folders_and_existing_ones_need_force() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("new").join("deeper").join("x.json");
        check_output(&out, false).unwrap();
        write_file(&out, false, |tmp| Ok(std::fs::write(tmp, b"1")?)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"1");
        assert!(check_output(&out, false).unwrap_err().to_string().contains("already exists"));
        write_file(&out, true, |tmp| Ok(std::fs::write(tmp, b"2")?)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"2");
        // A failed fill leaves the old file and no temporary beside it, and names `out`.
        let err = write_file(&out, true, |tmp| anyhow::bail!("{}: boom", tmp.display())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("cannot write") && msg.contains(&format!("{}: boom", out.display())) && !msg.contains(".tmp-"), "{msg}");
        assert_eq!(std::fs::read(&out).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn an_output_that_appears_meanwhile_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("model");
        let err = write_dir(&out, false, |tmp| {
            std::fs::write(tmp.join("a"), b"mine")?;
            // Another run finishes first.
            std::fs::create_dir(&out)?;
            std::fs::write(out.join("a"), b"theirs")?;
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err:#}");
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"theirs");
        // With force, the old folder is swapped out and removed.
        write_dir(&out, true, |tmp| Ok(std::fs::write(tmp.join("a"), b"new")?)).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporaries_of_killed_runs_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("model");
        // PIDs above the kernel's maximum (4194304) belong to no process.
        let stale = d.path().join(".model.tmp-4999999");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("model.gguf"), b"partial").unwrap();
        let live = d.path().join(format!(".model.tmp-{}", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        write_dir(&out, false, |tmp| Ok(std::fs::write(tmp.join("a"), b"1")?)).unwrap();
        assert!(!stale.exists());
        assert!(out.join("a").exists());
    }
}
