//! GGUF (v2/v3, `llama` architecture) → f32 model, using candle's GGUF reader.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use super::storage::{Storage, ggml_bytes};
use crate::config::{LayerShape, ModelConfig, RopeLayout};
use crate::tokenizer::Tokenizer;
use crate::weights::{TensorRole, Weights};

/// Tensor types we dequantize at load (all to f32).
pub const SUPPORTED_TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Any integer metadata value as u64.
fn as_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => u64::try_from(*x).ok()?,
        Value::U16(x) => *x as u64,
        Value::I16(x) => u64::try_from(*x).ok()?,
        Value::U32(x) => *x as u64,
        Value::I32(x) => u64::try_from(*x).ok()?,
        Value::U64(x) => *x,
        Value::I64(x) => u64::try_from(*x).ok()?,
        _ => return None,
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => as_u64(other).map(|x| x as f64),
    }
}

struct Meta<'a>(&'a HashMap<String, Value>);

impl Meta<'_> {
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(|x| Some(x as usize))
                .ok_or_else(|| anyhow!("metadata `{key}` is not an unsigned integer")),
        }
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| anyhow!("missing metadata `{key}`"))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v).map(Some).ok_or_else(|| anyhow!("metadata `{key}` is not a number")),
        }
    }

    /// A scalar for every layer, or an array with one value per layer (llama.cpp allows both).
    fn per_layer(&self, key: &str, n_layers: usize) -> Result<Option<Vec<usize>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                if a.len() != n_layers {
                    bail!("metadata `{key}` has {} entries for {n_layers} layers", a.len());
                }
                a.iter()
                    .map(|v| as_u64(v).map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| anyhow!("metadata `{key}` holds a non-integer"))
            }
            Some(_) => Ok(Some(vec![self.require_usize(key)?; n_layers])),
        }
    }
}

/// The model config described by GGUF metadata.
pub fn config_from_metadata(md: &HashMap<String, Value>) -> Result<ModelConfig> {
    let m = Meta(md);
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| anyhow!("missing metadata `general.architecture`"))?;
    if arch != "llama" {
        bail!("unsupported architecture `{arch}`: only `llama` models are supported");
    }
    if let Some(Value::String(t)) = md.get("llama.rope.scaling.type")
        && t != "none"
    {
        bail!("RoPE scaling `{t}` is not supported");
    }
    let hidden = m.require_usize("llama.embedding_length")?;
    let n_layers = m.require_usize("llama.block_count")?;
    // Bounded before the per-layer vectors are allocated from it.
    if !(1..=crate::config::MAX_LAYERS).contains(&n_layers) {
        bail!("metadata `llama.block_count` is {n_layers} (1 to {})", crate::config::MAX_LAYERS);
    }
    let heads = m
        .per_layer("llama.attention.head_count", n_layers)?
        .ok_or_else(|| anyhow!("missing metadata `llama.attention.head_count`"))?;
    let kv_heads = m.per_layer("llama.attention.head_count_kv", n_layers)?.unwrap_or_else(|| heads.clone());
    let ffn = m
        .per_layer("llama.feed_forward_length", n_layers)?
        .ok_or_else(|| anyhow!("missing metadata `llama.feed_forward_length`"))?;
    if let Some(h) = heads.iter().find(|&&h| h == 0 || h > hidden) {
        bail!("metadata `llama.attention.head_count` is {h} (1 to the embedding length {hidden})");
    }
    let head_dim = match m.usize("llama.attention.key_length")? {
        Some(d) => d,
        None => hidden / heads[0],
    };
    if let Some(dv) = m.usize("llama.attention.value_length")?
        && dv != head_dim
    {
        bail!("key length {head_dim} differs from value length {dv}; this is not supported");
    }
    if let Some(rot) = m.usize("llama.rope.dimension_count")?
        && rot != head_dim
    {
        bail!("partial rotary embedding ({rot} of {head_dim} dims) is not supported");
    }
    let vocab = match m.usize("llama.vocab_size")? {
        Some(v) => v,
        None => md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.len())
            .ok_or_else(|| anyhow!("missing metadata `llama.vocab_size` and no tokenizer tokens"))?,
    };
    let layers = (0..n_layers)
        .map(|l| LayerShape { n_heads: heads[l], n_kv_heads: kv_heads[l], head_dim, mlp_width: ffn[l] })
        .collect();
    Ok(ModelConfig {
        name: md
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".into()),
        hidden_size: hidden,
        vocab_size: vocab,
        layers,
        rope_theta: m.f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
        rope_layout: RopeLayout::Adjacent,
        rms_eps: m
            .f64("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| anyhow!("missing metadata `llama.attention.layer_norm_rms_epsilon`"))?,
        tied_embeddings: false, // decided by the presence of `output.weight`
        max_position: m.usize("llama.context_length")?.unwrap_or(4096),
        rope_inv_freq: None,
    })
}

