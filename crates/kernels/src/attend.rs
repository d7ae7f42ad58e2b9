//! One query head's attention over cached keys and values: the decode (and short-block) kernel
//! behind the model's KV cache.
//!
//! At context 1024 the plain loops cost ~20 ns per key (each score was one chain of dependent
//! FMAs, then a libm `exp` per key), a fifth of a q8_0 decode step. The AVX2 kernel scores eight
//! keys at once in independent chains, takes `exp` as a vector polynomial, and keeps the
//! output rows in registers while it accumulates the values (`bench/NOTES.md`). It returns the
//! softmax unnormalised ([`partial`]), so decode can split a head's keys across threads and
//! merge the pieces ([`combine`]). Keys and values are f32, f16 or 8-bit integers with one
//! scale per row ([`KvElem`]). f16 and 8-bit values are widened in registers, so they read
//! fewer bytes and compute in f32 all the same; 8-bit keys are scored in integers against the
//! query rounded to 8 bits ([`QueryQ8`]). A row's scale multiplies its score (keys) or its
//! softmax weight (values), never its `d` elements.

use half::f16;
use half::slice::HalfFloatSliceExt;

mod sealed {
    /// Only this crate's element types: the kernels read `F16` and `SCALED` as the element's
    /// size, which another type could break.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for i8 {}
}

/// What a KV cache stores keys and values as: f32, f16, or i8 with a scale per row (sealed).
pub trait KvElem: sealed::Sealed + Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// Whether this is IEEE half precision (the kernels widen it with F16C).
    const F16: bool;
    /// Whether each row carries a scale ([`KvRows::k_scale`]): the row's value is the scale
    /// times its elements.
    const SCALED: bool;
    /// The element's own value, before its row's scale.
    fn to_f32(self) -> f32;
    /// `dst ← src` (one row), rounded to this type; returns the row's scale (1 for floats).
    fn narrow_row(src: &[f32], dst: &mut [Self]) -> f32;
    /// The elements as 8-bit integers, for a type that is one (scored in integers, [`QueryQ8`]).
    fn as_i8(_x: &[Self]) -> Option<&[i8]> {
        None
    }
}

impl KvElem for f32 {
    const F16: bool = false;
    const SCALED: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn narrow_row(src: &[f32], dst: &mut [Self]) -> f32 {
        dst.copy_from_slice(src);
        1.0
    }
}

impl KvElem for f16 {
    const F16: bool = true;
    const SCALED: bool = false;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn narrow_row(src: &[f32], dst: &mut [Self]) -> f32 {
        dst.convert_from_f32_slice(src);
        1.0
    }
}

/// Symmetric 8-bit: the row's largest magnitude maps to ±127.
impl KvElem for i8 {
    const F16: bool = false;
    const SCALED: bool = true;
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn narrow_row(src: &[f32], dst: &mut [Self]) -> f32 {
        // Adding and taking away 1.5 · 2^23 rounds |x| < 2^22 to the nearest integer (ties to
        // even) in two vector adds, where `f32::round` is a libm call per element.
        const ROUND: f32 = 12_582_912.0;
        let max = src.iter().fold(0f32, |a, x| a.max(x.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        // `as` saturates, so a product rounding up to ±127.5 stays in range.
        dst.iter_mut().zip(src).for_each(|(q, x)| *q = ((x * inv + ROUND) - ROUND) as i8);
        scale
    }
    fn as_i8(x: &[Self]) -> Option<&[i8]> {
        Some(x)
    }
}

/// A query rounded to 8 bits as keys are ([`KvElem::narrow_row`]), so its scores against
/// 8-bit keys are integer dot products (one VNNI instruction per 32 elements, where widening
/// the keys to f32 cost two conversions and an FMA per 8): `scale · Σ q·k`, then times the
/// key's scale. Every path computes this same value.
pub struct QueryQ8 {
    q: Vec<i8>,
    scale: f32,
    /// `128 · Σ q`: VNNI multiplies unsigned by signed bytes, so keys go in as `k + 128`.
    bias: i32,
}

impl QueryQ8 {
    /// Each row of `d` of `q` rounded.
    pub fn rows(q: &[f32], d: usize) -> Vec<Self> {
        q.chunks_exact(d).map(Self::new).collect()
    }

    pub fn new(q: &[f32]) -> Self {
        let mut q8 = vec![0i8; q.len()];
        let scale = i8::narrow_row(q, &mut q8);
        let bias = 128 * q8.iter().map(|&x| x as i32).sum::<i32>();
        Self { q: q8, scale, bias }
    }

    /// `q` rounded to 8 bits and back: the query that 8-bit keys are scored against, as f32.
    pub fn rounded(q: &[f32]) -> Vec<f32> {
        let r = Self::new(q);
        r.q.iter().map(|&v| v as f32 * r.scale).collect()
    }

    /// The score of one key's integers, before the key's scale.
    fn score(&self, k: &[i8]) -> f32 {
        self.q.iter().zip(k).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() as f32 * self.scale
    }
}

/// Keys and values of a run of positions, `[n, d]` each, in a cache's element type, and for a
/// [`KvElem::SCALED`] type the rows' scales (`[n]` each; empty otherwise).
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub k_scale: &'a [f32],
    pub v_scale: &'a [f32],
}

impl<'a, T: KvElem> KvRows<'a, T> {
    /// Keys and values of a float type.
    #[cfg(test)]
    pub fn new(k: &'a [T], v: &'a [T]) -> Self {
        debug_assert!(!T::SCALED);
        Self { k, v, k_scale: &[], v_scale: &[] }
    }

