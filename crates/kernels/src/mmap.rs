//! Read-only mappings of checkpoint files: tensors are read in place instead of copied into
//! memory first, so a model larger than RAM can be streamed a layer at a time.

use std::fs::File;
use std::path::Path;

/// A file mapped read-only; its bytes are `&[u8]` through `Deref`.
pub struct Mapped(memmap2::Mmap);

impl Mapped {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and private to this process. Like every mmap reader,
        // it assumes no other process truncates or rewrites the file while it is mapped; a
        // checkpoint is not modified while it is being read.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Self(map))
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}
