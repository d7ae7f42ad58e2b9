//! The reference forward is the model's definition: its gradients reach every weight and match
//! finite differences, and the fast forward and decode compute the same logits. Small random
//! models (shapes, layouts and gradients do not depend on real weights); the real model is
//! checked against the reference in the CLI's integration tests.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};
use transact_model::forward::Block;
use transact_model::weights::{TensorRole, Weights};
use transact_model::{KvCache, KvDtype, KvStorage, LayerShape, Logits, Model, ModelConfig, RopeLayout, reference};

/// A small config; `varied` gives layers of different shapes, per-group RoPE frequencies (as
/// head-dim pruning leaves them) and a tied LM head.
fn config(varied: bool, layout: RopeLayout, hidden: usize, head_dim: usize, mlp: usize, vocab: usize) -> ModelConfig {
    let shape = |n_heads, n_kv_heads, head_dim, mlp_width| LayerShape { n_heads, n_kv_heads, head_dim, mlp_width };
    let layers = if varied {
        vec![shape(4, 2, head_dim, mlp), shape(2, 1, head_dim - 2, mlp / 2), shape(3, 3, head_dim, mlp)]
    } else {
        vec![shape(4, 2, head_dim, mlp), shape(4, 2, head_dim, mlp)]
    };
    let rope_inv_freq = varied.then(|| {
        layers
            .iter()
            .enumerate()
            .map(|(l, s)| (0..s.n_kv_heads).map(|g| (0..s.head_dim / 2).map(|i| 10_000f64.powf(-((i + l + g) as f64) / 8.0)).collect()).collect())
            .collect()
    });
    let cfg = ModelConfig {
        name: "random".into(),
        hidden_size: hidden,
        vocab_size: vocab,
        layers,
        rope_theta: 10_000.0,
        rope_layout: layout,
        rms_eps: 1e-5,
        tied_embeddings: varied,
        max_position: 64,
        rope_inv_freq,
    };
    cfg.validate().unwrap();
    cfg
}

/// Seeded random weights as `Var`s of `dtype` (norm weights near 1), with their roles.
fn random_weights(cfg: &ModelConfig, dtype: DType, seed: u64) -> (Weights, Vec<(TensorRole, Var)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut vars = Vec::new();
    let weights = Weights::from_roles(cfg, |role| -> candle_core::Result<Tensor> {
        let shape = role.shape(cfg);
        let n: usize = shape.iter().product();
        let scale = if role == TensorRole::Embed { 1.0 } else { 0.3 };
        let values: Vec<f64> = (0..n).map(|_| if role.is_norm() { 1.0 + 0.2 * (rng.random::<f64>() - 0.5) } else { scale * (rng.random::<f64>() * 2.0 - 1.0) }).collect();
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?)?;
        vars.push((role, var.clone()));
        Ok(var.as_tensor().clone())
    })
    .unwrap();
    (weights, vars)
}

fn tokens(cfg: &ModelConfig, b: usize, t: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect();
    Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap()
}

/// A scalar of every logit: Σ logits ⊙ R for a fixed random R.
fn loss(cfg: &ModelConfig, w: &Weights, x: &Tensor, r: &Tensor) -> Tensor {
    (reference::forward(cfg, w, x).unwrap() * r).unwrap().sum_all().unwrap()
}

