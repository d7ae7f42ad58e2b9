use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use transact::model::cost::human;
use transact::prune::job::PruneJob;
use transact::prune::plan::{AttnUnit, GqaMode, TargetSpec};
use transact::prune::scorer::ScorerKind;
use transact::prune::compensate::Compensate;
use transact::prune::hidden::Axis;
use transact::prune::recover::Recovery;
use transact::prune::shots::PruneOptions;
use transact::train::{LossKind, TrainOptions};

use crate::calibrate::CalibArgs;
use crate::common::{self, Bars, OutputArgs, choice};

#[derive(Args)]
pub struct PruneArgs {
    /// GGUF file or Hugging Face model directory to prune.
    model: crate::ModelPath,
    /// Output directory: Hugging Face files and/or model.gguf, plus prune_report.json. Written
    /// to a temporary name and renamed when complete.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of non-embedding parameters to remove (0–1); attention loses the same fraction
    /// rounded up to whole heads/groups, the MLP width makes the total exact.
    #[arg(long, conflicts_with_all = ["mha_width", "mlp_width"], allow_negative_numbers = true)]
    ratio: Option<f64>,
    /// Attention width per layer after pruning (query heads × head dim); default: unchanged.
    #[arg(long)]
    mha_width: Option<usize>,
    /// SwiGLU intermediate width per layer after pruning; default: unchanged.
    #[arg(long)]
    mlp_width: Option<usize>,
    /// What attention pruning removes: whole `head`s (stock-loadable everywhere), or rotary
    /// pairs of dims inside heads (`head-dim`: original frequencies kept, so only transact's own
    /// directory format can hold the result).
    #[arg(long, default_value = "head", value_parser = choice::<AttnUnit>())]
    attn_unit: AttnUnit,
    /// Head-dim mode: the kept head dim is a multiple of this (even; e.g. 16 for kernel-friendly shapes).
    #[arg(long, default_value_t = 2)]
    head_dim_multiple: usize,
    /// Under GQA, remove whole KV groups (`groups`: smaller KV cache) or the same number of
    /// query heads in every group (`queries`: KV heads kept).
    #[arg(long, default_value = "groups", value_parser = choice::<GqaMode>())]
    gqa: GqaMode,
    /// What is pruned: `transitional` (TransAct: heads and MLP channels, hidden size kept) or
    /// `hidden` (the ablation: channels of the residual stream, scored by the L2 norm of the
    /// RMSNorm-ed hidden states; one shot, --ratio only).
    #[arg(long, default_value = "transitional", value_parser = choice::<Axis>())]
    axis: Axis,
    /// Channel/head salience.
    #[arg(long, default_value = "transact", value_parser = choice::<ScorerKind>())]
    scorer: ScorerKind,
    /// Weight α of the max term in the TransAct head score mean + α·max (default 10 / head dim).
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f64>,
    /// Number of shots K: each re-collects statistics, moves the widths one linear step toward
    /// the target, prunes and recovers (the paper uses 8; 1 = one-shot).
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Statistics from `transact calibrate` on this model, used by the first shot instead of calibrating (later shots calibrate the pruned model).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// External recovery after every shot, e.g. 'torchrun train.py --in {in} --out {out}': {in}
    /// is the pruned model as an HF directory, {out} must receive the trained one. Default: none.
    #[arg(long, conflicts_with = "recover")]
    recover_cmd: Option<String>,
    /// Built-in recovery between shots: training tokens in all (K/M/B suffixes), distilling from
    /// the input model as `transact train` does (batch 4 × 2 × 256). Shot i of K trains on
    /// p/2 + p·(i−1)/(K−1) tokens (p = TOKENS / K) at peak lr × 2i/K, as the paper splits its
    /// 1B tokens, in whole steps that add up to TOKENS rounded up to a step; one shot gets them
    /// all at --recover-lr [default: none].
    #[arg(long, value_parser = common::count)]
    recover: Option<u64>,
    /// Built-in recovery after the last shot: training tokens at --recover-lr [default: none].
    #[arg(long, value_parser = common::count)]
    final_recover: Option<u64>,
    /// Loss of the built-in recovery (kd and kd+ce distil from the input model).
    #[arg(long, default_value = "kd", value_parser = choice::<LossKind>())]
    recover_loss: LossKind,
    /// Peak learning rate of the built-in recovery (AdamW, 10 % warmup, cosine to 10 %).
    #[arg(long, default_value_t = 3e-4)]
    recover_lr: f64,
    /// Training text of the built-in recovery (as `transact train --data`).
    #[arg(long, default_value = "mix")]
    recover_data: String,
    /// Keep the distillation teacher's final hidden states in this folder (2.3 KB per training
    /// token for SmolLM2) and read them back in later runs on the same text: those compute only
    /// the teacher's LM head, with identical results [default: none].
    #[arg(long)]
    teacher_cache: Option<PathBuf>,
    /// After slicing, refit the kept columns of every o_proj and down_proj in closed form so
    /// each module's output matches the unpruned one on the calibration tokens (`ls`: ridge
    /// least squares, layer by layer on the pruned model's own inputs; costs about three forward
    /// passes of the calibration blocks and wants at least two calibration tokens per MLP channel).
    /// `auto` (the default) is `ls` where it applies and the calibration is large enough (at
    /// least 2 tokens per MLP channel), `none` otherwise: with --axis hidden or --stream, which
    /// have no compensation. `ls` cut SmolLM2's wiki perplexity 1.3–2.5× at 25–50 % removed
    /// (README's results).
    #[arg(long, default_value = "auto", value_parser = choice::<Compensate>())]
    compensate: Compensate,
    /// Continue an interrupted run after its last finished shot (same model, target, options).
    #[arg(long)]
    resume: bool,
    /// For checkpoints larger than memory: read a Hugging Face safetensors directory one decoder
    /// layer at a time (peak memory ≈ one layer in f32 plus the hidden states) and write the
    /// sliced tensors one at a time. One shot, whole heads, HF output (the default --dtype auto
    /// keeps an f16 or bf16 checkpoint in its type; shards of at most 5 GB).
    #[arg(long)]
    stream: bool,
    /// Round the MLP width to a multiple of this (e.g. 64 for kernel-friendly shapes).
    #[arg(long, default_value_t = 1)]
    mlp_multiple: usize,
    #[command(flatten)]
    calib: CalibArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(a: PruneArgs) -> Result<()> {
    let target = match (a.ratio, a.mha_width, a.mlp_width) {
        (Some(r), _, _) => TargetSpec::Ratio(r),
        (None, None, None) => bail!("give a target: --ratio R, or --mha-width W and/or --mlp-width F"),
        (None, mha, mlp) => TargetSpec::Widths { mha, mlp },
    };
    let job = PruneJob {
        model: a.model,
        device: common::device(),
        out: a.out,
        formats: a.output.format.formats(),
        dtype: a.output.dtype,
        base_model: a.output.base_model,
        force: a.output.force,
        target,
        options: PruneOptions {
            scorer: a.scorer,
            alpha: a.alpha,
            seed: a.calib.seed,
            attn_unit: a.attn_unit,
            gqa: a.gqa,
            head_dim_multiple: a.head_dim_multiple,
            shots: a.shots,
            calib: a.calib.spec(),
            calib_batch: a.calib.calib_batch,
            mlp_multiple: a.mlp_multiple,
            recover_cmd: a.recover_cmd,
            compensate: a.compensate,
            axis: a.axis,
            recover: (a.recover.is_some() || a.final_recover.is_some()).then(|| Recovery {
                tokens: a.recover.unwrap_or(0),
                final_tokens: a.final_recover.unwrap_or(0),
                data: a.recover_data,
                train: TrainOptions { loss: a.recover_loss, lr: a.recover_lr, seed: a.calib.seed, ..TrainOptions::default() },
            }),
        },
        stats: a.stats,
        resume: a.resume,
        stream: a.stream,
        held_out: true,
        teacher_cache: a.teacher_cache,
    };
    let r = job.run(&Bars::new())?;
    let (b, f) = (&r.before, &r.after);
    println!("pruned {} → {}", r.input.path, job.out.display());
    if r.options.axis == Axis::Hidden {
        println!("hidden size  {} → {} (heads and MLP widths kept)", r.before_hidden_size, r.after_hidden_size);
    }
    println!(
        "widths       mha {} ({} heads, {} KV heads), mlp {} per layer",
        r.target.widths.mha,
        r.shots.last().map_or(0, |s| s.n_heads),
        r.shots.last().map_or(0, |s| s.n_kv_heads),
        r.target.widths.mlp
    );
    println!(
        "parameters   {} → {} total, {} → {} non-embedding ({:.1}% removed)",
        human(b.params_total),
        human(f.params_total),
        human(b.params_non_embedding),
        human(f.params_non_embedding),
        100.0 * r.removed_non_embedding
    );
    println!("KV cache     {} → {} bytes/token (f32)", b.kv_bytes_per_token_f32, f.kv_bytes_per_token_f32);
    println!("FLOPs/token  {} → {} at context 2048", human(b.flops_per_token), human(f.flops_per_token));
    if let Some(h) = &r.held_out {
        println!("held-out ppl {:.1} → {:.1} (wiki, 8 × 512 tokens: the input, this model)", h.dense, h.pruned);
    }
    let held_out: Vec<String> = r
        .shots
        .iter()
        .filter_map(|s| s.held_out.as_ref().map(|h| h.last()))
        .chain(r.final_held_out_perplexity)
        .map(|p| format!("{p:.1}"))
        .collect();
    if !held_out.is_empty() {
        println!("  by shot    {} (after each shot{})", held_out.join(" → "), if r.final_recovery.is_some() { " and the final recovery" } else { "" });
    }
    for w in &r.outputs {
        println!("written      {}", w.describe());
    }
    let bytes = |pick: &dyn Fn(&str) -> bool| r.files.iter().filter(|f| pick(&f.name)).map(|f| f.bytes).sum::<u64>();
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let hf = bytes(&|n| n.ends_with(".safetensors"));
    let gguf = bytes(&|n| n.ends_with(".gguf"));
    let sizes: Vec<String> = [(hf, "safetensors"), (gguf, "GGUF")].into_iter().filter(|(b, _)| *b > 0).map(|(b, what)| format!("{} {what}", mb(b))).collect();
    println!("on disk      {} (the input: {})", sizes.join(", "), mb(transact::model::io::storage::files_on_disk(std::path::Path::new(&r.input.path)).iter().filter(|f| f.name.ends_with(".gguf") || f.name.ends_with(".safetensors")).map(|f| f.bytes).sum()));
    println!(
        "time         {:.1} s (calibrate {:.1}, prune {:.1}, compensate {:.1}, recover {:.1}, held-out {:.1}, export {:.1}); report in prune_report.json, card in README.md",
        r.seconds.total, r.seconds.calibrate, r.seconds.prune, r.seconds.compensate, r.seconds.recover, r.seconds.held_out, r.seconds.export
    );
    Ok(())
}
