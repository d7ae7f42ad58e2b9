//! Opt-in scale test (not in the default suite; needs ~21 GB of free disk and ~10 minutes):
//!
//!     cargo test --release --test scale -- --ignored --nocapture
//!
//! Generates a LLaMA-2-7B-shaped checkpoint (32 layers, hidden 4096, 32 heads, MLP 11008) in f16
//! with random weights (~13.8 GB; the vocabulary is SmolLM2's 49152 so the real tokenizer and
//! calibration text can drive it), then runs `transact prune --stream` on 8 × 128 calibration
//! tokens and checks that the process peaked at ≤ 4 GB resident while the checkpoint is 13.8 GB.
//! Random weights say nothing about quality; this is about memory and time only.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use safetensors::Dtype;
use transact::data::corpus;
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::export::{ExportFormat, export};

const LAYERS: usize = 32;
const HIDDEN: usize = 4096;
const HEADS: usize = 32;
const MLP: usize = 11008;
const VOCAB: usize = 49152;
const MAX_RSS: u64 = 4_000_000_000;

/// An f16 tensor of uniform noise (std 0.02, like an initialised LLaMA) or of ones (norms),
/// generated when the writer asks for it: one tensor in memory at a time.
struct Random {
    shape: Vec<usize>,
    seed: u64,
    ones: bool,
}

impl safetensors::View for Random {
    fn dtype(&self) -> Dtype {
        Dtype::F16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        if self.ones {
            return Cow::Owned(half::f16::ONE.to_le_bytes().repeat(n));
        }
        let a = 0.02 * 3f32.sqrt();
        let mut s = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            // xorshift64*: plenty for weights whose values do not matter.
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            out.extend(half::f16::from_f32(a * (2.0 * u - 1.0)).to_le_bytes());
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        2 * self.shape.iter().product::<usize>()
    }
}

fn write_checkpoint(dir: &Path) {
    // Tokenizer files from the real model's HF export; config.json for the 7B shape.
    let gguf = corpus::assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "{} is missing: run scripts/fetch-assets.sh", gguf.display());
    let small = dir.with_extension("small");
    let lm = transact::load_model(&gguf, &candle_core::Device::Cpu).unwrap();
    export(&lm, &small, ExportFormat::Hf, SaveDtype::F16, true).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(small.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(small.join("config.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&small).unwrap();
    for (k, v) in [
        ("hidden_size", HIDDEN),
        ("intermediate_size", MLP),
        ("num_hidden_layers", LAYERS),
        ("num_attention_heads", HEADS),
        ("num_key_value_heads", HEADS),
        ("head_dim", HIDDEN / HEADS),
        ("vocab_size", VOCAB),
        ("max_position_embeddings", 4096),
    ] {
        config[k] = v.into();
    }
    config["tie_word_embeddings"] = false.into();
    config["rope_theta"] = 10000.0.into();
    config["torch_dtype"] = "float16".into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut tensors: Vec<(String, Random)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let ones = shape.len() == 1;
        let seed = tensors.len() as u64 + 1;
        tensors.push((name, Random { shape, seed, ones }));
    };
    add("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]);
    add("lm_head.weight".into(), vec![VOCAB, HIDDEN]);
    add("model.norm.weight".into(), vec![HIDDEN]);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![HIDDEN]);
        add(format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]);
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            add(format!("{p}.self_attn.{m}.weight"), vec![HIDDEN, HIDDEN]);
        }
        add(format!("{p}.mlp.gate_proj.weight"), vec![MLP, HIDDEN]);
        add(format!("{p}.mlp.up_proj.weight"), vec![MLP, HIDDEN]);
        add(format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, MLP]);
    }
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
#[ignore = "opt-in: ~21 GB of disk and ~10 minutes; run with --ignored"]
fn stream_prunes_a_7b_shaped_checkpoint_in_4_gb() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = tmp.path().join("llama2-7b-shaped");
    let t = Instant::now();
    write_checkpoint(&src);
    let size = std::fs::metadata(src.join("model.safetensors")).unwrap().len();
    eprintln!("generated {:.2} GB in {:.0} s", size as f64 / 1e9, t.elapsed().as_secs_f64());
    let out = tmp.path().join("pruned");
    let t = Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_transact"))
        .args(["prune", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--ratio", "0.5", "--stream"])
        .args(["--samples", "8", "--seq-len", "128", "--calib-batch", "8", "--dtype", "f16"])
        .status()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(status.success(), "prune --stream failed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prune_report.json")).unwrap()).unwrap();
    let rss = report["peak_rss_bytes"].as_u64().unwrap();
    // Beyond 5 GB the output is sharded as `save_pretrained` shards it.
    let out_size: u64 = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(out.join("model.safetensors.index.json").exists(), "a 7 GB output is sharded");
    eprintln!(
        "prune --stream: {wall:.0} s wall (calibrate+choose {:.0} s, write {:.0} s), peak RSS {:.2} GB, \
         output {:.2} GB, {:.1}% of non-embedding parameters removed",
        report["seconds"]["calibrate"].as_f64().unwrap(),
        report["seconds"]["export"].as_f64().unwrap(),
        rss as f64 / 1e9,
        out_size as f64 / 1e9,
        100.0 * report["removed_non_embedding"].as_f64().unwrap()
    );
    assert!(rss <= MAX_RSS, "peak RSS {rss} bytes exceeds {MAX_RSS}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let w = &report["target"]["widths"];
    assert_eq!(config["intermediate_size"], w["mlp"]);
    assert_eq!(config["num_attention_heads"].as_u64().unwrap() * 128, w["mha"].as_u64().unwrap());
}