/// Every tensor's bytes lie inside the file, start at the file's alignment and overlap no other
/// tensor's: a header that lies about a type, a shape or an offset would otherwise read its
/// neighbours' bytes as weights (llama.cpp checks the same). `alignment` is the one the header
/// scan validated.
pub fn check_tensor_extents(content: &Content, file_len: u64, alignment: u64) -> Result<()> {
    let mut spans = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
            bail!("tensor `{name}` has unsupported type {:?} (supported: {:?})", info.ggml_dtype, SUPPORTED_TYPES);
        }
        let dims = info.shape.dims();
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| n <= file_len.saturating_mul(8))
            .ok_or_else(|| anyhow!("tensor `{name}` has shape {dims:?}, more values than the file can hold"))?;
        let block = info.ggml_dtype.block_size() as u64;
        let row = dims.last().copied().unwrap_or(1) as u64;
        if !row.is_multiple_of(block) {
            bail!("tensor `{name}` has rows of {row} values, not a multiple of its {:?} block of {block}", info.ggml_dtype);
        }
        if !info.offset.is_multiple_of(alignment) {
            bail!("tensor `{name}` starts at offset {}, not a multiple of the alignment {alignment}", info.offset);
        }
        let start = content.tensor_data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(ggml_bytes(info.ggml_dtype, elements)));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => spans.push((start, end, name.as_str())),
            _ => bail!("tensor `{name}` ({:?}, shape {dims:?}) extends beyond the end of the file ({file_len} bytes)", info.ggml_dtype),
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            bail!("tensor `{}` overlaps tensor `{}` (its type, shape or offset in the header is wrong)", w[1].2, w[0].2);
        }
        // Writers pad each tensor to the alignment and no more: a larger gap means a type or
        // shape smaller than the bytes (the tensor would read part of them) or a moved offset.
        if w[1].0 - w[0].1 >= alignment {
            bail!("{} unused bytes lie between tensor `{}` and tensor `{}` (a type, shape or offset in the header is wrong)", w[1].0 - w[0].1, w[0].2, w[1].2);
        }
    }
    Ok(())
}

/// Every tensor of the file is one the model uses: a `blk.N` tensor beyond `block_count`, or one
/// this loader does not know (llama.cpp's `rope_freqs`, say), means the file describes another
/// model than the metadata (llama.cpp refuses such files too: "wrong number of tensors").
fn check_tensor_set(content: &Content, config: &ModelConfig) -> Result<()> {
    let used: HashSet<String> = TensorRole::all(config).into_iter().map(|r| r.gguf_name()).collect();
    let mut missing: Vec<&String> = used.iter().filter(|n| !content.tensor_infos.contains_key(*n)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        bail!("missing tensor `{name}`");
    }
    let mut unused: Vec<&String> = content.tensor_infos.keys().filter(|n| !used.contains(*n)).collect();
    unused.sort();
    match unused.first() {
        None => Ok(()),
        Some(first) => bail!(
            "{} tensor(s) the model does not use, first `{first}` (metadata says {} layers{}); the header describes another model",
            unused.len(),
            config.n_layers(),
            if config.tied_embeddings { ", tied embeddings" } else { "" }
        ),
    }
}

pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// The file's `tokenizer.*` metadata, copied verbatim when exporting GGUF.
    pub tokenizer_metadata: Vec<(String, Value)>,
    pub storage: Storage,
}

/// Loads a GGUF file, each tensor dequantized to f32 once. The file is read, not mapped: a loader
/// copies every tensor anyway, and a file truncated while it is read then fails with an error
/// instead of a SIGBUS.
pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let p = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
    let len = file.metadata().with_context(|| format!("{p}: cannot open"))?.len();
    load_from(&mut BufReader::new(file), len, device).map_err(|e| anyhow!("{p}: {e}"))
}

/// [`load`] from any reader of a GGUF file of `len` bytes (the fuzz targets feed bytes); errors
/// name no file.
pub fn load_from<R: Read + Seek>(reader: &mut BufReader<R>, len: u64, device: &Device) -> Result<GgufModel> {
    let facts = super::gguf_header::scan(reader, len).map_err(|e| anyhow!("invalid GGUF header: {e}"))?;
    // candle parses the header from memory: on a file it would ask the OS for its position at
    // every one of the ~100k tokenizer strings.
    let mut header = vec![0u8; facts.header_bytes as usize];
    reader.rewind()?;
    reader.read_exact(&mut header)?;
    let content = Content::read(&mut Cursor::new(&header)).map_err(|e| anyhow!("invalid GGUF header: {}", super::msg(e)))?;
    drop(header);
    check_tensor_extents(&content, len, facts.alignment)?;
    let mut config = config_from_metadata(&content.metadata)?;
    config.tied_embeddings = !content.tensor_infos.contains_key("output.weight");
    config.validate().map_err(|e| anyhow!("{e}"))?;
    check_tensor_set(&content, &config)?;
    let tokenizer = Tokenizer::from_gguf(&content.metadata)?;
    tokenizer.check_fits(config.vocab_size)?;

    let weights = Weights::from_roles(&config, |role: TensorRole| {
        let name = role.gguf_name();
        let info = &content.tensor_infos[&name]; // present: check_tensor_set
        let expected = role.shape(&config);
        if info.shape.dims() != expected.as_slice() {
            bail!("tensor `{name}` has shape {:?} but the metadata implies {:?}", info.shape.dims(), expected);
        }
        let q = info
            .read(reader, content.tensor_data_offset, device)
            .map_err(|e| anyhow!("tensor `{name}`: cannot read its bytes ({}); did the file change while it was read?", super::msg(e)))?;
        crate::finite::check_stored(q.dtype(), &q.data()?, &name, expected.last().copied().unwrap_or(1))?;
        q.dequantize(device).map_err(|e| anyhow!("tensor `{name}`: {}", super::msg(e)))
    })?;
    let tokenizer_metadata = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let storage = Storage::of_gguf(&content, &config);
    Ok(GgufModel { config, weights, tokenizer, tokenizer_metadata, storage })
}