/// On small random f64 models, the gradient of every weight from `backward()` matches central
/// finite differences to a relative error of 1e-4, and every weight gets one.
#[test]
fn every_weight_gets_the_gradient_finite_differences_give() {
    for (varied, layout) in [(false, RopeLayout::HalfSplit), (true, RopeLayout::Adjacent)] {
        let cfg = config(varied, layout, 16, 6, 12, 20);
        let (w, vars) = random_weights(&cfg, DType::F64, 7);
        let x = tokens(&cfg, 2, 5, 1);
        let (b, t) = x.dims2().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let r: Vec<f64> = (0..b * t * cfg.vocab_size).map(|_| rng.random::<f64>() - 0.5).collect();
        let r = Tensor::from_vec(r, (b, t, cfg.vocab_size), &Device::Cpu).unwrap();
        let grads = loss(&cfg, &w, &x, &r).backward().unwrap();
        let f = |w: &Weights| loss(&cfg, w, &x, &r).to_scalar::<f64>().unwrap();
        let h = 1e-5;
        for (role, var) in &vars {
            let g = grads.get(var).unwrap_or_else(|| panic!("{role:?} gets no gradient (varied {varied})"));
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let shape = var.as_tensor().shape().clone();
            let mut fd = vec![0f64; base.len()];
            for i in 0..base.len() {
                let probe = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
                    f(&w)
                };
                fd[i] = (probe(h) - probe(-h)) / (2.0 * h);
            }
            var.set(&Tensor::from_vec(base, shape, &Device::Cpu).unwrap()).unwrap();
            let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
            let (fd_norm, diff) = (norm(&mut fd.iter().copied()), norm(&mut g.iter().zip(&fd).map(|(a, b)| a - b)));
            assert!(fd_norm > 0.0 && g.iter().any(|&v| v != 0.0), "{role:?}: zero gradient (varied {varied})");
            let rel = diff / fd_norm;
            // Element by element too, for every element whose gradient is not negligible.
            let big = fd.iter().fold(0f64, |a, v| a.max(v.abs()));
            let worst = g.iter().zip(&fd).filter(|(_, d)| d.abs() > 1e-3 * big).map(|(a, d)| (a - d).abs() / d.abs()).fold(0f64, f64::max);
            eprintln!("{role:?} (varied {varied}): {} weights, relative error {rel:.1e}, worst element {worst:.1e}", fd.len());
            assert!(rel <= 1e-4 && worst <= 1e-4, "{role:?} (varied {varied}): relative error {rel:.2e}, worst element {worst:.2e}");
        }
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    (d, b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
}

/// On random f32 models (GQA, both pair layouts, per-group frequencies, layers of different
/// shapes, tied and untied heads), the fast forward, a batch, and prefill then decode through the
/// KV cache (both storages) give the reference's logits to f32 rounding.
#[test]
fn the_fast_forward_and_decode_compute_the_reference() {
    for (varied, layout) in [(false, RopeLayout::HalfSplit), (false, RopeLayout::Adjacent), (true, RopeLayout::HalfSplit), (true, RopeLayout::Adjacent)] {
        let cfg = config(varied, layout, 64, 16, 96, 80);
        let (w, _) = random_weights(&cfg, DType::F32, 11);
        let model = Model::new(cfg.clone(), w.clone());
        let x = tokens(&cfg, 2, 40, 5);
        let want = reference::forward(&cfg, &w, &x).unwrap();
        let close = |what: &str, got: &Tensor, want: &Tensor| {
            let (d, m) = max_diff(got, want);
            assert!(d <= 1e-4 * m, "{what} (varied {varied}, {layout:?}): max |Δlogit| {d} of {m}");
        };
        close("full forward", &model.forward(&x, None, Logits::All).unwrap(), &want);
        for storage in [KvStorage::Host, KvStorage::Tensors] {
            for row in 0..2 {
                let mut cache = KvCache::with_storage(&cfg, storage);
                let ids = x.get(row).unwrap().to_vec1::<u32>().unwrap();
                let mut parts = vec![model.forward(&Tensor::new(&ids[..25], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache), Logits::All).unwrap()];
                for c in ids[25..31].chunks(3).chain(ids[31..].chunks(1)) {
                    parts.push(model.forward(&Tensor::new(c, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache), Logits::All).unwrap());
                }
                let got = Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap();
                close(&format!("cached ({storage:?}), row {row}"), &got, &want.get(row).unwrap());
            }
        }
        // The narrow KV caches and weight types stay near the reference on random weights too.
        for kv in [KvDtype::F16, KvDtype::Q8] {
            let m = model.with_kv_dtype(kv);
            let mut cache = KvCache::new(&cfg);
            let ids = x.get(0).unwrap().to_vec1::<u32>().unwrap();
            let mut parts = vec![m.forward(&Tensor::new(&ids[..30], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache), Logits::All).unwrap()];
            for &id in &ids[30..] {
                parts.push(m.forward(&Tensor::new(&[id], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache), Logits::All).unwrap());
            }
            let (d, mx) = max_diff(&Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap(), &want.get(0).unwrap());
            assert!(d <= 0.05 * mx, "KV {kv:?}: max |Δlogit| {d} of {mx}");
        }
    }
}

/// A layer run one residual block at a time (`forward_block`, which compensation uses) computes
/// what the whole layer does, on every layer shape of a varied model (GQA, pruned head dims).
#[test]
fn a_layer_block_by_block_is_the_whole_layer() {
    let cfg = config(true, RopeLayout::HalfSplit, 64, 16, 96, 80);
    let (w, _) = random_weights(&cfg, DType::F32, 7);
    let mut rng = StdRng::seed_from_u64(8);
    let x: Vec<f32> = (0..2 * 5 * cfg.hidden_size).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let x = Tensor::from_vec(x, (2, 5, cfg.hidden_size), &Device::Cpu).unwrap();
    for l in 0..cfg.n_layers() {
        let one = Model::single_layer(&cfg, l, w.layers[l].clone()).unwrap();
        let whole = one.forward_layers(&x, None).unwrap();
        let mid = one.forward_block(0, Block::Attention, &x).unwrap();
        let blocks = one.forward_block(0, Block::Mlp, &mid).unwrap();
        let (abs, _) = max_diff(&whole, &blocks);
        assert!(abs < 1e-5, "layer {l}: max |Δ| {abs}");
        assert_eq!(one.transitional(0, Block::Mlp, &mid).unwrap().dims(), [2, 5, cfg.layers[l].mlp_width]);
        assert_eq!(one.transitional(0, Block::Attention, &x).unwrap().dims(), [2, 5, cfg.layers[l].mha_width()]);
    }
}
