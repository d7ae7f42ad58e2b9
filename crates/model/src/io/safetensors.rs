//! Safetensors: reading (single file or sharded with an index) and lazy writing.
//!
//! Files are read, not mapped: a tensor's bytes are read when it is loaded, so memory holds one
//! tensor's bytes at a time (a checkpoint larger than memory streams a layer at a time), and a
//! file truncated or rewritten while it is read fails with an error instead of a SIGBUS.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::Dtype;

/// The largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One open file: its handle, where its data starts, and its header.
struct File {
    path: PathBuf,
    file: std::fs::File,
    data_start: u64,
    header: Metadata,
}

/// The keys of a JSON object in order, duplicates kept (serde's maps keep the last silently).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// The first key of a JSON object that appears twice.
pub fn duplicate_key(json: &[u8]) -> Option<String> {
    let Keys(keys) = serde_json::from_slice(json).ok()?;
    let mut seen = HashSet::new();
    keys.into_iter().find(|k| !seen.insert(k.clone()))
}

impl File {
    fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
        let len = file.metadata().with_context(|| format!("{p}: cannot open"))?.len();
        let bad = |what: String| anyhow!("{p}: invalid safetensors file: {what}");
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0).map_err(|_| bad(format!("{len} bytes, too short for a header")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || n > len - 8 {
            return Err(bad(format!("the header length {n} exceeds the file ({len} bytes) or the limit of {MAX_HEADER_BYTES}")));
        }
        let mut json = vec![0u8; n as usize];
        file.read_exact_at(&mut json, 8).map_err(|e| bad(format!("cannot read the header: {e}")))?;
        if let Some(k) = duplicate_key(&json) {
            return Err(bad(format!("the header lists `{k}` twice")));
        }
        // Parses the header and checks that the tensors' byte ranges tile the data exactly.
        let header: Metadata = serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        let end = 8 + n + header.data_len() as u64;
        if end != len {
            return Err(bad(format!("the header describes {end} bytes but the file has {len}")));
        }
        Ok(Self { path: path.to_path_buf(), file, data_start: 8 + n, header })
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.header.info(name).ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.path.display()))
    }

    /// Runs `f` on the tensor `name` as stored, its bytes read for this call and, for a float
    /// type, checked to be finite (every reader of weights comes through here).
    fn with_view<R>(&self, name: &str, f: impl FnOnce(&TensorView) -> R) -> Result<R> {
        let p = self.path.display();
        let info = self.info(name)?;
        let (lo, hi) = info.data_offsets;
        let mut bytes = vec![0u8; hi - lo];
        self.file
            .read_exact_at(&mut bytes, self.data_start + lo as u64)
            .map_err(|e| anyhow!("{p}: tensor `{name}`: cannot read its bytes ({e}); did the file change while it was read?"))?;
        let stored = match info.dtype {
            Dtype::F32 => Some(GgmlDType::F32),
            Dtype::F16 => Some(GgmlDType::F16),
            Dtype::BF16 => Some(GgmlDType::BF16),
            _ => None,
        };
        if let Some(t) = stored {
            let cols = info.shape.last().copied().unwrap_or(1);
            crate::finite::check_stored(t, &bytes, name, cols).map_err(|e| anyhow!("{p}: {e}"))?;
        }
        let view = TensorView::new(info.dtype, info.shape.clone(), &bytes).map_err(|e| anyhow!("{p}: tensor `{name}`: {e}"))?;
        Ok(f(&view))
    }
}

