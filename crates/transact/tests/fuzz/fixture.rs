//! The seeds: a tiny random LLaMA (2 layers, hidden 32, GQA, a 260-token byte-level BPE) written
//! by the same writers that write real checkpoints, in several types and layouts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use transact::model::io::load::{LoadedModel, SourceFormat};
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::storage::Storage;
use transact::model::io::{gguf_write, hf_write};
use transact::model::weights::{TensorRole, Weights};
use transact::model::{LayerShape, Model, ModelConfig, RopeLayout, Tokenizer};

/// GPT-2's byte → printable character map: the alphabet of a byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).unwrap();
    }
    let mut extra = 256;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(extra).unwrap();
            printable.push(b);
            extra += 1;
        }
    }
    chars
}

/// `tokenizer.ggml.*` metadata of the tiny tokenizer: 256 bytes, three merges, one special token.
pub fn tokenizer_metadata() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    tokens.extend(["Ġt", "he", "Ġthe", "<|endoftext|>"].map(String::from));
    let mut types = vec![Value::I32(1); tokens.len()];
    types[259] = Value::I32(3);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(["Ġ t", "h e", "Ġt he"].map(String::from).to_vec())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(259)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(259)),
    ]
}

pub const VOCAB: usize = 260;

fn config(tied: bool) -> ModelConfig {
    let shape = LayerShape { n_heads: 2, n_kv_heads: 1, head_dim: 16, mlp_width: 64 };
    ModelConfig {
        name: "tiny".into(),
        hidden_size: 32,
        vocab_size: VOCAB,
        layers: vec![shape; 2],
        rope_theta: 10_000.0,
        rope_layout: RopeLayout::Adjacent,
        rms_eps: 1e-5,
        tied_embeddings: tied,
        max_position: 64,
        rope_inv_freq: None,
    }
}

/// The tiny model with seeded random weights.
pub fn model(tied: bool) -> LoadedModel {
    let cfg = config(tied);
    let mut rng = StdRng::seed_from_u64(7);
    let weights = Weights::from_roles(&cfg, |role: TensorRole| -> candle_core::Result<Tensor> {
        let shape = role.shape(&cfg);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| if role.is_norm() { 1.0 } else { rng.random::<f32>() - 0.5 }).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    })
    .unwrap();
    let md: HashMap<String, Value> = tokenizer_metadata().into_iter().collect();
    LoadedModel {
        model: Model::new(cfg, weights),
        tokenizer: Tokenizer::from_gguf(&md).unwrap(),
        path: "tiny".into(),
        format: SourceFormat::Gguf,
        gguf_tokenizer_metadata: Some(tokenizer_metadata()),
        storage: Storage::default(),
    }
}

/// The shared untied model (inputs targets score with it).
pub fn shared() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| model(false))
}

/// A scratch folder under cargo's test tmpdir, kept for the process.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// GGUF seeds: tied and untied, in f32, f16, Q8_0 and Q4_1 (rows of 32 and 64 fit their blocks).
pub fn gguf_seeds() -> &'static Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch("gguf-seeds");
        let mut seeds = Vec::new();
        for (i, (tied, dtype)) in [(true, SaveDtype::F32), (false, SaveDtype::F16), (true, SaveDtype::Q8_0), (false, SaveDtype::Q4_1)].into_iter().enumerate() {
            let p = dir.join(format!("seed{i}.gguf"));
            gguf_write::write_gguf(&model(tied), &p, dtype).unwrap();
            seeds.push(std::fs::read(&p).unwrap());
        }
        seeds
    })
}

/// A Hugging Face directory as (file name, bytes).
pub type HfDir = Vec<(String, Vec<u8>)>;

/// HF seeds: bf16 in one file, f32 in shards of ~20 KB with an index.
pub fn hf_seeds() -> &'static Vec<HfDir> {
    static S: OnceLock<Vec<HfDir>> = OnceLock::new();
    S.get_or_init(|| {
        let root = scratch("hf-seeds");
        let mut seeds = Vec::new();
        for (i, (tied, dtype, shard)) in [(true, SaveDtype::Bf16, 1u64 << 40), (false, SaveDtype::F32, 20_000)].into_iter().enumerate() {
            let dir = root.join(format!("seed{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut lm = model(tied);
            // Written from an HF-layout model, as a real HF checkpoint is.
            lm.format = SourceFormat::HfDir;
            hf_write::write_hf_sharded(&lm, &dir, dtype, shard).unwrap();
            let mut files: HfDir = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                .collect();
            files.sort();
            seeds.push(files);
        }
        seeds
    })
}
