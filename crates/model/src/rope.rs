//! Rotary position embedding for both pair layouts.
//!
//! Pair i of a head rotates by angle `pos · θ^(−2i/d)`. Only where the two members of a pair
//! live differs: adjacent (2i, 2i+1) in GGUF order, (i, i+d/2) in Hugging Face order.

use candle_core::{DType, Device, Result, Tensor};

use super::config::RopeLayout;

/// cos/sin tables of shape `[t, d/2]` for positions `start .. start + t`.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Position of the first row.
    pub start: usize,
}

impl RopeTables {
    pub fn new(head_dim: usize, theta: f64, start: usize, t: usize, device: &Device) -> Result<Self> {
        Self::from_inv_freq(&Self::inv_freq(head_dim, theta), start, t, device)
    }

    /// `θ^(−2i/d)` for every pair `i` of a head of `head_dim`.
    pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
        (0..head_dim / 2).map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64)).collect()
    }

    /// Tables for explicit per-pair inverse frequencies (pairs kept by head-dim pruning).
    pub fn from_inv_freq(inv_freq: &[f64], start: usize, t: usize, device: &Device) -> Result<Self> {
        let positions: Vec<usize> = (start..start + t).collect();
        let mut tables = Self::at(inv_freq, &positions, device)?;
        tables.start = start;
        Ok(tables)
    }

    /// Tables whose row `i` is for position `positions[i]` (packed sequences); `start` is 0.
    pub fn at(inv_freq: &[f64], positions: &[usize], device: &Device) -> Result<Self> {
        let (half, t) = (inv_freq.len(), positions.len());
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for &p in positions {
            for f in inv_freq {
                // Angles in f64: at position 8k the f32 product already loses ~1e-3 rad.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (t, half), device)?,
            sin: Tensor::from_vec(sin, (t, half), device)?,
            start: 0,
        })
    }

    /// Rotates `x` of shape `[b, heads, t, d]` (contiguous).
    pub fn apply(&self, x: &Tensor, layout: RopeLayout) -> Result<Tensor> {
        let (cos, sin) = if x.dtype() == DType::F32 {
            (self.cos.clone(), self.sin.clone())
        } else {
            (self.cos.to_dtype(x.dtype())?, self.sin.to_dtype(x.dtype())?)
        };
        match layout {
            RopeLayout::Adjacent => candle_nn::rotary_emb::rope_i(x, &cos, &sin),
            RopeLayout::HalfSplit => candle_nn::rotary_emb::rope(x, &cos, &sin),
        }
    }
}

/// Reorders the Q or K rows of `heads` heads of `w` (`[heads · d, in]`) from the other layout
/// into `to`: each member of each rotary pair moves to where `to` keeps it.
pub fn permute_rows(w: &Tensor, heads: usize, to: RopeLayout) -> Result<Tensor> {
    let rows = w.dim(0)?;
    let d = rows / heads;
    let from = match to {
        RopeLayout::Adjacent => RopeLayout::HalfSplit,
        RopeLayout::HalfSplit => RopeLayout::Adjacent,
    };
    let mut source = vec![0u32; rows];
    for h in 0..heads {
        for i in 0..d / 2 {
            for (new, old) in to.pair(i, d).into_iter().zip(from.pair(i, d)) {
                source[h * d + new] = (h * d + old) as u32;
            }
        }
    }
    w.index_select(&Tensor::new(source, w.device())?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_agree_after_permutation() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, d, t) = (3, 8, 5);
        // Rows of a projection: rotating x then mapping layouts equals mapping then rotating.
        let x = Tensor::randn(0f32, 1.0, (1, heads, t, d), &dev)?;
        let tables = RopeTables::new(d, 10000.0, 7, t, &dev)?;
        let adj = tables.apply(&x, RopeLayout::Adjacent)?;
        // Permute the last axis of x as if it were weight rows, per head.
        let to_half = |y: &Tensor| -> Result<Tensor> {
            let rows = y.permute((0, 1, 3, 2))?.reshape((heads * d, t))?;
            let p = permute_rows(&rows, heads, RopeLayout::HalfSplit)?;
            p.reshape((1, heads, d, t))?.permute((0, 1, 3, 2))?.contiguous()
        };
        let half = tables.apply(&to_half(&x)?, RopeLayout::HalfSplit)?;
        let diff = (to_half(&adj)? - half)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
        // And the permutation round-trips.
        let w = Tensor::randn(0f32, 1.0, (heads * d, 4), &dev)?;
        let back = permute_rows(&permute_rows(&w, heads, RopeLayout::HalfSplit)?, heads, RopeLayout::Adjacent)?;
        assert_eq!((w - back)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
