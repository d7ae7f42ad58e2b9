//! JSON-lines files, plain or gzip-compressed, with line numbers in every error.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// The longest line accepted: a context of 4 MiB is ~1M tokens, far beyond any model's window,
/// and tokenizing one costs ~100× its size in memory. Lines are read at most this far, so a file
/// that is one huge line fails at once instead of filling memory.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Parses every non-empty line of `path` (gzip when it ends in `.gz`), with 1-based line numbers.
pub fn read(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let p = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::new(reader);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        let got = reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{p}: line {n}: cannot read"))?;
        if got == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES {
            bail!("{p}: line {n} is longer than {} MiB (the limit per line)", MAX_LINE_BYTES >> 20);
        }
        let line = std::str::from_utf8(&buf).map_err(|e| anyhow!("{p}: line {n}: not UTF-8 text ({e})"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| anyhow!("{p}: line {n}: invalid JSON: {e}"))?;
        out.push((n, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_and_bad_bytes_are_errors_with_line_numbers() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t.jsonl");
        std::fs::write(&f, "{\"a\": 1}\n\n{\"a\": 2}").unwrap();
        assert_eq!(read(&f).unwrap().iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3]);
        let mut long = b"{\"a\": \"".to_vec();
        long.resize(MAX_LINE_BYTES + 10, b'x');
        std::fs::write(&f, [b"{}\n".as_slice(), &long].concat()).unwrap();
        assert!(read(&f).unwrap_err().to_string().contains("line 2 is longer than 4 MiB"));
        std::fs::write(&f, b"{}\n{\"a\": \"\xff\"}\n").unwrap();
        assert!(read(&f).unwrap_err().to_string().contains("line 2: not UTF-8"));
    }
}
