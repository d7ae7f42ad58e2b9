//! Matrix-vector products for decode. candle's CPU GEMV runs on one thread, so it reads f32
//! weights at about half the memory bandwidth, and converts bf16 to f32 on every call; decode is
//! bound by reading the weights, so this is where it spends its time (see `bench/NOTES.md`).
//!
//! Weight rows are split across rayon's threads; each row is read from memory once for all (at
//! most [`MAX_ROWS`]) activation rows. Inner loops use AVX2/FMA/F16C when the CPU has them
//! (detected at run time; plain builds target SSE2) and a portable loop otherwise; Q8_0 uses
//! AVX-512 VNNI's byte dot product where the CPU has it.

use crate::matrix::WeightData;
use crate::q8::{self, Q8_BLOCK, Q8_BYTES};

/// Activation rows up to which [`gemv`] beats a GEMM (decode is 1; scoring short batches ≤ 4).
pub const MAX_ROWS: usize = 4;
/// `y[m, n] = x[m, k] · W[n, k]ᵀ` for `m ≤ MAX_ROWS`.
pub fn gemv(x: &[f32], m: usize, k: usize, w: WeightData, n: usize) -> Vec<f32> {
    gemv_many(x, m, k, &[(w, n)]).pop().unwrap_or_default()
}

/// [`gemv`] of several matrices that read the same input (Q, K and V; gate and up) in one
/// parallel region: decode makes ~200 of these calls per token, and each region costs a
/// wake-up of every thread.
pub fn gemv_many(x: &[f32], m: usize, k: usize, ws: &[(WeightData, usize)]) -> Vec<Vec<f32>> {
    debug_assert_eq!(x.len(), m * k);
    let simd = Simd::detect();
    // Q8_0 weights meet Q8 activations (as llama.cpp does): the dot becomes integer multiply-adds.
    let (xq, xd) = if ws.iter().any(|(w, _)| matches!(w, WeightData::Q8_0(_))) { q8::quantize(x) } else { (Vec::new(), Vec::new()) };
    let xc = if simd.vnni() { vnni_corrections(&xq) } else { Vec::new() };
    let act = |j: usize| Act {
        f: &x[j * k..(j + 1) * k],
        q: xq.get(j * k..(j + 1) * k).unwrap_or(&[]),
        d: xd.get(j * k / Q8_BLOCK..(j + 1) * k / Q8_BLOCK).unwrap_or(&[]),
        c: xc.get(j * k / Q8_BLOCK..(j + 1) * k / Q8_BLOCK).unwrap_or(&[]),
    };
    let total: usize = ws.iter().map(|(_, n)| n).sum();
    let rows = (total / (8 * rayon::current_num_threads())).clamp(8, 256);
    // Outputs by weight row (`[n, m]`) so each task writes one contiguous range.
    let mut yts: Vec<Vec<f32>> = ws.iter().map(|(_, n)| vec![0f32; n * m]).collect();
    let mut tasks = Vec::new();
    for (i, yt) in yts.iter_mut().enumerate() {
        for (c, out) in yt.chunks_mut(rows * m).enumerate() {
            tasks.push((ws[i].0, c * rows, out));
        }
    }
    crate::spin_pool::for_each(tasks, |(w, r0, out)| {
        // One activation row (decode): one kernel call per task, not per row, so the row loop
        // inlines inside the kernel's target features. Decode's rows are short (18 Q8_0 blocks
        // at k = 576), so a call, slicing and a horizontal sum per row are a visible share of
        // the work: one call per task makes q8_0 decode 1.01–1.14× faster.
        #[cfg(target_arch = "x86_64")]
        if m == 1 {
            match (simd, w) {
                // SAFETY: `Simd::Vnni` comes from `Simd::detect`, which found AVX2, FMA, F16C and
                // AVX-512 F/VL/BW/VNNI (`cpu::vnni256`). Rows `r0 .. r0 + out.len()` lie below
                // `n` (`out` is this task's chunk of the `n · m` outputs, `m` = 1), and the
                // kernel reads weight rows and activation blocks only through checked slices,
                // so a short `w` would panic, not read out of bounds.
                (Simd::Vnni, WeightData::Q8_0(a)) => return unsafe { avx2::q8_rows_vnni(a, r0, k, &act(0), out) },
                // SAFETY: both variants come from `Simd::detect` only after `cpu::avx2` found
                // AVX2, FMA and F16C. Rows `r0 .. r0 + out.len()` lie below `n` (as above; each
                // weight row is a checked slice), and `act(0).f`, the one slice the kernel reads
                // through raw pointers, is exactly `k` long (a checked slice of `x`).
                (Simd::Avx2 | Simd::Vnni, _) => return unsafe { avx2::rows(w, r0, k, &act(0), out) },
                (Simd::Portable, _) => {}
            }
        }
        for (i, o) in out.chunks_mut(m).enumerate() {
            for (j, y) in o.iter_mut().enumerate() {
                *y = row_dot(simd, w, r0 + i, k, &act(j));
            }
        }
    });
    if m == 1 {
        return yts;
    }
    yts.into_iter()
        .zip(ws)
        .map(|(yt, &(_, n))| {
            let mut y = vec![0f32; m * n];
            for (r, o) in yt.chunks(m).enumerate() {
                for (j, v) in o.iter().enumerate() {
                    y[j * n + r] = *v;
                }
            }
            y
        })
        .collect()
}

