//! A first pass over a GGUF header that checks what candle's reader resolves silently or trusts:
//! duplicate metadata keys and tensor names (candle keeps the last; a second `block_count` would
//! make another model) and `general.alignment` (candle divides by it). Lengths are checked against
//! the bytes left in the file before anything is read or allocated, so a header that lies about a
//! count or a length fails here with the field it lied in.

use std::collections::HashSet;
use std::io::{BufReader, Read, Seek, SeekFrom};

use anyhow::{Context, Result, anyhow, bail};

/// What the scan learned that the rest of the loader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFacts {
    pub version: u32,
    pub tensor_count: u64,
    pub alignment: u64,
    /// Where the tensor infos end (the data starts at the next multiple of `alignment`).
    pub header_bytes: u64,
}

/// Deepest array nesting accepted (llama.cpp writes no nested arrays at all).
const MAX_DEPTH: usize = 4;
/// The most dims of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

struct Scan<'a, R> {
    r: &'a mut BufReader<R>,
    pos: u64,
    len: u64,
    version: u32,
}

impl<R: Read + Seek> Scan<'_, R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| anyhow!("the file ends inside the header (reading {what} at byte {})", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }
    /// A count or length: u32 in version 1, u64 after.
    fn length(&mut self, what: &str) -> Result<u64> {
        if self.version == 1 { self.u32(what).map(u64::from) } else { self.u64(what) }
    }
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            bail!("{what} at byte {} needs {n} bytes; the file has {} left", self.pos, self.left());
        }
        // Within the buffer when it can: a plain seek would drop it for every skipped string.
        self.r.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.length(what)?;
        if n > self.left() {
            bail!("{what} at byte {} has length {n}; the file has {} bytes left", self.pos, self.left());
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).with_context(|| format!("reading {what}"))?;
        self.pos += n;
        String::from_utf8(b).map_err(|_| anyhow!("{what} at byte {} is not UTF-8", self.pos - n))
    }

    /// Skips one value of GGUF type `t`; returns it when it is a scalar integer (for alignment).
    fn value(&mut self, t: u32, key: &str, depth: usize) -> Result<Option<u64>> {
        let fixed = |t| match t {
            0 | 1 | 7 => Some(1u64), // u8, i8, bool
            2 | 3 => Some(2),
            4..=6 => Some(4), // u32, i32, f32
            10..=12 => Some(8), // u64, i64, f64
            _ => None,
        };
        match t {
            4 => return Ok(Some(u64::from(self.u32(key)?))),
            8 => {
                let n = self.length(key)?;
                self.skip(n, &format!("the string value of `{key}`"))?;
            }
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("metadata `{key}` nests arrays deeper than {MAX_DEPTH}");
                }
                let et = self.u32(key)?;
                let n = self.length(key)?;
                match fixed(et) {
                    Some(size) => {
                        let bytes = n.checked_mul(size).ok_or_else(|| anyhow!("metadata `{key}`: an array of {n} values overflows"))?;
                        self.skip(bytes, &format!("the array `{key}` of {n} values"))?;
                    }
                    None if et == 8 || et == 9 => {
                        // Each element takes at least its 4- or 8-byte length: a count the file
                        // cannot hold fails before the loop.
                        let min = if self.version == 1 { 4 } else { 8 };
                        if n.saturating_mul(min) > self.left() {
                            bail!("metadata `{key}` claims {n} elements; the file has {} bytes left", self.left());
                        }
                        for _ in 0..n {
                            self.value(et, key, depth + 1)?;
                        }
                    }
                    None => bail!("metadata `{key}` is an array of unknown type {et}"),
                }
            }
            t => match fixed(t) {
                Some(size) => self.skip(size, key)?,
                None => bail!("metadata `{key}` has unknown value type {t}"),
            },
        }
        Ok(None)
    }
}

