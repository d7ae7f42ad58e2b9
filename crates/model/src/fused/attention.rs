//! RoPE and causal GQA attention as custom ops with hand-written backward passes, on the
//! projections' own layout `[b, t, heads · d]`: no transposes, no expanded copies of the keys
//! and values for each query head, no mask tensor. Attention runs per (sequence, KV group):
//! the group's query heads stacked as `[g · t, d]` against its one key and value head, through
//! the `gemm` kernels; the backward recomputes the probabilities rather than keeping them.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use transact_kernels::elementwise::causal_softmax;
use transact_kernels::gemm::f32::{matmul, matmul_tn};

use super::{slice, with_data};
use crate::reference::Rotation;

/// Rows (positions) per parallel task of the rotation.
const ROWS: usize = 16;

/// Each head's rotary pairs turned by position × frequency (backward: turned back).
pub(super) struct Rope {
    heads: usize,
    d: usize,
    t: usize,
    /// `[groups, t, d/2]` cosines and sines (angles computed in f64, as the definition does).
    cos: Vec<f32>,
    sin: Vec<f32>,
    groups: usize,
    heads_per_group: usize,
    /// Where the two members of pair i live in a head.
    pairs: Vec<[usize; 2]>,
}

impl Rope {
    pub(super) fn new(r: &Rotation, t: usize) -> Self {
        let half = r.head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(r.inv_freq.len() * t * half), Vec::with_capacity(r.inv_freq.len() * t * half));
        for f in r.inv_freq {
            for p in 0..t {
                for &fi in f.iter().take(half) {
                    let a = p as f64 * fi;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        Self {
            heads: r.heads,
            d: r.head_dim,
            t,
            cos,
            sin,
            groups: r.inv_freq.len(),
            heads_per_group: r.heads_per_group,
            pairs: (0..half).map(|i| r.layout.pair(i, r.head_dim)).collect(),
        }
    }

    /// `out` = `x` rotated by +θ (`sign` 1) or −θ (`sign` −1, the transpose: the backward).
    fn rotate(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let (n, d, half) = (self.heads, self.d, self.d / 2);
        let row = n * d;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(row * ROWS).zip(x.par_chunks(row * ROWS)).enumerate().for_each(|(c, (o, x))| {
            for (i, (o, x)) in o.chunks_exact_mut(row).zip(x.chunks_exact(row)).enumerate() {
                let pos = (c * ROWS + i) % self.t;
                for h in 0..n {
                    let grp = if self.groups == 1 { 0 } else { h / self.heads_per_group };
                    let at = (grp * self.t + pos) * half;
                    let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
                    let (xo, oo) = (&x[h * d..(h + 1) * d], &mut o[h * d..(h + 1) * d]);
                    for (j, &[a, b]) in self.pairs.iter().enumerate() {
                        let (c, s) = (cos[j], sign * sin[j]);
                        oo[a] = xo[a] * c - xo[b] * s;
                        oo[b] = xo[a] * s + xo[b] * c;
                    }
                }
            }
        });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        if x.len() % (self.heads * self.d * self.t) != 0 {
            bail!("rope: {:?} is not [b, {}, {} · {}]", l.shape(), self.t, self.heads, self.d);
        }
        Ok((CpuStorage::F32(self.rotate(x, 1.0)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let gx = with_data(&[g], |d| self.rotate(d[0], -1.0))?;
        Ok(Some(Tensor::from_vec(gx, x.shape(), x.device())?))
    }
}

/// Causal attention; see the module docs.
pub(super) struct Attention {
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
}

/// Geometry of one call.
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    hq: usize,
    hkv: usize,
    g: usize,
}

impl Attention {
    fn dims(&self, q: &Shape, k: &Shape) -> Result<Dims> {
        let (b, t, wq) = q.dims3()?;
        let (_, _, wk) = k.dims3()?;
        let (hq, hkv) = (self.heads, self.kv_heads);
        if hkv == 0 || hq % hkv != 0 || wq % hq != 0 || wk != wq / hq * hkv {
            bail!("attention: q {q:?} and k {k:?} do not fit {hq} heads over {hkv} KV heads");
        }
        Ok(Dims { b, t, d: wq / hq, hq, hkv, g: hq / hkv })
    }
}

impl Dims {
    /// Group `grp` of sequence `bi`: its query heads stacked `[g · t, d]` (scaled by 1/√d) and
    /// its key and value head `[t, d]`.
    fn gather(&self, q: &[f32], k: &[f32], v: &[f32], bi: usize, grp: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims { t, d, hq, hkv, g, .. } = *self;
        let scale = 1.0 / (d as f32).sqrt();
        let mut qg = Vec::with_capacity(g * t * d);
        for hh in 0..g {
            for ti in 0..t {
                let at = ((bi * t + ti) * hq + grp * g + hh) * d;
                qg.extend(q[at..at + d].iter().map(|x| x * scale));
            }
        }
        let kv = |x: &[f32]| -> Vec<f32> { (0..t).flat_map(|ti| x[((bi * t + ti) * hkv + grp) * d..][..d].iter().copied()).collect() };
        (qg, kv(k), kv(v))
    }

    /// Softmax of the group's causal scores `[g · t, t]`: row r is query r mod t.
    fn probabilities(&self, qg: &[f32], kg: &[f32]) -> Vec<f32> {
        let Dims { t, d, g, .. } = *self;
        let s = matmul(1, g * t, t, d, qg, kg, true);
        causal_softmax(&s, t, |r| r % t + 1)
    }

    /// Writes a group's `[g · t, d]` rows back into a `[b, t, hq · d]` tensor.
    fn scatter_q(&self, out: &mut [f32], rows: &[f32], bi: usize, grp: usize) {
        let Dims { t, d, hq, g, .. } = *self;
        for hh in 0..g {
            for ti in 0..t {
                let at = ((bi * t + ti) * hq + grp * g + hh) * d;
                out[at..at + d].copy_from_slice(&rows[(hh * t + ti) * d..][..d]);
            }
        }
    }

    /// Writes a KV head's `[t, d]` rows back into a `[b, t, hkv · d]` tensor.
    fn scatter_kv(&self, out: &mut [f32], rows: &[f32], bi: usize, grp: usize) {
        let Dims { t, d, hkv, .. } = *self;
        for ti in 0..t {
            let at = ((bi * t + ti) * hkv + grp) * d;
            out[at..at + d].copy_from_slice(&rows[ti * d..][..d]);
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, qs: &CpuStorage, ql: &Layout, ks: &CpuStorage, kl: &Layout, vs: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims(ql.shape(), kl.shape())?;
        if kl.shape() != vl.shape() {
            bail!("attention: k {:?} and v {:?} differ", kl.shape(), vl.shape());
        }
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let mut y = vec![0f32; q.len()];
        for bi in 0..dm.b {
            for grp in 0..dm.hkv {
                let (qg, kg, vg) = dm.gather(q, k, v, bi, grp);
                let p = dm.probabilities(&qg, &kg);
                let yg = matmul(1, dm.g * dm.t, dm.d, dm.t, &p, &vg, false);
                dm.scatter_q(&mut y, &yg, bi, grp);
            }
        }
        Ok((CpuStorage::F32(y), ql.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(q.shape(), k.shape())?;
        let Dims { t, d, g, .. } = dm;
        let scale = 1.0 / (d as f32).sqrt();
        let (dq, dk, dv) = with_data(&[q, k, v, gy], |x| {
            let (q, k, v, gy) = (x[0], x[1], x[2], x[3]);
            let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
            for bi in 0..dm.b {
                for grp in 0..dm.hkv {
                    let (qg, kg, vg) = dm.gather(q, k, v, bi, grp);
                    let p = dm.probabilities(&qg, &kg);
                    // ∂y of the group's query heads, stacked like qg (gather without the scale).
                    let mut dy = Vec::with_capacity(g * t * d);
                    for hh in 0..g {
                        for ti in 0..t {
                            dy.extend_from_slice(&gy[((bi * t + ti) * dm.hq + grp * g + hh) * d..][..d]);
                        }
                    }
                    // y = P·V: ∂V = Pᵀ·∂y, ∂P = ∂y·Vᵀ.
                    dm.scatter_kv(&mut dv, &matmul_tn(t, d, g * t, &p, &dy), bi, grp);
                    let dp = matmul(1, g * t, t, d, &dy, &vg, true);
                    // Softmax: ∂S = P ⊙ (∂P − Σ_j P ∂P), row by row (masked entries have P = 0).
                    let mut ds = dp;
                    ds.par_chunks_mut(t).zip(p.par_chunks(t)).for_each(|(ds, p)| {
                        let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                        ds.iter_mut().zip(p).for_each(|(a, &b)| *a = b * (*a - dot));
                    });
                    // S = (Q/√d)·Kᵀ: ∂Q = ∂S·K/√d, ∂K = ∂Sᵀ·(Q/√d).
                    let mut dqg = matmul(1, g * t, d, t, &ds, &kg, false);
                    dqg.iter_mut().for_each(|x| *x *= scale);
                    dm.scatter_q(&mut dq, &dqg, bi, grp);
                    dm.scatter_kv(&mut dk, &matmul_tn(t, d, g * t, &ds, &qg), bi, grp);
                }
            }
            (dq, dk, dv)
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}