/// One activation row: as f32, and (for Q8_0 weights) as Q8 blocks `q` with scales `d` and
/// [`vnni_corrections`] `c`.
pub(crate) struct Act<'a> {
    f: &'a [f32],
    q: &'a [i8],
    d: &'a [f32],
    c: &'a [i32],
}

/// Per Q8 block of `q`, `−128 · Σ q`. VNNI multiplies unsigned by signed bytes; the kernel feeds
/// it `w + 128` (one xor) and `x`, and starts the block's first lane at this value, which removes
/// the `128 · Σ x` the offset adds. Taking |w| and moving w's sign onto x instead cost two more
/// instructions per block: one thread ran 24 GB/s in cache that way, 31 GB/s this way. The
/// integer block sums are exact; the lanes carry offsets that cancel only across lanes, so the
/// f32 sums round a little differently from the AVX2 kernel's (`bench/NOTES.md`).
fn vnni_corrections(q: &[i8]) -> Vec<i32> {
    q.chunks_exact(Q8_BLOCK).map(|b| -128 * b.iter().map(|&v| v as i32).sum::<i32>()).collect()
}

#[derive(Clone, Copy)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 VNNI on 256-bit registers (used by Q8_0).
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Simd {
    /// Whether the Q8_0 kernel is VNNI's (the only one that reads [`vnni_corrections`]).
    fn vnni(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Simd::Vnni = self {
            return true;
        }
        false
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::avx2() {
            return if crate::cpu::vnni256() { Simd::Vnni } else { Simd::Avx2 };
        }
        Simd::Portable
    }
}

fn row_dot(simd: Simd, w: WeightData, r: usize, k: usize, x: &Act) -> f32 {
    match (simd, w) {
        // SAFETY: a `Simd::Vnni` is made only by `Simd::detect` after `cpu::vnni256` found AVX2,
        // FMA, F16C and AVX-512 F/VL/BW/VNNI (the tests build one only where `detect` returns
        // it). The kernel reads the weights and the Q8 blocks of `x` through checked slices.
        #[cfg(target_arch = "x86_64")]
        (Simd::Vnni, WeightData::Q8_0(a)) => unsafe { avx2::q8_row_dot_vnni(a, r, k, x) },
        // SAFETY: both variants are made only after `cpu::avx2` found AVX2, FMA and F16C (in
        // `Simd::detect`, or in the tests where `detect` returned `Vnni`). Every `Act` is built
        // with `f` exactly `k` long, which the kernel's raw-pointer loads rely on; the weight row
        // is a checked slice.
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2 | Simd::Vnni, _) => unsafe { avx2::row_dot(w, r, k, x) },
        (Simd::Portable, _) => portable_row_dot(w, r, k, x),
    }
}

/// Eight partial sums so the compiler can vectorise without reassociating one chain.
fn dot_by(n: usize, x: &[f32], w: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    for i in 0..n {
        acc[i % 8] += w(i) * x[i];
    }
    acc.iter().sum()
}