    /// Positions `j0 .. j0 + n` of rows of `d`.
    pub fn range(self, j0: usize, n: usize, d: usize) -> Self {
        let scales = |s: &'a [f32]| if T::SCALED { &s[j0..j0 + n] } else { s };
        Self { k: &self.k[j0 * d..(j0 + n) * d], v: &self.v[j0 * d..(j0 + n) * d], k_scale: scales(self.k_scale), v_scale: scales(self.v_scale) }
    }
}

/// `t` queries (`q`, `o`: `[t, d]`, `q` already scaled) at positions `len ..` over keys and
/// values `[len + t, d]`: query `i` sees keys `0 ..= len + i`.
pub fn head<T: KvElem>(q: &[f32], kv: KvRows<T>, o: &mut [f32], d: usize, len: usize) {
    for (ti, (qv, ov)) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).enumerate() {
        let (_, sum) = partial(qv, kv, ov, d, len + ti + 1);
        ov.iter_mut().for_each(|o| *o /= sum);
    }
}

/// One query (`q`: `[d]`, scaled) over the first `n` keys and values, without the softmax's
/// division: writes `o = Σ_j e^(s_j − m) v_j` and returns `(m, Σ_j e^(s_j − m))` with `m` the
/// largest score. Partials over disjoint key ranges combine exactly ([`combine`]), which lets
/// decode split one head's keys across threads.
pub fn partial<T: KvElem>(q: &[f32], kv: KvRows<T>, o: &mut [f32], d: usize, n: usize) -> (f32, f32) {
    assert!(q.len() == d && o.len() == d, "attend::partial: q and o must hold one head of {d}");
    let kv = kv.range(0, n, d);
    #[cfg(target_arch = "x86_64")]
    // The kernel is compiled with F16C for every type (every AVX2 CPU has it).
    if d.is_multiple_of(8) && crate::cpu::avx2() {
        // SAFETY: `cpu::avx2` found AVX2, FMA and F16C, and `d` is a multiple of 8 (both just
        // checked). `kv.range` cut the keys and values to exactly `n` rows of `d` (checked
        // slices), and the kernel reads `o` through checked slices; `q` holds the `d` values the
        // kernel reads through raw pointers (asserted). `T` is one of this crate's element
        // types (`KvElem` is sealed), whose `F16` and `SCALED` tell the kernel the element size.
        return unsafe { avx2::partial(q, kv, o, d) };
    }
    portable(q, None, kv, o, d)
}

/// [`partial`] for the `g` queries of one KV group at once (`q`, `o`: `[g, d]`, `ms`: `[g]`),
/// over the first `n` keys and values: decode's kernel. On AVX2 it reads each key and value
/// once for the whole group, in one pass. For 8-bit keys `q8` holds the queries rounded
/// ([`QueryQ8::rows`]); otherwise it is empty.
pub fn group_partial<T: KvElem>(q: &[f32], q8: &[QueryQ8], kv: KvRows<T>, o: &mut [f32], ms: &mut [(f32, f32)], d: usize, n: usize) {
    let kv = kv.range(0, n, d);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && crate::cpu::avx2() {
        if let (Some(k), Some(v), true) = (T::as_i8(kv.k), T::as_i8(kv.v), d.is_multiple_of(32) && crate::cpu::vnni256()) {
            let kv = KvRows { k, v, k_scale: kv.k_scale, v_scale: kv.v_scale };
            // SAFETY: `cpu::vnni256` found AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI, and `d`
            // is a multiple of 32 (both just checked). The kernel takes its query count from
            // `q.len() / d` and its key count from `k.len() / d`, and reads every other
            // argument through checked slices.
            return unsafe { avx2::group_partial_vnni(q, q8, kv, o, ms, d) };
        }
        // SAFETY: `cpu::avx2` found AVX2, FMA and F16C, and `d` is a multiple of 8 (both
        // checked above). The kernel takes its query count from `q.len() / d` and its key count
        // from `kv.k.len() / d`, with `kv.v` cut to the same `n` rows by `kv.range`. `T` is one
        // of this crate's element types (`KvElem` is sealed), whose `F16` and `SCALED` tell the
        // kernel the element size.
        return unsafe { avx2::group_partial(q, q8, kv, o, ms, d) };
    }
    for (h, ((q, o), ms)) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).zip(ms).enumerate() {
        *ms = portable(q, q8.get(h), kv, o, d);
    }
}

