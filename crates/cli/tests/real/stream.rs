//! `prune --stream` (layer by layer over the memory-mapped checkpoint) gives exactly what the
//! in-memory pipeline gives, in less memory. The 7B-scale run is the opt-in `tests/scale.rs`.

use std::path::Path;

use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::export::{ExportFormat, export};
use transact::Silent;
use transact::prune::job::PruneJob;
use transact::prune::plan::{AttnUnit, TargetSpec};

use crate::common::{model, scratch};
use crate::prune::job;

fn stream_job(src: &Path, out: &Path, stream: bool) -> PruneJob {
    let mut j = job(out, 1, None, None);
    j.model = src.to_path_buf();
    j.formats = vec![ExportFormat::Hf];
    j.target = TargetSpec::Ratio(0.5);
    j.stream = stream;
    j
}

#[test]
fn streaming_prune_writes_the_in_memory_result() {
    let d = scratch();
    let hf = d.path().join("hf");
    export(model(), &hf, ExportFormat::Hf, SaveDtype::F32, false).unwrap();
    let (mem, streamed) = (d.path().join("mem"), d.path().join("stream"));
    let rm = stream_job(&hf, &mem, false).run(&Silent).unwrap();
    let rs = stream_job(&hf, &streamed, true).run(&Silent).unwrap();
    // Same statistics (each layer sees the same hidden states), same choices, same bytes
    // (f32 source written as f16 by both paths).
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(std::fs::read(mem.join(f)).unwrap() == std::fs::read(streamed.join(f)).unwrap(), "{f} differs");
    }
    let kept = |r: &transact::prune::report::PruneReport| serde_json::to_value(&r.shots[0].kept).unwrap();
    assert_eq!(kept(&rm), kept(&rs));
    let (pm, ps) = (rm.peak_rss_bytes.unwrap(), rs.peak_rss_bytes.unwrap());
    eprintln!("peak RSS: in memory {} MB, streamed {} MB (one process: the in-memory run came first)", pm >> 20, ps >> 20);
    assert!((rs.removed_non_embedding - 0.5).abs() < 0.01);
}

#[test]
fn streaming_refuses_what_it_cannot_do_before_any_work() {
    let d = scratch();
    let hf = d.path().join("hf");
    export(model(), &hf, ExportFormat::Hf, SaveDtype::F32, false).unwrap();
    let out = d.path().join("out");
    type Case = (Box<dyn Fn(&mut PruneJob)>, &'static str);
    let cases: Vec<Case> = vec![
        (Box::new(|j| j.model = crate::common::gguf_path()), "Hugging Face safetensors directory"),
        (Box::new(|j| j.options.shots = 2), "one shot"),
        (Box::new(|j| j.options.attn_unit = AttnUnit::HeadDim), "whole heads"),
        (Box::new(|j| j.formats = vec![ExportFormat::Hf, ExportFormat::Gguf]), "`format` hf"),
        (Box::new(|j| j.dtype = SaveDtype::Q8_0), "q8_0"),
    ];
    for (change, want) in cases {
        let mut j = stream_job(&hf, &out, true);
        change(&mut j);
        let e = format!("{:#}", j.run(&Silent).unwrap_err());
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!out.exists(), "nothing is written on refusal");
    }
}
