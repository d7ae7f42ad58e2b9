//! The fast forward: full-sequence logits, causal mask, GQA, both RoPE layouts, KV cache, on the
//! CPU kernels where the tensors allow (candle's ops elsewhere, e.g. on a GPU), with hooks that
//! hand calibration the transitional activations. It computes what [`crate::reference`] defines
//! (tested to f32 rounding), but gives no gradients: its fast paths leave candle's graph.
//!
//! Shapes follow llama2.c's naming: `x` is the residual stream `[b, t, hidden]`, `xb` its
//! normalised copy, `q`/`k`/`v` heads `[b, heads, t, d]`.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};

use transact_kernels::{elementwise, gemm, gemv};

use crate::config::{ModelConfig, RopeLayout};
use crate::decode;
use crate::host::{self, with_cpu_f32};
use crate::kv_cache::{KvCache, KvDtype, KvStorage, LayerKv, append_and_attend};
use crate::linear::{WeightDtype, convert, into_huge_pages, linear, linear_many};
use crate::packed::{Packing, attend_packed};
use crate::rope::{RopeTables, permute_rows};
use crate::weights::{LayerWeights, Weights};

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[b, t, vocab]`: perplexity and scoring need every position.
    All,
    /// `[b, 1, vocab]`: generation only needs the next token.
    Last,
    /// No LM head: the final normalised hidden states `[b, t, hidden]` (calibration needs only
    /// the activations inside the layers).
    None,
}

/// Sees the transitional activations of every layer as the forward computes them.
pub trait Observer {
    /// Attention output before `o_proj`, `[b, t, heads · head_dim]`.
    fn attn_inner(&mut self, layer: usize, y: &Tensor) -> Result<()>;
    /// SwiGLU product `silu(gate x) ⊙ up x` before `down_proj`, `[b, t, mlp_width]`.
    fn mlp_inner(&mut self, layer: usize, h: &Tensor) -> Result<()>;
    /// The RMSNorm-ed residual stream `[b, t, hidden]` entering layer `layer`'s attention
    /// (`Norm::Attn`) or MLP (`Norm::Mlp`), or the LM head (`Norm::Final`, `layer` = the number
    /// of layers): hidden-size pruning scores the residual stream's channels on it.
    fn normed(&mut self, layer: usize, site: Norm, x: &Tensor) -> Result<()> {
        let _ = (layer, site, x);
        Ok(())
    }
}

/// A decoder layer's two residual blocks, for [`Model::forward_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Attention,
    Mlp,
}

/// Which RMSNorm an [`Observer::normed`] call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Attn,
    Mlp,
    Final,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    pub device: Device,
    /// What the KV caches this model fills store keys and values as (f32 unless
    /// [`Model::with_kv_dtype`] says otherwise).
    pub kv_dtype: KvDtype,
}

/// Additive causal mask `[t, start + t]`: query i (absolute position start + i) sees keys ≤ it.
fn causal_mask(t: usize, start: usize, device: &Device) -> Result<Tensor> {
    let total = start + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, total), device)
}

/// `a · bᵀ` (`b_rows_are_columns`) or `a · b` over the leading dims: contiguous f32 on the CPU
/// through [`gemm::f32::matmul`], candle's matmul otherwise.
pub(crate) fn bmm(a: &Tensor, b: &Tensor, b_rows_are_columns: bool) -> Result<Tensor> {
    let (m, k) = (a.dim(D::Minus2)?, a.dim(D::Minus1)?);
    let n = b.dim(if b_rows_are_columns { D::Minus2 } else { D::Minus1 })?;
    let batch = a.elem_count() / (m * k).max(1);
    if b.elem_count() == batch * n * k
        && let Some(y) = with_cpu_f32(&[a, b], |d| gemm::f32::matmul(batch, m, n, k, d[0], d[1], b_rows_are_columns))?
    {
        let mut shape = a.dims().to_vec();
        *shape.last_mut().expect("a matrix has two dims") = n;
        return Tensor::from_vec(y, shape, a.device());
    }
    if b_rows_are_columns { a.matmul(&b.t()?) } else { a.matmul(b) }
}

/// Query rows per attention block. Bounding the score matrix to `[g·BLOCK, keys]` keeps it in
/// cache at long contexts (one `[g·t, t]` matrix is 150 MB per layer at t = 2048), and each block
/// skips the keys after its last query, halving causal attention's work.
const ATTN_BLOCK: usize = 128;

