//! Safetensors: memory-mapped reading (single file or sharded with an index) and lazy writing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;

/// The tensors of one checkpoint, across shards.
pub struct SafetensorsFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
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
            // SAFETY: read-only mapping of a file we do not modify.
            let st = unsafe { MmapedSafetensors::new(&path) }
                .map_err(|e| anyhow!("{}: invalid safetensors file: {}", path.display(), super::msg(e)))?;
            for (name, _) in st.tensors() {
                index.insert(name, files.len());
            }
            files.push((path, st));
        }
        Ok(Self { dir: dir.to_path_buf(), files, index })
    }

    /// The file that holds `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Loads `name` as f32 after checking its dtype and shape.
    pub fn load_f32(&self, name: &str, expected: &[usize], device: &Device) -> Result<Tensor> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}` in the safetensors files", self.dir.display()))?;
        let (path, st) = &self.files[i];
        let p = path.display();
        let view = st.get(name).map_err(|e| anyhow!("{p}: tensor `{name}`: {}", super::msg(e)))?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("{p}: tensor `{name}` has unsupported dtype {:?} (supported: F32, F16, BF16)", view.dtype());
        }
        if view.shape() != expected {
            bail!("{p}: tensor `{name}` has shape {:?} but config.json implies {expected:?}", view.shape());
        }
        let t = st.load(name, device).map_err(|e| anyhow!("{p}: tensor `{name}`: {}", super::msg(e)))?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// An f32 tensor that converts to the file dtype only when the writer asks for its bytes, so an
/// export holds one converted tensor at a time.
pub struct LazyView {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl LazyView {
    pub fn new(tensor: Tensor, dtype: Dtype) -> Result<Self> {
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("safetensors export supports f32, f16 and bf16, not {dtype:?}");
        }
        let shape = tensor.dims().to_vec();
        Ok(Self { tensor: tensor.to_dtype(DType::F32)?, dtype, shape })
    }
}

impl safetensors::View for LazyView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Export tensors are CPU f32, checked in `new`; flattening cannot fail for them.
        let v: Vec<f32> = self
            .tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("LazyView holds a CPU f32 tensor");
        Cow::Owned(encode(&v, self.dtype))
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * (self.dtype.bitsize() / 8)
    }
}

/// Little-endian bytes of `v` in `dtype` (F32, F16 or BF16).
pub(crate) fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The values of little-endian `bytes` in `dtype` (F32, F16 or BF16).
pub(crate) fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

/// Writes tensors with the `{"format": "pt"}` metadata older `transformers` versions require.
pub fn write(path: &Path, tensors: Vec<(String, LazyView)>) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), path)
        .map_err(|e| anyhow!("{}: cannot write safetensors: {e}", path.display()))?;
    // The crate writes through a private temporary file (mode 0600); weights are meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}
