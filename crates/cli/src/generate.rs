use std::io::Write;

use anyhow::Result;
use clap::Args;
use transact::model::generate::{Finish, GenerateOptions, generate, prompt_ids};
use transact::model::sample::Sampler;
use transact::{KvDtype, WeightDtype};

use crate::common::{self, choice};

#[derive(Args)]
pub struct GenerateArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Prompt text, used as is (no chat template, no BOS unless the tokenizer asks for it).
    #[arg(long)]
    prompt: String,
    /// Maximum number of new tokens (at least 1).
    #[arg(long, default_value_t = 64, value_parser = common::at_least_one)]
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
    /// Stop before this text (repeatable); generation also stops at the end-of-sequence token.
    #[arg(long)]
    stop: Vec<String>,
    /// Weight type to run in, converted at load time. q8_0 decodes fastest on the CPU
    /// (`transact bench --dtype` measures each and its drift).
    #[arg(long, default_value = "f32", value_parser = choice::<WeightDtype>())]
    dtype: WeightDtype,
    /// KV cache type: f16 halves the cache's memory at a small logit drift; q8 (CPU only) stores
    /// 8-bit integers with one scale per key or value vector, ~0.27 of f32.
    #[arg(long, default_value = "f32", value_parser = choice::<KvDtype>())]
    kv_dtype: KvDtype,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed)?;
    common::check_kv_dtype(a.kv_dtype)?;
    let lm = common::load(&a.model)?;
    let converted = match a.dtype {
        WeightDtype::F32 => lm.model.clone(),
        dt => lm.model.with_weight_dtype(dt)?,
    };
    let model = &converted.with_kv_dtype(a.kv_dtype);
    let ids = prompt_ids(&lm.tokenizer, &a.prompt)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let options = GenerateOptions { max_tokens: a.max_tokens, stop_at_eos: true, stop: a.stop };
    let g = generate(model, &lm.tokenizer, &ids, &options, &mut sampler, |text| {
        write!(out, "{text}")?;
        out.flush()?;
        Ok(())
    })?;
    writeln!(out)?;
    eprintln!(
        "prompt {} tokens, prefill {:.1} tok/s; generated {} tokens, decode {:.1} tok/s; stopped: {}",
        g.prompt_tokens,
        g.prompt_tokens as f64 / g.prefill_seconds,
        g.tokens.len(),
        (g.tokens.len().saturating_sub(1)) as f64 / g.decode_seconds.max(1e-9),
        match g.finish {
            Finish::Eos => "end of sequence",
            Finish::Stop => "stop text",
            Finish::Length => "--max-tokens",
            Finish::Context => "context full",
        }
    );
    Ok(())
}