/// The tensors of one checkpoint, across shards.
pub struct SafetensorsFiles {
    dir: PathBuf,
    files: Vec<File>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

/// The shard file names of `model.safetensors.index.json`'s `weight_map`, by tensor.
fn weight_map(index_path: &Path) -> Result<Vec<(String, String)>> {
    let p = index_path.display();
    let text = std::fs::read(index_path).with_context(|| format!("{p}: cannot read"))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| anyhow!("{p}: {e}"))?;
    let map = v["weight_map"].as_object().ok_or_else(|| anyhow!("{p}: missing object `weight_map`"))?;
    let inner = serde_json::to_vec(&v["weight_map"])?;
    if let Some(k) = duplicate_key(&text).or_else(|| duplicate_key(&inner)) {
        bail!("{p}: `{k}` appears twice");
    }
    map.iter()
        .map(|(tensor, file)| {
            let file = file.as_str().ok_or_else(|| anyhow!("{p}: `weight_map` entry `{tensor}` is not a file name"))?;
            // A shard lies beside the index: a path elsewhere would read files the user did not name.
            let plain = Path::new(file).file_name().is_some_and(|n| n == file) && file.ends_with(".safetensors");
            if !plain {
                bail!("{p}: `weight_map` entry `{tensor}` names `{file}`, not a .safetensors file in this folder");
            }
            Ok((tensor.clone(), file.to_string()))
        })
        .collect()
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`; each
    /// tensor is read from the shard the index names, and from no other.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = Vec::new();
        let mut index = HashMap::new();
        if index_path.exists() {
            let map = weight_map(&index_path)?;
            let mut names: Vec<&str> = map.iter().map(|(_, f)| f.as_str()).collect();
            names.sort();
            names.dedup();
            for name in &names {
                files.push(File::open(&dir.join(name))?);
            }
            for (tensor, file) in &map {
                let i = names.binary_search(&file.as_str()).expect("every shard was opened");
                files[i].info(tensor).with_context(|| format!("{}: `weight_map` names this shard", index_path.display()))?;
                index.insert(tensor.clone(), i);
            }
            // A tensor in a shard the index does not send it to would be a second, ignored copy.
            for (i, f) in files.iter().enumerate() {
                for name in f.header.tensors().into_keys() {
                    if index.get(&name) != Some(&i) {
                        bail!("{}: holds tensor `{name}`, which `weight_map` of {} does not assign to it", f.path.display(), index_path.display());
                    }
                }
            }
        } else if single.exists() {
            let file = File::open(&single)?;
            index = file.header.tensors().into_keys().map(|name| (name, 0)).collect();
            files.push(file);
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json found", dir.display());
        }
        Ok(Self { dir: dir.to_path_buf(), files, index })
    }

    fn file(&self, name: &str) -> Result<&File> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}` in the safetensors files", self.dir.display()))?;
        Ok(&self.files[i])
    }

    /// How `name` is stored (dtype, shape, bytes), without reading it.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.file(name)?.info(name)
    }

    /// Every tensor name of the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The file that holds `name`.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path.as_path())
    }

    /// Loads `name` as f32 after checking its dtype and shape, and that its values are finite.
    pub fn load_f32(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor> {
        let file = self.file(name)?;
        let p = file.path.display();
        let info = file.info(name)?;
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("{p}: tensor `{name}` has unsupported dtype {:?} (supported: F32, F16, BF16)", info.dtype);
        }
        if info.shape != expected {
            bail!("{p}: tensor `{name}` has shape {:?} but config.json implies {expected:?}", info.shape);
        }
        // Decoded to f32 straight from the bytes read: one pass, no intermediate tensor.
        let values = file.with_view(name, |view| decode(view.data(), view.dtype()))?;
        Tensor::from_vec(values, expected, device).map_err(|e| anyhow!("{p}: tensor `{name}`: {}", super::msg(e)))
    }
}

/// Runs `f` on the tensor `name` of the file `path`, its bytes read for this call only, so a
/// checkpoint larger than memory can be read one tensor at a time.
pub fn with_tensor<R>(path: &Path, name: &str, f: impl FnOnce(&TensorView) -> R) -> Result<R> {
    File::open(path)?.with_view(name, f)
}

/// The bytes of one tensor being written.
type MakeBytes<'a> = Box<dyn Fn() -> Result<Vec<u8>> + Send + Sync + 'a>;

/// One tensor of a safetensors file being written, whose bytes are made only when the writer asks
/// for them, so a writer holds one tensor's bytes at a time. Making them may fail (a source read
/// after the header was written): [`write`] then reports the failure after the file is written,
/// since the writer's `View` cannot fail, and the caller's atomic output discards the file.
pub struct LazyTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: MakeBytes<'a>,
    error: Mutex<Option<String>>,
}