/// Scans the header of a GGUF file of `len` bytes from the reader's start; leaves the reader at
/// an unspecified position.
pub fn scan<R: Read + Seek>(r: &mut BufReader<R>, len: u64) -> Result<HeaderFacts> {
    r.seek(SeekFrom::Start(0))?;
    let mut s = Scan { r, pos: 0, len, version: 3 };
    let magic = s.bytes::<4>("the magic bytes")?;
    if &magic != b"GGUF" {
        bail!("not a GGUF file (magic bytes {:?}, expected \"GGUF\")", String::from_utf8_lossy(&magic));
    }
    let version = s.u32("the version")?;
    if !(1..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (1, 2 or 3)");
    }
    s.version = version;
    let tensor_count = s.length("the tensor count")?;
    let kv_count = s.length("the metadata count")?;
    // A key-value takes at least 13 bytes and a tensor info 24: counts the file cannot hold fail
    // before any loop runs.
    let min = kv_count.saturating_mul(13).saturating_add(tensor_count.saturating_mul(24));
    if min > s.left() {
        bail!("the header declares {tensor_count} tensors and {kv_count} metadata entries; the file ({len} bytes) cannot hold them");
    }
    let mut keys = HashSet::new();
    let mut alignment = None;
    for i in 0..kv_count {
        let key = s.string(&format!("metadata key {i}"))?;
        let t = s.u32(&key)?;
        let v = s.value(t, &key, 0)?;
        if key == "general.alignment" {
            alignment = Some(v.ok_or_else(|| anyhow!("metadata `general.alignment` is not a u32 (type {t})"))?);
        }
        if !keys.insert(key.clone()) {
            bail!("metadata key `{key}` appears twice");
        }
    }
    let alignment = alignment.unwrap_or(32);
    if !alignment.is_power_of_two() {
        bail!("metadata `general.alignment` is {alignment}, not a power of two");
    }
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = s.string(&format!("the name of tensor {i}"))?;
        let dims = s.u32(&name)?;
        if !(1..=MAX_DIMS).contains(&dims) {
            bail!("tensor `{name}` has {dims} dimensions (1 to {MAX_DIMS})");
        }
        for d in 0..dims {
            if s.u64(&name)? == 0 {
                bail!("tensor `{name}` has size 0 in dimension {d}");
            }
        }
        s.skip(12, &name)?; // type (checked against the supported ones later) and offset
        if !names.insert(name.clone()) {
            bail!("tensor `{name}` appears twice");
        }
    }
    Ok(HeaderFacts { version, tensor_count, alignment, header_bytes: s.pos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A header of version 3 with the given metadata (raw values) and tensors.
    fn header(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64])]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        for (k, t, v) in kvs {
            s(&mut b, k);
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        for (name, dims) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(0u32.to_le_bytes());
            b.extend(0u64.to_le_bytes());
        }
        b.resize(b.len() + 64, 0);
        b
    }

    fn run(b: &[u8]) -> Result<HeaderFacts> {
        scan(&mut BufReader::new(Cursor::new(b)), b.len() as u64)
    }

    #[test]
    fn lies_fail_with_the_field_they_lie_in() {
        let u32v = |x: u32| x.to_le_bytes().to_vec();
        let ok = header(&[("general.alignment", 4, u32v(64))], &[("a", &[4, 2])]);
        assert_eq!(run(&ok).unwrap(), HeaderFacts { version: 3, tensor_count: 1, alignment: 64, header_bytes: ok.len() as u64 - 64 });
        let err = |b: Vec<u8>| run(&b).unwrap_err().to_string();
        assert!(err(header(&[("k", 4, u32v(1)), ("k", 4, u32v(2))], &[])).contains("`k` appears twice"));
        assert!(err(header(&[], &[("t", &[4]), ("t", &[4])])).contains("`t` appears twice"));
        assert!(err(header(&[("general.alignment", 4, u32v(0))], &[])).contains("not a power of two"));
        assert!(err(header(&[("general.alignment", 4, u32v(3))], &[])).contains("not a power of two"));
        assert!(err(header(&[("general.alignment", 10, 32u64.to_le_bytes().to_vec())], &[])).contains("not a u32"));
        assert!(err(header(&[("k", 99, vec![])], &[])).contains("unknown value type 99"));
        assert!(err(header(&[], &[("t", &[4, 0])])).contains("size 0"));
        assert!(err(header(&[], &[("t", &[1, 1, 1, 1, 1])])).contains("5 dimensions"));
        // An array whose count the file cannot hold, and a string length past the end.
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(u64::MAX.to_le_bytes());
        assert!(err(header(&[("tokens", 9, arr)], &[])).contains("claims"));
        assert!(err(header(&[("s", 8, (1u64 << 40).to_le_bytes().to_vec())], &[])).contains("needs 1099511627776 bytes"));
        let mut counts = ok.clone();
        counts[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(run(&counts).unwrap_err().to_string().contains("cannot hold"));
        assert!(run(&ok[..30]).is_err());
    }
}
