//! One micro-batch of `transact train`'s loss and gradients, for parity checks against another
//! trainer (bench/train-side-by-side.py runs PyTorch on the same tokens):
//!
//!   cargo run --release -p transact --example train_grads -- STUDENT TEACHER OUT.json \
//!       [--loss kd|ce|kd+ce] [--temperature 1] [--batch 2] [--seq-len 256] [--seed 0] [--data mix]
//!
//! Writes the token ids it drew, the loss and its parts, and the L2 norm of every tensor's
//! gradient by its Hugging Face name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use transact::model::choice::Choice;
use transact::train::text::TrainText;
use transact::train::trainer::Trainer;
use transact::train::{Budget, LossKind, TrainOptions};
use transact::{Silent, load_model};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
    };
    let positional: Vec<&String> = args.iter().take_while(|a| !a.starts_with("--")).collect();
    let [student, teacher, out] = positional[..] else {
        anyhow::bail!("usage: train_grads STUDENT TEACHER OUT.json [--loss kd] [--temperature 1] [--batch 2] [--seq-len 256] [--seed 0] [--data mix]");
    };
    let o = TrainOptions {
        loss: LossKind::parse(&flag("--loss", "kd"))?,
        temperature: flag("--temperature", "1").parse()?,
        kd_weight: flag("--kd-weight", "0.5").parse()?,
        batch: flag("--batch", "2").parse()?,
        seq_len: flag("--seq-len", "256").parse()?,
        seed: flag("--seed", "0").parse()?,
        grad_accum: 1,
        budget: Budget::Steps(1),
        ..Default::default()
    };
    o.check()?;
    let (s, t) = (load_model(&PathBuf::from(student), &Device::Cpu)?, load_model(&PathBuf::from(teacher), &Device::Cpu)?);
    let text = TrainText::load(&s.tokenizer, &flag("--data", "mix"), o.seq_len, Some(&t.model), o.seed, &Silent)?;
    let tokens: Vec<Vec<u32>> = text.sequences(o.seed, 0, o.batch).chunks(o.seq_len).map(<[u32]>::to_vec).collect();
    let teacher = transact::train::Teacher::new(&t.model);
    let mut trainer = Trainer::new(&s.model, Some(&teacher), &text, &o)?;
    let m = trainer.accumulate(0, 1.0)?;
    let norms: BTreeMap<String, f64> = trainer
        .opt
        .params
        .iter()
        .map(|p| (p.role.hf_name(), p.grad.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt()))
        .collect();
    let report = serde_json::json!({
        "loss_kind": o.loss.name(), "temperature": o.temperature, "kd_weight": o.kd_weight,
        "tokens": tokens, "loss": m.loss, "kd": m.kd, "ce": m.ce,
        "seconds": {"teacher": m.teacher_seconds, "forward": m.forward_seconds, "backward": m.backward_seconds},
        "grad_norms": norms,
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("{out}: cannot write"))?;
    eprintln!("loss {:.6} ({} tensors' gradient norms) → {out}", m.loss, trainer.opt.params.len());
    Ok(())
}