/// Causal attention of `q` `[b, kv_heads, g, t, d]` (already scaled) over `k`, `v`
/// `[b, kv_heads, start + t, d]`; returns `[b, kv_heads, g, t, d]`.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> Result<Tensor> {
    let (b, hkv, g, t, d) = q.dims5()?;
    let mut blocks = Vec::with_capacity(t.div_ceil(ATTN_BLOCK));
    for c0 in (0..t).step_by(ATTN_BLOCK) {
        let c = ATTN_BLOCK.min(t - c0);
        let keys = start + c0 + c;
        let qc = if c == t { q.clone() } else { q.narrow(3, c0, c)?.contiguous()? };
        let (kc, vc) = if keys == k.dim(2)? {
            (k.clone(), v.clone())
        } else {
            (k.narrow(2, 0, keys)?.contiguous()?, v.narrow(2, 0, keys)?.contiguous()?)
        };
        let att = bmm(&qc.reshape((b, hkv, g * c, d))?, &kc, true)?;
        // Row r is query r % c of the block, at absolute position start + c0 + r % c.
        let first = start + c0 + 1;
        let p = match with_cpu_f32(&[&att], |x| elementwise::causal_softmax(x[0], keys, |r| first + r % c))? {
            Some(p) => Tensor::from_vec(p, att.shape(), att.device())?,
            None if c > 1 => {
                let mask = causal_mask(c, start + c0, q.device())?;
                softmax_last_dim(&att.reshape((b, hkv, g, c, keys))?.broadcast_add(&mask)?.reshape((b, hkv, g * c, keys))?)?
            }
            None => softmax_last_dim(&att)?,
        };
        blocks.push(bmm(&p, &vc, false)?.reshape((b, hkv, g, c, d))?);
    }
    if blocks.len() == 1 { Ok(blocks.pop().unwrap()) } else { Tensor::cat(&blocks, 3) }
}

impl Model {
    pub fn new(config: ModelConfig, weights: Weights) -> Self {
        let device = weights.embed.device().clone();
        Self { config, weights, device, kv_dtype: KvDtype::F32 }
    }

    /// The same model filling its KV caches in `dtype` (a cache keeps the type its layers
    /// were first filled in).
    pub fn with_kv_dtype(&self, dtype: KvDtype) -> Model {
        Model { kv_dtype: dtype, ..self.clone() }
    }

