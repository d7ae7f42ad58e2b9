//! Hot kernels at the bundled model's shapes (SmolLM2-135M: hidden 576, MLP 1536, 9 query and
//! 3 KV heads of 64, vocab 49152). Random weights: speed does not depend on the values.
//! `cargo bench --bench kernels`; CI only checks that this compiles (`cargo bench --no-run`).

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use transact_model::choice::Choice;
use transact_model::config::RopeLayout;
use transact_model::kv_cache::{HostKv, KvDtype};
use transact_model::linear::{WeightDtype, convert, linear};
use transact_model::rope::RopeTables;

const HIDDEN: usize = 576;
const MLP: usize = 1536;
const VOCAB: usize = 49152;

/// Runs `f` on a rayon worker, as `Model::forward` runs a pass: from the calling thread, every
/// parallel region would first park this thread and wake it when done, which at decode sizes
/// made a Q8_0 GEMV take ~1.3× as long on two threads and over 2× on one (`bench/NOTES.md`).
fn on_worker(f: impl FnOnce() + Send) {
    rayon::scope(|_| f())
}

fn randn(shape: (usize, usize)) -> Tensor {
    Tensor::randn(0f32, 0.02, shape, &Device::Cpu).expect("random tensor")
}

/// Decode: one activation row times each matrix shape, in every weight type.
fn gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv");
    for (name, n, k) in [("gate_up", MLP, HIDDEN), ("down", HIDDEN, MLP), ("lm_head", VOCAB, HIDDEN)] {
        let w = randn((n, k));
        let x = Tensor::randn(0f32, 1.0, (1, 1, k), &Device::Cpu).expect("x");
        for dt in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Q8_0] {
            let wd = convert(&w, dt).expect("convert");
            g.throughput(Throughput::Bytes((wd.elem_count() * wd.dtype().size_in_bytes()) as u64));
            g.bench_with_input(BenchmarkId::new(name, dt.name()), &wd, |b, wd| on_worker(|| b.iter(|| linear(&x, wd).expect("linear"))));
        }
    }
    g.finish();
}

/// Prefill: 512 rows (the path `linear` takes for more than 4 rows: the gemm crate's f32 GEMM, after
/// widening f16; bf16 and Q8_0 in their own type where the CPU has AVX-512 BF16 / VNNI).
fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_512");
    for (name, n, k) in [("gate_up", MLP, HIDDEN), ("down", HIDDEN, MLP)] {
        let w = randn((n, k));
        let x = Tensor::randn(0f32, 1.0, (1, 512, k), &Device::Cpu).expect("x");
        g.throughput(Throughput::Elements((2 * 512 * n * k) as u64));
        for dt in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Q8_0] {
            let wd = convert(&w, dt).expect("convert");
            g.bench_with_input(BenchmarkId::new(name, dt.name()), &wd, |b, wd| on_worker(|| b.iter(|| linear(&x, wd).expect("linear"))));
        }
    }
    g.finish();
}

/// A few rows (short prompts, an eval doc's choices), f32: the gemm crate, which re-lays the
/// whole weight matrix on every call, against `f32_small`, which reads it in place (used up to
/// `f32_small::MAX_M` rows where the CPU has AVX-512 F).
fn gemm_few_rows(c: &mut Criterion) {
    use transact_kernels::gemm::{f32 as big, f32_small as small};
    let mut g = c.benchmark_group("gemm_few_rows");
    for (name, n, k) in [("gate_up", MLP, HIDDEN), ("down", HIDDEN, MLP), ("lm_head", VOCAB, HIDDEN)] {
        let w = randn((n, k)).flatten_all().and_then(|w| w.to_vec1::<f32>()).expect("w");
        for m in [8, 32, 64, 128, 256] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new(format!("{name}_gemm_crate"), m), |b| on_worker(|| b.iter(|| big::matmul(1, m, n, k, &x, &w, true))));
            if small::available() {
                g.bench_function(BenchmarkId::new(format!("{name}_f32_small"), m), |b| on_worker(|| b.iter(|| small::matmul(&x, m, k, &w, n))));
            }
        }
    }
    g.finish();
}

/// Decode attention of one token (9 query heads over 3 KV heads) at several contexts: one
/// task per (KV head, range of keys), as the decode step runs it; keys and values in f32, f16 and q8.
fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_attention");
    for ctx in [256, 1024, 2048] {
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
            let mut kv = HostKv::new(1, 3, 64, dtype);
            let k = Tensor::randn(0f32, 1.0, (1, 3, ctx + 1, 64), &Device::Cpu).expect("k");
            kv.append(&k, &k, 0).expect("append");
            let q: Vec<f32> = (0..9 * 64).map(|i| (i % 17) as f32 * 0.01).collect();
            g.bench_with_input(BenchmarkId::new(dtype.name(), ctx), &ctx, |b, &ctx| on_worker(|| b.iter(|| kv.attend(&q, 3, 1, ctx))));
        }
    }
    g.finish();
}

/// RMSNorm and RoPE over a 512-token prefill block.
fn norm_rope(c: &mut Criterion) {
    let x = Tensor::randn(0f32, 1.0, (1, 512, HIDDEN), &Device::Cpu).expect("x");
    let w = Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).expect("w");
    c.bench_function("rms_norm_512", |b| b.iter(|| candle_nn::ops::rms_norm(&x, &w, 1e-5).expect("norm")));
    let q = Tensor::randn(0f32, 1.0, (1, 9, 512, 64), &Device::Cpu).expect("q");
    let tables = RopeTables::new(64, 100000.0, 0, 512, &Device::Cpu).expect("tables");
    for layout in [RopeLayout::Adjacent, RopeLayout::HalfSplit] {
        c.bench_function(&format!("rope_512_{layout:?}"), |b| b.iter(|| tables.apply(&q, layout).expect("rope")));
    }
}

criterion_group!(benches, gemv, gemm, gemm_few_rows, attention, norm_rope);
criterion_main!(benches);
