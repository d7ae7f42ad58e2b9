use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use transact::train::{Budget, LossKind, ParamGroup, Schedule, TrainJob, TrainOptions};

use crate::common::{self, Bars, OutputArgs, choice};

#[derive(Args)]
pub struct TrainArgs {
    /// The model to train (usually a pruned one): GGUF file or Hugging Face directory.
    model: crate::ModelPath,
    /// Output directory: the trained model (Hugging Face files and/or model.gguf),
    /// train_report.json, train_log.jsonl (one line per step) and loss.png. Written to a
    /// temporary name and renamed when complete.
    #[arg(long)]
    out: PathBuf,
    /// The dense model to distil from (same tokenizer), run online without gradients.
    #[arg(long)]
    teacher: Option<crate::ModelPath>,
    /// Keep the teacher's final hidden states in this folder (2.3 KB per training token for
    /// SmolLM2) and read them back in later runs on the same text: those compute only the
    /// teacher's LM head, with identical results [default: none].
    #[arg(long)]
    teacher_cache: Option<PathBuf>,
    /// Training loss [default: kd with --teacher, ce without].
    #[arg(long, value_parser = choice::<LossKind>())]
    loss: Option<LossKind>,
    /// Weight of the KD term in kd+ce (0–1); ce gets the rest.
    #[arg(long, default_value_t = 0.5)]
    kd_weight: f64,
    /// Softmax temperature of teacher and student in the KD term (the term is scaled by T²).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Training tokens (K, M, B suffixes: 100K, 1.5M), rounded up to whole optimizer steps
    /// [default: 100K when --steps is not given].
    #[arg(long, value_parser = common::count, conflicts_with = "steps")]
    tokens: Option<u64>,
    /// Optimizer steps (each batch × seq-len × grad-accum tokens).
    #[arg(long, value_parser = common::count)]
    steps: Option<u64>,
    /// Sequences per forward/backward pass (a micro-batch; memory grows with it).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Micro-batches per optimizer step (the step sees batch × grad-accum sequences).
    #[arg(long, default_value_t = 2)]
    grad_accum: usize,
    /// Peak learning rate of AdamW (β 0.9 / 0.95, ε 1e-8).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Linear warmup, in optimizer steps [default: 10% of the steps].
    #[arg(long)]
    warmup: Option<u64>,
    /// Learning-rate schedule after warmup.
    #[arg(long, default_value = "cosine", value_parser = choice::<Schedule>())]
    schedule: Schedule,
    /// AdamW's decoupled weight decay, on matrices only (norms never decay).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the training-block order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training text: `mix` (CoQA stories + SQuAD + DROP contexts, ~440K tokens, no evaluation
    /// set), or a text file, JSONL file with a `text` field, or a folder of them. Blocks of
    /// seq-len tokens never overlap; an epoch visits each once, in a seeded order.
    #[arg(long, default_value = "mix")]
    data: String,
    /// Parameter groups to keep fixed (repeat or separate by commas).
    #[arg(long, value_parser = choice::<ParamGroup>(), value_delimiter = ',')]
    freeze: Vec<ParamGroup>,
    /// Held-out wiki perplexity (first 8 windows of 512 tokens) before training, every N steps
    /// and after the last; also plotted in loss.png [default: never].
    #[arg(long, value_parser = common::count)]
    eval_every: Option<u64>,
    /// Save a checkpoint (weights and optimizer state, f32) every N steps, in .OUT.train/ next
    /// to the output, for --resume (0: never).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Continue an interrupted run from its last checkpoint: the same settings give the same
    /// loss curve and the same final weights as an uninterrupted run.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let loss = a.loss.unwrap_or(if a.teacher.is_some() { LossKind::Kd } else { LossKind::Ce });
    let budget = match (a.tokens, a.steps) {
        (_, Some(s)) => Budget::Steps(s),
        (Some(t), None) => Budget::Tokens(t),
        (None, None) => Budget::Tokens(100_000),
    };
    let job = TrainJob {
        model: a.model,
        teacher: a.teacher,
        data: a.data,
        out: a.out,
        formats: a.output.format.formats(),
        dtype: a.output.dtype,
        base_model: a.output.base_model,
        device: common::device(),
        options: TrainOptions {
            loss,
            kd_weight: a.kd_weight,
            temperature: a.temperature,
            budget,
            batch: a.batch,
            seq_len: a.seq_len,
            grad_accum: a.grad_accum,
            lr: a.lr,
            warmup: a.warmup,
            schedule: a.schedule,
            weight_decay: a.weight_decay,
            clip: a.clip,
            seed: a.seed,
            freeze: a.freeze,
            eval_every: a.eval_every,
            checkpoint_every: (a.checkpoint_every > 0).then_some(a.checkpoint_every),
        },
        resume: a.resume,
        force: a.output.force,
        teacher_cache: a.teacher_cache,
    };
    let r = job.run(&Bars::new())?;
    println!("trained {} → {}", r.input.path, job.out.display());
    println!(
        "loss         {} · {:.4} → {:.4} (mean of the first and last 10% of steps)",
        transact::model::choice::Choice::name(r.options.loss),
        r.loss_start,
        r.loss_end
    );
    if let (Some(first), Some(last)) = (r.eval.first(), r.eval.last()) {
        println!("wiki ppl     {:.2} → {:.2} (held out: first 8 windows of 512 tokens)", first.wiki_perplexity, last.wiki_perplexity);
    }
    println!(
        "budget       {} steps × {} tokens = {} tokens of `{}` ({} tokens, {} blocks of {})",
        r.steps, r.tokens_per_step, r.tokens, r.data.source, r.data.tokens, r.data.blocks, r.data.seq_len
    );
    println!(
        "parameters   {} trained, {} frozen",
        transact::model::cost::human(r.trainable_params as u64),
        transact::model::cost::human(r.frozen_params as u64)
    );
    let roof = match (r.gemm_roof_gflops, r.roof_fraction) {
        (Some(g), Some(f)) => format!(", {:.0}% of this machine's {g:.0} GFLOP/s GEMM roof", 100.0 * f),
        _ => String::new(),
    };
    println!(
        "speed        {:.1} tokens/s = {:.0} GFLOP/s{roof}; {:.0}% of the step in the teacher; peak RSS {}",
        r.tokens_per_s,
        r.achieved_gflops,
        100.0 * r.teacher_fraction,
        r.peak_rss_bytes.map_or("n/a".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
    );
    for w in &r.written {
        println!("written      {}", w.describe());
    }
    println!(
        "time         {:.1} s ({:.1} training); report in train_report.json, curve in loss.png, card in README.md",
        r.seconds_total, r.seconds_training
    );
    Ok(())
}
