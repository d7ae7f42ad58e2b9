//! Outputs appear complete or not at all: write into a temporary sibling, then rename.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn check_target(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!("{}: already exists; choose another path or pass --force to replace it", out.display());
    }
    Ok(())
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
    check_target(out, force)?;
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
    check_target(out, force)?;
    let tmp = temp_sibling(out);
    match fill(&tmp) {
        Ok(()) => replace(&tmp, out),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