/// Merges [`partial`] results `(m, sum, o)` of one query over disjoint key ranges into the
/// normalised attention output `out`.
pub fn combine<'a>(parts: impl Iterator<Item = (f32, f32, &'a [f32])> + Clone, out: &mut [f32]) {
    let m = parts.clone().fold(f32::NEG_INFINITY, |a, (m, _, _)| a.max(m));
    out.fill(0.0);
    let mut sum = 0f32;
    for (pm, ps, po) in parts {
        // An empty range has m = -inf and weight 0.
        let w = if ps > 0.0 { (pm - m).exp() } else { 0.0 };
        sum += w * ps;
        out.iter_mut().zip(po).for_each(|(o, p)| *o += w * p);
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// The plain loops; for 8-bit keys `q8` is `q` rounded when the caller has it already.
fn portable<T: KvElem>(q: &[f32], q8: Option<&QueryQ8>, kv: KvRows<T>, o: &mut [f32], d: usize) -> (f32, f32) {
    let mut p: Vec<f32> = match T::as_i8(kv.k) {
        Some(k8) => {
            let rounded;
            let q8 = match q8 {
                Some(q8) => q8,
                None => {
                    rounded = QueryQ8::new(q);
                    &rounded
                }
            };
            k8.chunks_exact(d).map(|kj| q8.score(kj)).collect()
        }
        None => kv.k.chunks_exact(d).map(|kj| dot(q, kj)).collect(),
    };
    if T::SCALED {
        p.iter_mut().zip(kv.k_scale).for_each(|(s, ks)| *s *= ks);
    }
    let (max, sum) = crate::elementwise::exp_minus_max(&mut p);
    if T::SCALED {
        p.iter_mut().zip(kv.v_scale).for_each(|(p, vs)| *p *= vs);
    }
    o.fill(0.0);
    for (p, vj) in p.iter().zip(kv.v.chunks_exact(d)) {
        o.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v.to_f32());
    }
    (max, sum)
}

/// Eight partial sums, so the compiler can vectorise without reassociating one chain.
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let tail = a.len() / 8 * 8;
    acc.iter().sum::<f32>() + a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention of one query over `k`, `v` in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], d: usize) -> Vec<f32> {
        let s: Vec<f64> = k.chunks_exact(d).map(|kj| q.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum()).collect();
        let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let p: Vec<f64> = s.iter().map(|s| (s - m).exp()).collect();
        let sum: f64 = p.iter().sum();
        (0..d).map(|c| (p.iter().zip(v.chunks_exact(d)).map(|(p, vj)| p * vj[c] as f64).sum::<f64>() / sum) as f32).collect()
    }

    fn close(got: &[f32], want: &[f32]) -> bool {
        got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs()))
    }

    #[test]
    fn kernels_match_a_reference() {
        // 19 keys: two blocks of eight and a tail; t = 3 queries see 17, 18 and 19 keys;
        // d = 72 takes one 64-wide and one 8-wide pass over the values, d = 6 the portable loop.
        // With `spike`, key 13 is ten times the last query: its score passes every earlier one
        // by far more than the one-pass kernel's lazy rescaling lets the running max lag.
        for (d, spike) in [(64, false), (72, false), (6, false), (64, true), (6, true)] {
            let (len, t) = (16, 3);
            let val = |i: usize, m: usize| ((i * m) % 1009) as f32 / 504.0 - 1.0;
            let q: Vec<f32> = (0..t * d).map(|i| val(i, 7)).collect();
            let mut k: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 13)).collect();
            if spike {
                let last: Vec<f32> = q[(t - 1) * d..].iter().map(|x| 10.0 * x).collect();
                k[13 * d..14 * d].copy_from_slice(&last);
            }
            let v: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 31)).collect();
            check(&q, KvRows::new(&k, &v), d, len, t);
            // An f16 cache: the kernels must compute exactly on the rounded keys and values.
            let (k16, v16): (Vec<f16>, Vec<f16>) = (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            assert!(k16.iter().zip(&k).any(|(a, b)| a.to_f32() != *b), "the test values must round in f16");
            check(&q, KvRows::new(&k16, &v16), d, len, t);
            // An 8-bit cache, rows of different magnitudes: the kernels compute on scale × integer.
            let quantize = |x: &[f32]| -> (Vec<i8>, Vec<f32>) {
                let mut out = vec![0i8; x.len()];
                let scales = x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate().map(|(j, (x, q))| i8::narrow_row(&x.iter().map(|x| x * (1 + j % 3) as f32).collect::<Vec<_>>(), q)).collect();
                (out, scales)
            };
            let ((k8, ks), (v8, vs)) = (quantize(&k), quantize(&v));
            assert!(ks.iter().any(|&s| s != ks[0]), "the rows' scales must differ");
            check(&q, KvRows { k: &k8, v: &v8, k_scale: &ks, v_scale: &vs }, d, len, t);
        }
    }

    /// Keys or values as f32, their rows' scales applied.
    fn widen<T: KvElem>(x: &[T], scales: &[f32], d: usize) -> Vec<f32> {
        x.iter().enumerate().map(|(i, x)| x.to_f32() * if T::SCALED { scales[i / d] } else { 1.0 }).collect()
    }

    fn check<T: KvElem>(q: &[f32], kv: KvRows<T>, d: usize, len: usize, t: usize) {
        let what = format!("d = {d}, f16 {}, scaled {}", T::F16, T::SCALED);
        let (kf, vf) = (widen(kv.k, kv.k_scale, d), widen(kv.v, kv.v_scale, d));
        // 8-bit keys are scored against each query rounded to 8 bits too ([`QueryQ8`]).
        let qr: Vec<f32> = if T::SCALED { q.chunks_exact(d).flat_map(QueryQ8::rounded).collect() } else { q.to_vec() };
        let mut got = vec![0f32; t * d];
        head(q, kv, &mut got, d, len);
        for ti in 0..t {
            let n = len + ti + 1;
            let want = reference(&qr[ti * d..][..d], &kf[..n * d], &vf[..n * d], d);
            assert!(close(&got[ti * d..][..d], &want), "{what}, query {ti}");
        }
        // The last query's keys split into ranges of 5 (and an empty one), then combined.
        let qv = &q[(t - 1) * d..];
        let n = len + t;
        let mut parts = Vec::new();
        for j0 in (0..n).step_by(5).chain([n]) {
            let j1 = (j0 + 5).min(n);
            let mut o = vec![0f32; d];
            let (m, sum) = if j1 > j0 { partial(qv, kv.range(j0, n - j0, d), &mut o, d, j1 - j0) } else { (f32::NEG_INFINITY, 0.0) };
            parts.push((m, sum, o));
        }
        let mut split = vec![0f32; d];
        combine(parts.iter().map(|(m, s, o)| (*m, *s, o.as_slice())), &mut split);
        assert!(close(&split, &reference(&qr[(t - 1) * d..], &kf, &vf, d)), "{what}, split");
        // The t queries as one group over the same keys: ranges of 1 to 19 keys (the one-pass
        // kernel's tail, one block, blocks and a tail, empty), split and combined.
        for step in [1, 5, 8, 11, 19] {
            let mut parts = Vec::new();
            for j0 in (0..n).step_by(step).chain([n]) {
                let j1 = (j0 + step).min(n);
                let (mut o, mut ms) = (vec![f32::NAN; t * d], vec![(0.0, 0.0); t]);
                let q8 = if T::SCALED { QueryQ8::rows(q, d) } else { Vec::new() };
                group_partial(q, &q8, kv.range(j0, n - j0, d), &mut o, &mut ms, d, j1 - j0);
                if j1 == j0 {
                    assert!(ms.iter().all(|&(m, s)| m == f32::NEG_INFINITY && s == 0.0), "{what}: empty range");
                }
                parts.push((ms, o));
            }
            for ti in 0..t {
                let mut got = vec![0f32; d];
                combine(parts.iter().map(|(ms, o)| (ms[ti].0, ms[ti].1, &o[ti * d..][..d])), &mut got);
                assert!(close(&got, &reference(&qr[ti * d..][..d], &kf, &vf, d)), "{what}, group query {ti}, ranges of {step}");
            }
        }
    }
}
