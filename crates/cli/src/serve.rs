use anyhow::Result;
use clap::Args;
use transact::{KvDtype, WeightDtype};
use transact_server::ServeOptions;

use crate::common::{self, choice};

#[derive(Args)]
pub struct ServeArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Address to listen on; the default takes connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port; 0 picks a free one (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 request (else 401). Also read from
    /// the TRANSACT_API_KEY environment variable, which keeps it out of `ps`.
    #[arg(long, env = "TRANSACT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences decoded together in one step at most (continuous batching).
    #[arg(long, default_value_t = 16, value_parser = common::at_least_one)]
    max_batch: usize,
    /// Sequences waiting for a place in the batch at most; more get 429.
    #[arg(long, default_value_t = 64, value_parser = common::at_least_one)]
    max_queue: usize,
    /// Tokens per sequence (prompt and generated) at most; default and cap: the model's context.
    #[arg(long, value_parser = common::at_least_one)]
    ctx: Option<usize>,
    /// Name listed by /v1/models and returned in responses (default: the model file's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Request bodies larger than this many bytes get 400.
    #[arg(long, default_value_t = 4 << 20, value_parser = common::at_least_one)]
    max_body_bytes: usize,
    /// Weight type to run in, converted at load time (q8_0 decodes fastest on the CPU).
    #[arg(long, default_value = "f32", value_parser = choice::<WeightDtype>())]
    dtype: WeightDtype,
    /// KV cache type (f16 halves its memory; q8 is CPU only, ~0.27 of f32).
    #[arg(long, default_value = "f32", value_parser = choice::<KvDtype>())]
    kv_dtype: KvDtype,
}

pub fn run(a: ServeArgs) -> Result<()> {
    common::check_kv_dtype(a.kv_dtype)?;
    let lm = common::load(&a.model)?;
    let model = match a.dtype {
        WeightDtype::F32 => lm.model.clone(),
        dt => lm.model.with_weight_dtype(dt)?,
    }
    .with_kv_dtype(a.kv_dtype);
    let name = a.model_name.unwrap_or_else(|| {
        let p = a.model.components().next_back().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        p.strip_suffix(".gguf").map(str::to_string).unwrap_or(p)
    });
    let ctx = a.ctx.unwrap_or(model.config.max_position).min(model.config.max_position);
    let options = ServeOptions {
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        ctx,
        model_name: name.clone(),
        max_body_bytes: a.max_body_bytes,
    };
    let auth = if options.api_key.is_some() { "an API key" } else { "no API key" };
    transact_server::serve(model, lm.tokenizer, options, |addr| {
        eprintln!("serving {name} on http://{addr}/v1 (context {ctx} tokens, batch ≤ {}, queue ≤ {}, {auth})", a.max_batch, a.max_queue);
    })?;
    eprintln!("stopped");
    Ok(())
}
