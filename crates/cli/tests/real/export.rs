use candle_core::Device;
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::export::{ExportFormat, export};
use transact::load_model;

use crate::common::{assert_close, max_diff, model, path_str, real_tokens, run_cli, scratch};

#[test]
fn gguf_to_hf_to_gguf_round_trips() {
    let lm = model();
    let ids = real_tokens(256);
    let reference = lm.model.logits(&ids).unwrap();
    let dir = scratch();

    let hf = dir.path().join("hf");
    export(lm, &hf, ExportFormat::Hf, SaveDtype::F32, false).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(hf.join(f).exists(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["head_dim"], 64);
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["tie_word_embeddings"], true);
    let from_hf = load_model(&hf, &Device::Cpu).unwrap();
    assert_eq!(from_hf.tokenizer.encode("Hello world! 12345 it's").unwrap(), lm.tokenizer.encode("Hello world! 12345 it's").unwrap());
    assert_close("GGUF → HF", &reference, &from_hf.model.logits(&ids).unwrap());

    // HF → GGUF exercises the tokenizer rebuilt from tokenizer.json and the Q/K re-permutation.
    let gguf = dir.path().join("back.gguf");
    export(&from_hf, &gguf, ExportFormat::Gguf, SaveDtype::F32, false).unwrap();
    let back = load_model(&gguf, &Device::Cpu).unwrap();
    assert_eq!(back.tokenizer.encode("Hello world! 12345 it's").unwrap(), [19556, 905, 17, 216, 33, 34, 35, 36, 37, 357, 506]);
    assert_close("GGUF → HF → GGUF", &reference, &back.model.logits(&ids).unwrap());
}

#[test]
fn gguf_to_gguf_f32_and_lower_precisions() {
    let lm = model();
    let ids = real_tokens(128);
    let reference = lm.model.logits(&ids).unwrap();
    let dir = scratch();
    let out = dir.path().join("f32.gguf");
    export(lm, &out, ExportFormat::Gguf, SaveDtype::F32, false).unwrap();
    let back = load_model(&out, &Device::Cpu).unwrap();
    assert_eq!(back.model.config, lm.model.config);
    let (d, _) = max_diff(&reference, &back.model.logits(&ids).unwrap());
    eprintln!("GGUF → GGUF f32: max |Δlogit| = {d:.3e}");
    assert_eq!(d, 0.0, "an f32 GGUF round trip is lossless");
    // Lower precisions drift but keep the greedy choice almost everywhere.
    for dtype in [SaveDtype::F16, SaveDtype::Bf16, SaveDtype::Q8_0] {
        let out = dir.path().join(format!("{dtype:?}.gguf"));
        export(lm, &out, ExportFormat::Gguf, dtype, false).unwrap();
        let logits = load_model(&out, &Device::Cpu).unwrap().model.logits(&ids).unwrap();
        let (d, m) = max_diff(&reference, &logits);
        let agree = reference
            .argmax(1).unwrap().to_vec1::<u32>().unwrap()
            .iter()
            .zip(logits.argmax(1).unwrap().to_vec1::<u32>().unwrap())
            .filter(|(a, b)| **a == *b)
            .count();
        eprintln!("GGUF {dtype:?}: max |Δlogit| {d:.3e} (max |logit| {m:.1}), argmax agrees on {agree}/128");
        assert!(agree >= 115, "{dtype:?}: argmax agrees on only {agree}/128");
    }
}

