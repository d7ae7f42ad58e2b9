//! Matrix-vector products for decode. candle's CPU GEMV runs on one thread and reads f32 weights
//! at about half this machine's bandwidth, and converts bf16 to f32 on every call; decode is
//! bound by reading the weights, so this is where it spends its time (see `bench/NOTES.md`).
//!
//! Weight rows are split across rayon's threads; each row is read from memory once for all (at
//! most [`MAX_ROWS`]) activation rows. Inner loops use AVX2/FMA/F16C when the CPU has them
//! (detected at run time; plain builds target SSE2) and a portable loop otherwise; Q8_0 uses
//! AVX-512 VNNI's byte dot product where the CPU has it.

use half::{bf16, f16};
use rayon::prelude::*;

/// Activation rows up to which [`gemv`] beats a GEMM (decode is 1; scoring short batches ≤ 4).
pub const MAX_ROWS: usize = 4;
/// GGML Q8_0: blocks of 32 weights, an f16 scale followed by 32 signed bytes.
pub const Q8_BLOCK: usize = 32;
pub const Q8_BYTES: usize = 34;

/// One weight matrix `[n, k]`, row-major, in the type it is stored in.
#[derive(Clone, Copy)]
pub enum WeightData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// `k / 32` blocks of [`Q8_BYTES`] per row.
    Q8_0(&'a [u8]),
}

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
    let (xq, xd) = if ws.iter().any(|(w, _)| matches!(w, WeightData::Q8_0(_))) { quantize_q8(x) } else { (Vec::new(), Vec::new()) };
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
    super::team::for_each(tasks, |(w, r0, out)| {
        // One activation row (decode): one kernel call per task, not per row. Decode's rows
        // are short (18 Q8_0 blocks at k = 576); this bought q8_0 decode 1.01–1.14×.
        #[cfg(target_arch = "x86_64")]
        if m == 1 {
            match (simd, w) {
                (Simd::Vnni, WeightData::Q8_0(a)) => return unsafe { avx2::q8_rows_vnni(a, r0, k, &act(0), out) },
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
/// integer block sums are exact; the lanes now carry offsets that cancel only across lanes, so
/// the f32 sums round a little differently (`bench/NOTES.md`, change 22).
fn vnni_corrections(q: &[i8]) -> Vec<i32> {
    q.chunks_exact(Q8_BLOCK).map(|b| -128 * b.iter().map(|&v| v as i32).sum::<i32>()).collect()
}

/// `x` in blocks of 32 with scale max|x|/127 (GGML's Q8_0 rule), as values and scales.
///
/// Decode quantizes every GEMV's input on the calling thread before the parallel region, and
/// libm's `roundf` made that a few µs per call; the vector path bought q8_0 decode 4–5% at
/// context 256 (`bench/NOTES.md`, change 16).
fn quantize_q8(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if super::vmath::avx2() {
        let mut q = vec![0i8; x.len() / Q8_BLOCK * Q8_BLOCK];
        let d = x.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK)).map(|(x, q)| unsafe { avx2::q8_block(x, q) }).collect();
        return (q, d);
    }
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len() / Q8_BLOCK);
    for blk in x.chunks_exact(Q8_BLOCK) {
        let (s, values) = q8_block(blk);
        q.extend(values);
        d.push(s);
    }
    (q, d)
}

/// One block of 32 activations under the Q8_0 rule: its scale and its values.
pub(crate) fn q8_block(x: &[f32]) -> (f32, impl Iterator<Item = i8> + '_) {
    let s = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    (s, x.iter().map(move |v| (v * inv).round() as i8))
}

/// A whole `[n, k]` matrix as f32 (prefill multiplies widened weights), in parallel over
/// blocks of rows: candle's conversion runs on one thread and cost a tenth of a prefill.
pub fn widen(w: WeightData, n: usize, k: usize) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    const ROWS: usize = 32;
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(ROWS * k).enumerate().for_each(|(c, o)| {
        let (lo, hi) = (c * ROWS * k, c * ROWS * k + o.len());
        match w {
            WeightData::F32(a) => o.copy_from_slice(&a[lo..hi]),
            WeightData::F16(a) => a[lo..hi].convert_to_f32_slice(o),
            WeightData::BF16(a) => a[lo..hi].convert_to_f32_slice(o),
            WeightData::Q8_0(a) => {
                let bytes = &a[lo / Q8_BLOCK * Q8_BYTES..hi / Q8_BLOCK * Q8_BYTES];
                for (b, o) in bytes.chunks_exact(Q8_BYTES).zip(o.chunks_exact_mut(Q8_BLOCK)) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    o.iter_mut().zip(&b[2..]).for_each(|(o, &q)| *o = d * q as i8 as f32);
                }
            }
        }
    });
    out
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
        if super::vmath::avx2() && is_x86_feature_detected!("f16c") {
            return if super::vmath::vnni() { Simd::Vnni } else { Simd::Avx2 };
        }
        Simd::Portable
    }
}

fn row_dot(simd: Simd, w: WeightData, r: usize, k: usize, x: &Act) -> f32 {
    match (simd, w) {
        #[cfg(target_arch = "x86_64")]
        (Simd::Vnni, WeightData::Q8_0(a)) => unsafe { avx2::q8_row_dot_vnni(a, r, k, x) },
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
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
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
    fn vector_quantization_rounds_as_the_scalar_rule() {
        // A block with max 127 has scale 1, so these values land on exact halves and their
        // neighbours; the others are a sweep of ordinary values.
        let ties = [127.0, -2.5, 2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 3.4999998, -3.4999998, 0.49999997, 0.0, -0.0, 64.5, -63.5];
        let mut x: Vec<f32> = ties.iter().copied().chain((0..16).map(|i| i as f32 * 7.3 - 50.0)).collect();
        x.extend((0..32 * 20).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0));
        x.extend([0.0; 32]);
        let (q, d) = quantize_q8(&x);
        for (b, blk) in x.chunks_exact(Q8_BLOCK).enumerate() {
            let (s, v) = q8_block(blk);
            assert_eq!((s, v.collect::<Vec<_>>()), (d[b], q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK].to_vec()), "block {b}");
        }
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
                assert!(close(&reference(&x, m, k, &widen(data, n, k), n), &want));
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
            let deq = widen(WeightData::Q8_0(&q), n, kq);
            let xq: Vec<f32> = (0..m).flat_map(|j| x[j * k..j * k + kq].to_vec()).collect();
            // Activations are quantized too: agreement to ~1% of the dot's magnitude.
            let want = reference(&xq, m, kq, &deq, n);
            let scale = reference(&xq.iter().map(|v| v.abs()).collect::<Vec<_>>(), m, kq, &deq.iter().map(|v| v.abs()).collect::<Vec<_>>(), n);
            let got = gemv(&xq, m, kq, WeightData::Q8_0(&q), n);
            assert!(got.iter().zip(&want).zip(&scale).all(|((g, w), s)| (g - w).abs() <= 1e-2 * s));
            let (qx, dx) = quantize_q8(&xq);
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
