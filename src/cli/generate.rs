use std::io::Write;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use candle_core::Tensor;
use clap::Args;
use transact::model::generate::Sampler;
use transact::{KvCache, Logits};

#[derive(Args)]
pub struct GenerateArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Prompt text, used as is (no chat template, no BOS unless the tokenizer asks for it).
    #[arg(long)]
    prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Softmax temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if a.temperature < 0.0 {
        bail!("--temperature must be ≥ 0, got {}", a.temperature);
    }
    let lm = super::load(&a.model)?;
    let model = &lm.model;
    let tok = &lm.tokenizer;
    let mut ids = tok.encode(&a.prompt)?;
    if tok.meta.add_bos
        && let Some(b) = tok.meta.bos
    {
        ids.insert(0, b);
    }
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let mut cache = KvCache::new(&model.config);
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let mut stream = tok.inner.decode_stream(false);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;

    let t0 = Instant::now();
    let input = Tensor::new(ids.as_slice(), &model.device)?.unsqueeze(0)?;
    let mut logits = model.forward(&input, Some(&mut cache), Logits::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut generated = 0;
    for _ in 0..a.max_tokens {
        let next = sampler.sample(&logits.squeeze(0)?.squeeze(0)?)?;
        generated += 1;
        if Some(next) == tok.meta.eos {
            break;
        }
        if let Some(text) = stream.step(next).map_err(|e| anyhow!("tokenizer: {e}"))? {
            write!(out, "{text}")?;
            out.flush()?;
        }
        if cache.len() + 1 > model.config.max_position {
            break;
        }
        let input = Tensor::new(&[next], &model.device)?.unsqueeze(0)?;
        logits = model.forward(&input, Some(&mut cache), Logits::Last)?;
    }
    writeln!(out)?;
    let decode = t1.elapsed().as_secs_f64();
    eprintln!(
        "prompt {} tokens, prefill {:.1} tok/s; generated {generated} tokens, decode {:.1} tok/s",
        ids.len(),
        ids.len() as f64 / prefill,
        generated as f64 / decode.max(1e-9)
    );
    Ok(())
}