#[test]
fn convert_cli_is_atomic_and_refuses_to_overwrite() {
    let dir = scratch();
    let gguf = crate::common::gguf_path();
    let out = dir.path().join("m.gguf");
    // q8_0 is GGUF-only: the HF export fails before anything is written.
    let hf = dir.path().join("hf");
    let (code, _, err) = run_cli(&["convert", path_str(&gguf), path_str(&hf), "--to", "hf", "--dtype", "q8_0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("q8_0"), "{err}");
    assert!(!hf.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary left behind");

    let (code, _, err) = run_cli(&["convert", path_str(&gguf), path_str(&out), "--to", "gguf", "--dtype", "q8_0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&["convert", path_str(&gguf), path_str(&out), "--to", "gguf"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
    let (code, out_text, err) = run_cli(&["inspect", path_str(&out), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out_text).unwrap();
    assert_eq!(v["stats"]["kv_bytes_per_token_f32"], 46080);
}

/// GGUF files with the other supported block types load and dequantize exactly as candle
/// dequantizes those blocks. K-quants need rows of 256: only `ffn_down` (1536 wide) qualifies
/// in this model, as in llama.cpp's own quantizer.
#[test]
fn gguf_block_types_load() {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let lm = model();
    let d = scratch();
    let src = d.path().join("f32.gguf");
    export(lm, &src, ExportFormat::Gguf, SaveDtype::F32, false).unwrap();
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let ids = real_tokens(64);
    for (down, other) in [(GgmlDType::Q4K, GgmlDType::Q4_0), (GgmlDType::Q5K, GgmlDType::Q4_0), (GgmlDType::Q6K, GgmlDType::Q8_0)] {
        let mut tensors = Vec::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let t = content.tensor(&mut f, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
            let ty = if name.contains("norm") { GgmlDType::F32 } else if name.contains("ffn_down") { down } else { other };
            tensors.push((name.clone(), QTensor::quantize(&t, ty).unwrap()));
        }
        let mut md: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        md.sort_by_key(|(k, _)| *k);
        let out = d.path().join(format!("{down:?}.gguf"));
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut std::fs::File::create(&out).unwrap(), &md, &ts).unwrap();
        let q = load_model(&out, &Device::Cpu).unwrap();
        // Same weights as dequantizing the blocks directly.
        let w = q.model.weights.layers[3].down_proj.clone();
        let want = tensors.iter().find(|(n, _)| n == "blk.3.ffn_down.weight").unwrap().1.dequantize(&Device::Cpu).unwrap();
        assert_eq!(max_diff(&w, &want).0, 0.0, "{down:?}");
        let (dl, m) = max_diff(&lm.model.logits(&ids).unwrap(), &q.model.logits(&ids).unwrap());
        eprintln!("{down:?} down + {other:?}: max |Δlogit| {dl:.3} of {m:.1}");
        assert!(dl < 0.5 * m, "{down:?}: logits drift {dl}");
    }
}

/// Beyond the shard limit the writer shards as `save_pretrained` does (index with total size and
/// weight map), and the sharded directory loads like the single file.
#[test]
fn sharded_hf_directory_writes_and_loads() {
    let lm = model();
    let d = scratch();
    let hf = d.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let w = transact::model::io::hf_write::write_hf_sharded(lm, &hf, SaveDtype::F16, 100_000_000).unwrap();
    let shards: Vec<&String> = w.files.iter().filter(|f| f.ends_with(".safetensors")).collect();
    assert_eq!(shards.len(), 3, "{:?}", w.files);
    assert_eq!(shards[0], "model-00001-of-00003.safetensors");
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut total = 0;
    for s in &shards {
        let len = std::fs::metadata(hf.join(s)).unwrap().len();
        assert!(len <= 100_000_000 + 100_000, "{s}: {len} bytes");
        let bytes = std::fs::read(hf.join(s)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        total += st.tensors().iter().map(|(_, t)| t.data().len() as u64).sum::<u64>();
        for (name, _) in st.tensors() {
            assert_eq!(index["weight_map"][&name], s.as_str(), "{name}");
        }
    }
    assert_eq!(index["metadata"]["total_size"], total);
    assert!(!hf.join("model.safetensors").exists());
    let sharded = load_model(&hf, &Device::Cpu).unwrap();
    let ids = real_tokens(64);
    assert_close("sharded f16 HF", &lm.model.logits(&ids).unwrap(), &sharded.model.logits(&ids).unwrap());
}