impl<'a> LazyTensor<'a> {
    /// A tensor of `dtype` and `shape` whose little-endian bytes `bytes` makes.
    pub fn new(dtype: Dtype, shape: Vec<usize>, bytes: impl Fn() -> Result<Vec<u8>> + Send + Sync + 'a) -> Self {
        Self { dtype, shape, bytes: Box::new(bytes), error: Mutex::new(None) }
    }

    /// A CPU tensor written as `dtype` (f32, f16 or bf16), converted when its bytes are taken.
    pub fn from_tensor(tensor: Tensor, dtype: Dtype) -> Result<Self> {
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("safetensors export supports f32, f16 and bf16, not {dtype:?}");
        }
        let shape = tensor.dims().to_vec();
        let tensor = tensor.to_dtype(DType::F32)?;
        Ok(Self::new(dtype, shape, move || Ok(encode(&tensor.flatten_all()?.to_vec1::<f32>()?, dtype))))
    }
}

impl safetensors::View for &LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match (self.bytes)() {
            Ok(b) if b.len() == self.data_len() => Cow::Owned(b),
            result => {
                let e = match result {
                    Ok(b) => format!("made {} bytes for {} expected", b.len(), self.data_len()),
                    Err(e) => format!("{e:#}"),
                };
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * (self.dtype.bitsize() / 8)
    }
}

/// Little-endian bytes of `v` in `dtype` (F32, F16 or BF16).
pub fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The values of little-endian `bytes` in `dtype` (F32, F16 or BF16).
pub fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    use rayon::prelude::*;
    match dtype {
        Dtype::F16 => bytes.par_chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.par_chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.par_chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

/// Writes `tensors` to `path` with `metadata` (default: `{"format": "pt"}`, which older
/// `transformers` versions require), readable by everyone; fails if any tensor's bytes could
/// not be made.
pub fn write(path: &Path, tensors: Vec<(String, LazyTensor)>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let meta = metadata.unwrap_or_else(|| HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), path)
        .map_err(|e| anyhow!("{}: cannot write safetensors: {e}", path.display()))?;
    for (name, t) in &tensors {
        if let Some(e) = t.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bail!("{}: tensor `{name}`: {e}", path.display());
        }
    }
    // The crate writes through a private temporary file (mode 0600); weights are meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The largest shard `save_pretrained` writes by default (5 GB).
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Writes a model's `tensors` into `dir` as `save_pretrained` does: one `model.safetensors`, or,
/// beyond `max_shard_bytes`, shards `model-0000i-of-0000n.safetensors` of at most that many bytes
/// (a larger tensor gets a shard of its own) with `model.safetensors.index.json`. Returns the
/// files written.
pub fn write_model(dir: &Path, tensors: Vec<(String, LazyTensor)>, max_shard_bytes: u64) -> Result<Vec<String>> {
    let size = |t: &LazyTensor| safetensors::View::data_len(&t) as u64;
    let total: u64 = tensors.iter().map(|(_, t)| size(t)).sum();
    if total <= max_shard_bytes {
        write(&dir.join("model.safetensors"), tensors, None)?;
        return Ok(vec!["model.safetensors".into()]);
    }
    let mut shards: Vec<Vec<(String, LazyTensor)>> = vec![Vec::new()];
    let mut bytes = 0;
    for (name, t) in tensors {
        let b = size(&t);
        let current = shards.last_mut().expect("at least one shard");
        if !current.is_empty() && bytes + b > max_shard_bytes {
            shards.push(Vec::new());
            bytes = 0;
        }
        bytes += b;
        shards.last_mut().expect("at least one shard").push((name, t));
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut files = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        write(&dir.join(&file), shard, None)?;
        files.push(file);
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let index_name = "model.safetensors.index.json";
    std::fs::write(dir.join(index_name), serde_json::to_string_pretty(&index)?)?;
    files.push(index_name.into());
    Ok(files)
}

