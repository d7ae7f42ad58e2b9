//! `transact bench` end to end, once, in its cheapest setting: what the JSON report holds.

use crate::common::{gguf_path, path_str, run_cli, scratch};

/// Two models (here the same file twice) in q8_0 with the two narrow KV types: four columns
/// measured side by side, the 8-bit cache's bytes 68/128 of the f16 one's (64 bytes and a
/// 4-byte scale per vector, against 128), drift for every column, and the second model's
/// speedups next to the ideal ones.
#[test]
fn bench_reports_each_weight_and_kv_type() {
    let d = scratch();
    let (gguf, json) = (gguf_path(), d.path().join("bench.json"));
    let args = ["bench", path_str(&gguf), "--vs", path_str(&gguf), "--dtype", "q8_0", "--kv-dtype", "f16,q8", "--repeats", "1", "--json", path_str(&json)];
    let (code, table, err) = run_cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("decode @1024 tok/s") && table.contains("q8_0 KV f16") && table.contains("q8_0 KV q8"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let models = v["models"].as_array().unwrap();
    let kv: Vec<&str> = models.iter().map(|m| m["kv_dtype"].as_str().unwrap()).collect();
    assert_eq!(kv, ["f16", "q8", "f16", "q8"]);
    for pair in models.chunks(2) {
        assert_eq!(68 * pair[0]["kv_bytes_per_token"].as_u64().unwrap(), 128 * pair[1]["kv_bytes_per_token"].as_u64().unwrap());
    }
    for m in models {
        assert!(m["drift_vs_f32"]["max_abs"].as_f64().unwrap() > 0.0, "{m}");
        for d in m["decode"].as_array().unwrap() {
            assert!(d["tokens_per_s"].as_f64().unwrap() > 0.0 && d["bandwidth_roof_fraction"].as_f64().unwrap() > 0.0, "{d}");
        }
    }
    let speedups = v["speedups_vs_first_model"].as_array().unwrap();
    let decode: Vec<_> = speedups.iter().filter(|s| s["decode_context"].is_u64()).collect();
    assert_eq!(decode.len(), 4);
    // The same file against itself: the ideal speedup is exactly 1.
    assert!(decode.iter().all(|s| s["ideal"].as_f64() == Some(1.0) && s["speedup"].as_f64().unwrap() > 0.0), "{decode:?}");
}