fn portable_row_dot(w: WeightData, r: usize, k: usize, act: &Act) -> f32 {
    let x = act.f;
    match w {
        WeightData::F32(a) => dot_by(k, x, |i| a[r * k + i]),
        WeightData::F16(a) => dot_by(k, x, |i| a[r * k + i].to_f32()),
        WeightData::BF16(a) => dot_by(k, x, |i| a[r * k + i].to_f32()),
        WeightData::Q8_0(a) => {
            let row = &a[r * (k / Q8_BLOCK) * Q8_BYTES..][..(k / Q8_BLOCK) * Q8_BYTES];
            row.chunks_exact(Q8_BYTES)
                .zip(act.q.chunks_exact(Q8_BLOCK).zip(act.d))
                .map(|(b, (xq, xd))| {
                    let d = q8::scale(b);
                    let s: i32 = b[2..].iter().zip(xq).map(|(&w, &x)| w as i8 as i32 * x as i32).sum();
                    d * xd * s as f32
                })
                .sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for j in 0..m {
            for r in 0..n {
                y[j * n + r] = (0..k).map(|i| x[j * k + i] as f64 * w[r * k + i] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()))
    }

    #[test]
    fn every_type_and_path_matches_a_reference() {
        // k = 104 exercises the 32-wide body, the 8-wide loop and the scalar tail.
        let (n, k) = (37, 104);
        let w: Vec<f32> = (0..n * k).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
        for m in 1..=MAX_ROWS {
            let x: Vec<f32> = (0..m * k).map(|i| (i * 104729 % 997) as f32 / 498.0 - 1.0).collect();
            let want = reference(&x, m, k, &w, n);
            let f16s: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let bf16s: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let as_f32 = |v: &[f32]| reference(&x, m, k, v, n);
            let cases: [(WeightData, Vec<f32>); 3] = [
                (WeightData::F32(&w), want.clone()),
                (WeightData::F16(&f16s), as_f32(&f16s.iter().map(|v| v.to_f32()).collect::<Vec<_>>())),
                (WeightData::BF16(&bf16s), as_f32(&bf16s.iter().map(|v| v.to_f32()).collect::<Vec<_>>())),
            ];
            for (data, want) in cases {
                assert!(close(&gemv(&x, m, k, data, n), &want));
                assert!(close(&reference(&x, m, k, &data.widen(n, k), n), &want));
                let portable: Vec<f32> = (0..m)
                    .flat_map(|j| (0..n).map(move |r| (j, r)))
                    .map(|(j, r)| portable_row_dot(data, r, k, &Act { f: &x[j * k..(j + 1) * k], q: &[], d: &[], c: &[] }))
                    .collect();
                assert!(close(&portable, &want));
            }
            // Q8_0 needs whole blocks: the first 96 columns, quantized by hand (scale = max/127).
            let kq = 96;
            let mut q = Vec::new();
            for r in 0..n {
                for b in 0..kq / Q8_BLOCK {
                    let blk = &w[r * k + b * Q8_BLOCK..][..Q8_BLOCK];
                    let d = blk.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                    q.extend(f16::from_f32(d).to_le_bytes());
                    q.extend(blk.iter().map(|v| (v / d).round() as i8 as u8));
                }
            }
            let deq = WeightData::Q8_0(&q).widen(n, kq);
            let xq: Vec<f32> = (0..m).flat_map(|j| x[j * k..j * k + kq].to_vec()).collect();
            // Activations are quantized too: agreement to ~1% of the dot's magnitude.
            let want = reference(&xq, m, kq, &deq, n);
            let scale = reference(&xq.iter().map(|v| v.abs()).collect::<Vec<_>>(), m, kq, &deq.iter().map(|v| v.abs()).collect::<Vec<_>>(), n);
            let got = gemv(&xq, m, kq, WeightData::Q8_0(&q), n);
            assert!(got.iter().zip(&want).zip(&scale).all(|((g, w), s)| (g - w).abs() <= 1e-2 * s));
            let (qx, dx) = q8::quantize(&xq);
            let cx = vnni_corrections(&qx);
            // Every kernel this CPU can run (the dispatch above took the best one) agrees with
            // the portable loop on the same quantized activations.
            let by = |simd: Simd| -> Vec<f32> {
                (0..m)
                    .flat_map(|j| (0..n).map(move |r| (j, r)))
                    .map(|(j, r)| {
                        let blocks = j * kq / Q8_BLOCK..(j + 1) * kq / Q8_BLOCK;
                        let act = Act { f: &xq[j * kq..(j + 1) * kq], q: &qx[j * kq..(j + 1) * kq], d: &dx[blocks.clone()], c: &cx[blocks] };
                        row_dot(simd, WeightData::Q8_0(&q), r, kq, &act)
                    })
                    .collect()
            };
            let portable = by(Simd::Portable);
            assert!(close(&portable, &got));
            #[cfg(target_arch = "x86_64")]
            if matches!(Simd::detect(), Simd::Vnni) {
                assert!(close(&by(Simd::Avx2), &portable));
                // Decode reads rows in pairs (37 rows: pairs and odd last rows per task); each
                // row must come out exactly as the one-row kernel computes it.
                if m == 1 {
                    assert_eq!(got, by(Simd::Vnni));
                }
            }
        }
    }
}
