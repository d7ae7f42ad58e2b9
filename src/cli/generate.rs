use std::io::Write;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use transact::KvDtype;
use transact::model::generate::{Sampler, generate};
use transact::model::linear::WeightDtype;

#[derive(Args)]
pub struct GenerateArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Prompt text, used as is (no chat template, no BOS unless the tokenizer asks for it).
    #[arg(long)]
    prompt: String,
    /// Maximum number of new tokens (at least 1).
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one)]
    max_tokens: usize,
    /// Softmax temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this mass.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight type to run in (f32, f16, bf16, q8_0); converted at load time. q8_0 decodes
    /// fastest on the CPU (`transact bench --dtype` measures each and its drift).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// KV cache type (f32, f16, q8): f16 halves the cache's memory at a small logit drift; q8
    /// (CPU only) stores 8-bit integers with one scale per key or value vector, ~0.27 of f32.
    #[arg(long, default_value = "f32")]
    kv_dtype: KvDtype,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if a.temperature < 0.0 {
        bail!("--temperature must be ≥ 0, got {}", a.temperature);
    }
    super::check_kv_dtype(a.kv_dtype)?;
    let lm = super::load(&a.model)?;
    let converted = match a.dtype {
        WeightDtype::F32 => lm.model.clone(),
        dt => lm.model.with_weight_dtype(dt)?,
    };
    let model = &converted.with_kv_dtype(a.kv_dtype);
    let tok = &lm.tokenizer;
    let mut ids = tok.encode(&a.prompt)?;
    if tok.meta.add_bos
        && let Some(b) = tok.meta.bos
    {
        ids.insert(0, b);
    }
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let mut stream = tok.inner.decode_stream(false);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let t0 = Instant::now();
    let mut first: Option<f64> = None;
    let generated = generate(model, &ids, a.max_tokens, &mut sampler, tok.meta.eos, |id| {
        // The first token arrives after the prefill: time it separately from decoding.
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if Some(id) != tok.meta.eos
            && let Some(text) = stream.step(id).map_err(|e| anyhow!("tokenizer: {e}"))?
        {
            write!(out, "{text}")?;
            out.flush()?;
        }
        Ok(())
    })?;
    let prefill = first.unwrap_or(0.0);
    let decode = t0.elapsed().as_secs_f64() - prefill;
    writeln!(out)?;
    eprintln!(
        "prompt {} tokens, prefill {:.1} tok/s; generated {} tokens, decode {:.1} tok/s",
        ids.len(),
        ids.len() as f64 / prefill,
        generated.len(),
        (generated.len().saturating_sub(1)) as f64 / decode.max(1e-9)
    );
    Ok(())
}
