//! Safetensors: memory-mapped reading (single file or sharded with an index) and lazy writing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};
use transact_kernels::mmap::Mapped;

/// One mapped file: its bytes, where its data starts, and its header.
struct File {
    path: PathBuf,
    map: Mapped,
    data_start: usize,
    header: Metadata,
}

impl File {
    fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let map = Mapped::open(path).with_context(|| format!("{p}: cannot open"))?;
        // Parses the header and checks every tensor's byte range against the file, once.
        let (n, header) = SafeTensors::read_metadata(&map).map_err(|e| anyhow!("{p}: invalid safetensors file: {e}"))?;
        Ok(Self { path: path.to_path_buf(), map, data_start: 8 + n, header })
    }

    /// The tensor `name` as stored (its bytes in place).
    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let p = self.path.display();
        let info = self.header.info(name).ok_or_else(|| anyhow!("{p}: missing tensor `{name}`"))?;
        let (lo, hi) = info.data_offsets;
        let bytes = &self.map[self.data_start + lo..self.data_start + hi];
        TensorView::new(info.dtype, info.shape.clone(), bytes).map_err(|e| anyhow!("{p}: tensor `{name}`: {e}"))
    }
}

/// The tensors of one checkpoint, across shards.
pub struct SafetensorsFiles {
    dir: PathBuf,
    files: Vec<File>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let p = index_path.display();
            let text = std::fs::read_to_string(&index_path).with_context(|| format!("{p}: cannot read"))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{p}: {e}"))?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| anyhow!("{p}: missing object `weight_map`"))?;
            let mut files: Vec<String> =
                map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json found",
                dir.display()
            );
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(&path)?;
            for name in file.header.tensors().into_keys() {
                index.insert(name, files.len());
            }
            files.push(file);
        }
        Ok(Self { dir: dir.to_path_buf(), files, index })
    }

    /// The file that holds `name`, and `name` as stored there.
    pub fn view(&self, name: &str) -> Result<(&Path, TensorView<'_>)> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}` in the safetensors files", self.dir.display()))?;
        let f = &self.files[i];
        Ok((&f.path, f.view(name)?))
    }

    /// The file that holds `name`.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path.as_path())
    }

    /// Loads `name` as f32 after checking its dtype and shape.
    pub fn load_f32(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor> {
        let (path, view) = self.view(name)?;
        let p = path.display();
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("{p}: tensor `{name}` has unsupported dtype {:?} (supported: F32, F16, BF16)", view.dtype());
        }
        if view.shape() != expected {
            bail!("{p}: tensor `{name}` has shape {:?} but config.json implies {expected:?}", view.shape());
        }
        let t = view.load(device).map_err(|e| anyhow!("{p}: tensor `{name}`: {}", super::msg(e)))?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// Runs `f` on the tensor `name` of the file `path`, which is mapped for this call only: its pages
/// leave the process's resident memory on return, so a checkpoint larger than memory can be read
/// one tensor at a time.
pub fn with_tensor<R>(path: &Path, name: &str, f: impl FnOnce(&TensorView) -> R) -> Result<R> {
    let file = File::open(path)?;
    Ok(f(&file.view(name)?))
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
    match dtype {
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
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

