//! Outputs appear complete or not at all: write into a temporary sibling, then rename.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
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

fn replace(tmp: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}: cannot remove", out.display()))?;
    } else if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("{}: cannot remove", out.display()))?;
    }
    std::fs::rename(tmp, out).with_context(|| format!("{}: cannot move into place", out.display()))
}

/// Creates directory `out` by letting `fill` populate a temporary directory.
pub fn write_dir(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_output(out, force)?;
    let tmp = temp_sibling(out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    match fill(&tmp) {
        Ok(()) => replace(&tmp, out),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Creates file `out` by letting `fill` write a temporary file.
pub fn write_file(out: &Path, force: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_output(out, force)?;
    create_parent(out)?;
    let tmp = temp_sibling(out);
    match fill(&tmp) {
        Ok(()) => replace(&tmp, out),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("{}: cannot write", out.display())))
        }
    }
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
        // A failed fill leaves the old file and no temporary beside it.
        let err = write_file(&out, true, |_| anyhow::bail!("boom")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot write") && format!("{err:#}").contains("boom"), "{err:#}");
        assert_eq!(std::fs::read(&out).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
    }
}