    /// Logits for `tokens` (`[b, t]`, u32). With a cache, the tokens continue the cached ones
    /// and their keys/values are appended.
    pub fn forward(&self, tokens: &Tensor, cache: Option<&mut KvCache>, logits: Logits) -> Result<Tensor> {
        // Run the whole pass on a rayon worker: the ~250 parallel regions of a decode step then
        // start from inside the pool instead of each parking and waking the calling thread.
        if matches!(self.device, Device::Cpu) && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_observed(tokens, cache, logits, None));
        }
        self.forward_observed(tokens, cache, logits, None)
    }

    /// One new token for each of several sequences, each in its own cache (batch 1) at its own
    /// position: a server's running batch. Logits `[tokens.len(), vocab]`, row i after
    /// `tokens[i]` appended to `caches[i]`. On the CPU the products read each weight once for
    /// all rows; elsewhere the sequences run one after another.
    pub fn step_caches(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() {
            candle_core::bail!("{} tokens for {} caches", tokens.len(), caches.len());
        }
        if let Some(c) = caches.iter().find(|c| c.len >= self.config.max_position) {
            candle_core::bail!("sequence of {} tokens exceeds the model's context of {}", c.len + 1, self.config.max_position);
        }
        if matches!(self.device, Device::Cpu) && caches.iter().all(|c| c.is_host(1)) {
            let run = |caches: &mut [&mut KvCache]| decode::step_caches(&self.config, &self.weights, self.kv_dtype, tokens, caches, true);
            let y = if rayon::current_thread_index().is_none() { rayon::scope(|_| run(caches)) } else { run(caches) }?;
            return y.squeeze(1);
        }
        let rows = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(&t, c)| self.forward(&Tensor::new(&[[t]], &self.device)?, Some(&mut **c), Logits::Last)?.flatten_to(1))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }

    /// [`Model::forward`] that also hands each layer's transitional activations to `observer`.
    pub fn forward_observed(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        logits: Logits,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let cfg = &self.config;
        if start + t > cfg.max_position {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                start + t,
                cfg.max_position
            );
        }
        let mut cache = match cache {
            Some(c) if observer.is_none() && decode::can_step(b, t, &self.device) && c.is_host(b) => {
                let ids = tokens.flatten_all()?.to_vec1::<u32>()?;
                return decode::step(cfg, &self.weights, self.kv_dtype, &ids, c, logits != Logits::None);
            }
            other => other,
        };
        let x = self.weights.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        let mut observer = observer;
        let mut x = self.run_layers(x, start, cache.as_deref_mut(), observer.as_deref_mut(), None)?;
        if let Some(c) = cache {
            c.len += t;
        }
        if logits == Logits::Last {
            x = x.narrow(1, t - 1, 1)?;
        }
        let x = rms_norm(&x, &self.weights.final_norm, cfg.rms_eps as f32)?;
        if let Some(o) = observer {
            o.normed(cfg.n_layers(), Norm::Final, &x)?;
        }
        if logits == Logits::None {
            return Ok(x);
        }
        self.head(&x)
    }

    /// Layer `l` of a model of `config` as a model of its own, for [`Model::forward_layers`]
    /// (no embedding lookup, no final norm, no LM head). The MLP width is read from `layer`, so
    /// a layer whose attention is pruned but whose MLP is not yet can run too.
    pub fn single_layer(config: &ModelConfig, l: usize, layer: LayerWeights) -> Result<Model> {
        let device = layer.q_proj.device().clone();
        let mut one = config.clone();
        one.layers = vec![crate::config::LayerShape { mlp_width: layer.gate_proj.dim(0)?, ..config.layers[l] }];
        one.rope_inv_freq = config.rope_inv_freq.as_ref().map(|f| vec![f[l].clone()]);
        let weights = Weights {
            embed: Tensor::zeros((1, config.hidden_size), DType::F32, &device)?,
            layers: vec![layer],
            final_norm: Tensor::ones(config.hidden_size, DType::F32, &device)?,
            lm_head: None,
        };
        Ok(Model::new(one, weights))
    }

    /// Runs the decoder layers on hidden states `x` `[b, t, hidden]` from scratch: no embedding,
    /// no final norm, no cache. Streaming calibration feeds a one-layer model at a time.
    pub fn forward_layers(&self, x: &Tensor, observer: Option<&mut dyn Observer>) -> Result<Tensor> {
        self.run_layers(x.clone(), 0, None, observer, None)
    }

    /// One residual block of layer `l` on hidden states `x` `[b, t, hidden]` from position 0 (no
    /// cache): `x + attention(norm(x))` or `x + mlp(norm(x))`. Compensation refits each block's
    /// output projection on its own and so needs neither the other block's work nor its cost.
    pub fn forward_block(&self, l: usize, block: Block, x: &Tensor) -> Result<Tensor> {
        let w = &self.weights.layers[l];
        let out = match block {
            Block::Attention => &w.o_proj,
            Block::Mlp => &w.down_proj,
        };
        host::add(x, &linear(&self.transitional(l, block, x)?, out)?)
    }

    /// The transitional activation of `block` of layer `l` on hidden states `x` `[b, t, hidden]`
    /// from position 0 (no cache): the attention output before `o_proj` (`[b, t, heads · d]`)
    /// or the SwiGLU product before `down_proj` (`[b, t, mlp_width]`); the output projection
    /// is not applied.
    pub fn transitional(&self, l: usize, block: Block, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let w = &self.weights.layers[l];
        match block {
            Block::Attention => {
                let rope = RopeTables::new(cfg.layers[l].head_dim, cfg.rope_theta, 0, x.dim(1)?, &self.device)?;
                self.attention_inner(l, &rms_norm(x, &w.attn_norm, cfg.rms_eps as f32)?, &rope, None, None)
            }
            Block::Mlp => self.mlp_inner(l, &rms_norm(x, &w.mlp_norm, cfg.rms_eps as f32)?),
        }
    }

    /// The decoder layers over packed sequences (see [`crate::packed`]).
    pub(crate) fn run_layers_packed(&self, x: Tensor, packing: &Packing) -> Result<Tensor> {
        self.run_layers(x, 0, None, None, Some(packing))
    }

    fn run_layers(
        &self,
        mut x: Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
        mut observer: Option<&mut (dyn Observer + '_)>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let t = x.dim(1)?;
        // One RoPE table per distinct head dim (pruned models may differ between layers).
        let mut tables: Vec<(usize, RopeTables)> = Vec::new();
        for (l, shape) in cfg.layers.iter().enumerate() {
            if !tables.iter().any(|(d, _)| *d == shape.head_dim) {
                let table = match packing {
                    Some(p) => RopeTables::at(&RopeTables::inv_freq(shape.head_dim, cfg.rope_theta), &p.positions, &self.device)?,
                    None => RopeTables::new(shape.head_dim, cfg.rope_theta, start, t, &self.device)?,
                };
                tables.push((shape.head_dim, table));
            }
            let rope = &tables.iter().find(|(d, _)| *d == shape.head_dim).unwrap().1;
            let slot = cache.as_deref_mut().map(|c| (c.storage(), &mut c.layers[l]));
            let w = &self.weights.layers[l];
            let xb = rms_norm(&x, &w.attn_norm, cfg.rms_eps as f32)?;
            if let Some(o) = observer.as_deref_mut() {
                o.normed(l, Norm::Attn, &xb)?;
            }
            x = host::add(&x, &self.attention(l, &xb, rope, slot, observer.as_deref_mut(), packing)?)?;
            let xb = rms_norm(&x, &w.mlp_norm, cfg.rms_eps as f32)?;
            if let Some(o) = observer.as_deref_mut() {
                o.normed(l, Norm::Mlp, &xb)?;
            }
            x = host::add(&x, &self.mlp(l, &xb, observer.as_deref_mut())?)?;
        }
        Ok(x)
    }

    /// The same model with Q/K rows in the RoPE pair layout `to` (identical outputs).
    pub fn with_rope_layout(&self, to: RopeLayout) -> Result<Model> {
        if self.config.rope_layout == to {
            return Ok(self.clone());
        }
        let mut m = self.clone();
        for (w, s) in m.weights.layers.iter_mut().zip(&self.config.layers) {
            w.q_proj = permute_rows(&w.q_proj, s.n_heads, to)?;
            w.k_proj = permute_rows(&w.k_proj, s.n_kv_heads, to)?;
        }
        m.config.rope_layout = to;
        Ok(m)
    }

    /// The same model with its layer matrices and LM head kept in `dtype`, for inference only
    /// (pruning and export work on f32). The embedding stays f32: a lookup reads one row.
    ///
    /// The matrices are copied into one buffer in huge pages ([`into_huge_pages`]), so an f32
    /// model is copied too: decode reads every matrix once per token, and a bare read of huge
    /// pages is faster than of small ones (`bench/NOTES.md`).
    pub fn with_weight_dtype(&self, dtype: WeightDtype) -> Result<Model> {
        if dtype == WeightDtype::Q8_0 && !matches!(self.device, Device::Cpu) {
            candle_core::bail!("q8_0 weights run on the CPU only; on {:?} use f32, f16 or bf16", self.device);
        }
        let mut m = self.clone();
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let mut all = vec![convert(head, dtype)?];
        for w in &self.weights.layers {
            for t in [&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj, &w.gate_proj, &w.up_proj, &w.down_proj] {
                all.push(convert(t, dtype)?);
            }
        }
        let mut all = into_huge_pages(&all)?.into_iter();
        m.weights.lm_head = all.next();
        for w in &mut m.weights.layers {
            for t in [&mut w.q_proj, &mut w.k_proj, &mut w.v_proj, &mut w.o_proj, &mut w.gate_proj, &mut w.up_proj, &mut w.down_proj] {
                *t = all.next().expect("one arena view per matrix");
            }
        }
        Ok(m)
    }

    /// The LM head on final normalised hidden states `x` (`[.., hidden]`, as [`Logits::None`]
    /// returns them): `forward(.., Logits::All)` is `head(forward(.., Logits::None))`, bit for
    /// bit. A distillation teacher whose hidden states are kept on disk runs only this.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let run = || linear(x, self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed));
        if matches!(self.device, Device::Cpu) && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| run());
        }
        run()
    }

    /// Convenience: logits `[t, vocab]` for one sequence, no cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let tokens = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        self.forward(&tokens, None, Logits::All)?.squeeze(0)
    }

    fn attention(
        &self,
        l: usize,
        xb: &Tensor,
        rope: &RopeTables,
        slot: Option<(KvStorage, &mut Option<LayerKv>)>,
        observer: Option<&mut (dyn Observer + '_)>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let y = self.attention_inner(l, xb, rope, slot, packing)?;
        if let Some(o) = observer {
            o.attn_inner(l, &y)?;
        }
        linear(&y, &self.weights.layers[l].o_proj)
    }

    /// The transitional activation the MHA salience scores: the attention output before o_proj,
    /// `[b, t, heads · d]`.
    fn attention_inner(&self, l: usize, xb: &Tensor, rope: &RopeTables, slot: Option<(KvStorage, &mut Option<LayerKv>)>, packing: Option<&Packing>) -> Result<Tensor> {
        let s = self.config.layers[l];
        let w = &self.weights.layers[l];
        let (b, t, _) = xb.dims3()?;
        let (hq, hkv, d, g) = (s.n_heads, s.n_kv_heads, s.head_dim, s.group_size());
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
        let layout = self.config.rope_layout;
        let [q, k, v]: [Tensor; 3] = linear_many(xb, &[&w.q_proj, &w.k_proj, &w.v_proj])?.try_into().expect("three outputs");
        let (q, k, v) = (heads(q, hq)?, heads(k, hkv)?, heads(v, hkv)?);
        let (q, k) = if self.config.rope_inv_freq.is_some() {
            // Head-dim-pruned: each KV group (with its query heads) has its own kept frequencies.
            let start = rope.start;
            let mut qs = Vec::with_capacity(hkv);
            let mut ks = Vec::with_capacity(hkv);
            for grp in 0..hkv {
                let inv_freq = self.config.inv_freq(l, grp);
                let tables = match packing {
                    Some(p) => RopeTables::at(&inv_freq, &p.positions, &self.device)?,
                    None => RopeTables::from_inv_freq(&inv_freq, start, t, &self.device)?,
                };
                qs.push(tables.apply(&q.narrow(1, grp * g, g)?.contiguous()?, layout)?);
                ks.push(tables.apply(&k.narrow(1, grp, 1)?.contiguous()?, layout)?);
            }
            (Tensor::cat(&qs, 1)?, Tensor::cat(&ks, 1)?)
        } else {
            (rope.apply(&q, layout)?, rope.apply(&k, layout)?)
        };
        // GQA without copying K/V: the g query heads of a group become g·t rows against one KV head.
        let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, hkv, g, t, d))?;
        let y = match (slot, packing) {
            (None, Some(p)) => attend_packed(&q, &k, &v, p)?,
            (None, None) => attend(&q, &k, &v, rope.start)?,
            (Some(_), Some(_)) => candle_core::bail!("packed sequences run without a KV cache"),
            (Some((storage, slot)), None) => {
                let direct = t <= gemv::MAX_ROWS && matches!(self.device, Device::Cpu);
                match append_and_attend(slot, storage, self.kv_dtype, &q, &k, &v, rope.start, direct)? {
                    Ok(y) => y,
                    Err((k, v)) => attend(&q, &k, &v, rope.start)?,
                }
            }
        };
        y.reshape((b, hq, t, d))?.transpose(1, 2)?.reshape((b, t, hq * d))
    }

    fn mlp(&self, l: usize, xb: &Tensor, observer: Option<&mut (dyn Observer + '_)>) -> Result<Tensor> {
        let h = self.mlp_inner(l, xb)?;
        if let Some(o) = observer {
            o.mlp_inner(l, &h)?;
        }
        linear(&h, &self.weights.layers[l].down_proj)
    }

    /// The transitional activation the MLP salience scores: silu(gate x) ⊙ up x.
    fn mlp_inner(&self, l: usize, xb: &Tensor) -> Result<Tensor> {
        let w = &self.weights.layers[l];
        let [gate, up]: [Tensor; 2] = linear_many(xb, &[&w.gate_proj, &w.up_proj])?.try_into().expect("two outputs");
        match with_cpu_f32(&[&gate, &up], |x| elementwise::silu_mul(x[0], x[1]))? {
            Some(h) => Tensor::from_vec(h, gate.shape(), gate.device()),
            None => candle_nn::ops::silu(&gate)? * up,
        }
    }
}

/// Natural-log softmax over the vocabulary (last axis), in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
