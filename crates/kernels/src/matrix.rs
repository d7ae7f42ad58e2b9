//! A weight matrix `[n, k]` in the type it is stored in, and its f32 widening.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::q8::{self, Q8_BLOCK, Q8_BYTES};

/// One weight matrix `[n, k]`, row-major, in the type it is stored in.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// `k / 32` blocks of [`Q8_BYTES`] per row ([`crate::q8`]).
    Q8_0(&'a [u8]),
}

impl WeightData<'_> {
    /// The whole `[n, k]` matrix as f32 (prefill multiplies widened weights where the CPU has no
    /// product in the stored type), in parallel over blocks of rows.
    pub fn widen(self, n: usize, k: usize) -> Vec<f32> {
        const ROWS: usize = 32;
        let mut out = vec![0f32; n * k];
        out.par_chunks_mut(ROWS * k).enumerate().for_each(|(c, o)| {
            let (lo, hi) = (c * ROWS * k, c * ROWS * k + o.len());
            match self {
                WeightData::F32(a) => o.copy_from_slice(&a[lo..hi]),
                WeightData::F16(a) => a[lo..hi].convert_to_f32_slice(o),
                WeightData::BF16(a) => a[lo..hi].convert_to_f32_slice(o),
                WeightData::Q8_0(a) => {
                    let bytes = &a[lo / Q8_BLOCK * Q8_BYTES..hi / Q8_BLOCK * Q8_BYTES];
                    for (b, o) in bytes.chunks_exact(Q8_BYTES).zip(o.chunks_exact_mut(Q8_BLOCK)) {
                        let d = q8::scale(b);
                        o.iter_mut().zip(&b[2..]).for_each(|(o, &q)| *o = d * q as i8 as f32);
                    }
                }
            }
        });
        out
    }
}
