//! Linear layers in the type the weights are kept in: f32 (the default, and what pruning and
//! export work on), f16, bf16 or GGML Q8_0.
//!
//! A Q8_0 matrix `[n, k]` is kept as a `u8` tensor `[n, k/32 · 34]`: the GGUF block layout, so
//! decode reads 8.5 bits per weight. Few activation rows (decode) go through [`gemv`]; more
//! rows (prefill, scoring) multiply bf16 and Q8_0 weights in their own type where the CPU has
//! the AVX-512 instructions for it ([`gemm`]) and otherwise widen the weights to f32 for the
//! multi-threaded f32 GEMM ([`gemm::f32`]).

use candle_core::{DType, Device, Result, Tensor, bail};
use transact_kernels::q8::{Q8_BLOCK, Q8_BYTES};
use transact_kernels::{WeightData, gemm, gemv};

use crate::host::{with_cpu_f32, with_weight_data};

/// The type the forward keeps its weight matrices in (and an export writes them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale; norms stay f32.
    Q8_0,
}

crate::impl_choice!(WeightDtype {
    F32 => "f32", "32-bit floats: exact, what pruning and export work on";
    F16 => "f16", "16-bit IEEE floats: half the bytes";
    Bf16 => "bf16", "bfloat16: half the bytes, f32's range";
    Q8_0 => "q8_0", "8-bit blocks of 32 with an f16 scale (GGML Q8_0), CPU only; norms stay f32";
});

/// The f32 matrix `w` `[n, k]` in `dtype`.
pub fn convert(w: &Tensor, dtype: WeightDtype) -> Result<Tensor> {
    match dtype {
        WeightDtype::F32 => w.to_dtype(DType::F32),
        WeightDtype::F16 => w.to_dtype(DType::F16),
        WeightDtype::Bf16 => w.to_dtype(DType::BF16),
        WeightDtype::Q8_0 => {
            let (n, k) = w.dims2()?;
            if k % Q8_BLOCK != 0 {
                bail!("q8_0 needs rows that are a multiple of {Q8_BLOCK} wide, this matrix is [{n}, {k}]");
            }
            let q = candle_core::quantized::QTensor::quantize(w, candle_core::quantized::GgmlDType::Q8_0)?;
            let bytes = q.data()?.into_owned();
            Tensor::from_vec(bytes, (n, k / Q8_BLOCK * Q8_BYTES), w.device())
        }
    }
}

/// Columns of a stored matrix: a Q8_0 row holds 32 weights per 34 bytes.
fn in_features(w: &Tensor) -> Result<usize> {
    let cols = w.dim(1)?;
    Ok(if w.dtype() == DType::U8 { cols / Q8_BYTES * Q8_BLOCK } else { cols })
}

/// `w` as an f32 tensor (Q8_0 dequantized).
pub fn to_f32(w: &Tensor) -> Result<Tensor> {
    let (n, k) = (w.dim(0)?, in_features(w)?);
    match w.dtype() {
        DType::F32 => Ok(w.clone()),
        _ => match with_weight_data(&[w], |d| d[0].0.widen(n, k))? {
            Some(f) => Tensor::from_vec(f, (n, k), w.device()),
            // Not a contiguous CPU tensor.
            None if w.dtype() == DType::U8 => {
                let bytes = w.flatten_all()?.to_vec1::<u8>()?;
                Tensor::from_vec(WeightData::Q8_0(&bytes).widen(n, k), (n, k), w.device())
            }
            None => w.to_dtype(DType::F32),
        },
    }
}

/// `y = x · Wᵀ` for `x` of shape `[b, t, in]` (f32) and `W` of shape `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(linear_many(x, &[w])?.remove(0))
}

/// [`linear`] of several weights applied to the same `x` (one parallel region when decoding).
pub fn linear_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (b, t, n_in) = x.dims3()?;
    for w in ws {
        if in_features(w)? != n_in {
            bail!("linear: input has {n_in} features, weight {:?} expects {}", w.dims(), in_features(w)?);
        }
    }
    if matches!(x.device(), Device::Cpu)
        && let Some(ys) = linear_rows(&x.flatten_all()?.to_vec1::<f32>()?, b * t, n_in, ws)?
    {
        return ys.into_iter().zip(ws).map(|(y, w)| Tensor::from_vec(y, (b, t, w.dim(0)?), x.device())).collect();
    }
    let x2 = x.reshape((b * t, n_in))?;
    ws.iter()
        .map(|w| {
            let y = match (x.device(), w.dtype()) {
                (Device::Cpu, _) | (_, DType::F32) => x2.matmul(&to_f32(w)?.t()?)?,
                // On a GPU, 16-bit weights multiply in their own type (cuBLAS), as PyTorch does.
                (_, DType::F16 | DType::BF16) => x2.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)?,
                (dev, _) => bail!("linear: q8_0 weights run on the CPU only, not on {dev:?}"),
            };
            y.reshape((b, t, w.dim(0)?))
        })
        .collect()
}

/// Activation rows up to which products with 16-bit or Q8_0 weights that have no GEMM of their
/// own on this CPU go through the GEMV [`gemv::MAX_ROWS`] rows at a time (a batch of decode
/// steps): reading the weights `rows / 4` times costs less than widening whole matrices to f32
/// on every step.
const GEMV_CHUNKED_ROWS: usize = 32;

/// `y = x · Wᵀ` for each of `ws` on host rows `x` `[rows, n_in]` (each `[rows, out]`), on the
/// CPU kernels; `None` when a weight is not a contiguous CPU tensor.
pub fn linear_rows(x: &[f32], rows: usize, n_in: usize, ws: &[&Tensor]) -> Result<Option<Vec<Vec<f32>>>> {
    // Few rows through the GEMV; more through a GEMM in the weights' own type where there is
    // one for it. Everything else widens to f32 (below).
    let own_type = ws.iter().all(|w| matches!(w.dtype(), DType::BF16 | DType::U8));
    let all_f32 = ws.iter().all(|w| w.dtype() == DType::F32);
    if rows <= gemv::MAX_ROWS || own_type || (!all_f32 && rows <= GEMV_CHUNKED_ROWS) {
        let ys = with_weight_data(ws, |data| {
            if rows <= gemv::MAX_ROWS {
                return Some(gemv::gemv_many(x, rows, n_in, data));
            }
            if own_type && let Some(ys) = gemm::gemm_many(x, rows, n_in, data) {
                return Some(ys);
            }
            (rows <= GEMV_CHUNKED_ROWS).then(|| {
                let mut ys: Vec<Vec<f32>> = data.iter().map(|(_, n)| Vec::with_capacity(rows * n)).collect();
                for xc in x.chunks(gemv::MAX_ROWS * n_in) {
                    for (y, part) in ys.iter_mut().zip(gemv::gemv_many(xc, xc.len() / n_in, n_in, data)) {
                        y.extend(part);
                    }
                }
                ys
            })
        })?;
        if let Some(Some(ys)) = ys {
            return Ok(Some(ys));
        }
    }
    // f32 products; other types widened first (f16; bf16 and Q8_0 where this CPU lacks the
    // AVX-512 kernels).
    let wf = ws.iter().map(|w| to_f32(w)).collect::<Result<Vec<_>>>()?;
    let wf: Vec<&Tensor> = wf.iter().collect();
    // A few rows without re-laying the weights (`gemm/f32_small.rs`); more through gemm.
    let small = rows <= gemm::f32_small::MAX_M && gemm::f32_small::available();
    with_cpu_f32(&wf, |ws| {
        let product = |w: &&[f32]| if small { gemm::f32_small::matmul(x, rows, n_in, w, w.len() / n_in) } else { gemm::f32::matmul(1, rows, w.len() / n_in, n_in, x, w, true) };
        ws.iter().map(product).collect::<Vec<_>>()
    })
}

/// `tensors` (one dtype, on the CPU) copied into one buffer backed by huge pages
/// ([`transact_kernels::huge_pages`]), as views of their own shapes; anything else comes back
/// unchanged.
pub fn into_huge_pages(tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let Some(first) = tensors.first() else { return Ok(Vec::new()) };
    let dtype = first.dtype();
    if !matches!(first.device(), Device::Cpu) || tensors.iter().any(|t| t.dtype() != dtype) {
        return Ok(tensors.to_vec());
    }
    match dtype {
        DType::F32 => copy_into_huge_pages::<f32>(tensors),
        DType::U8 => copy_into_huge_pages::<u8>(tensors),
        DType::F16 => copy_into_huge_pages::<half::f16>(tensors),
        DType::BF16 => copy_into_huge_pages::<half::bf16>(tensors),
        _ => Ok(tensors.to_vec()),
    }
}

fn copy_into_huge_pages<T: transact_kernels::huge_pages::Zeroed + candle_core::WithDType>(tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let total: usize = tensors.iter().map(|t| t.elem_count()).sum();
    let (mut buf, start) = transact_kernels::huge_pages::aligned::<T>(total);
    let mut spans = Vec::with_capacity(tensors.len());
    let mut at = start;
    for t in tensors {
        let n = t.elem_count();
        buf[at..at + n].copy_from_slice(&t.flatten_all()?.to_vec1::<T>()?);
        spans.push((at, n, t.shape().clone()));
        at += n;
    }
    let len = buf.len();
    let all = Tensor::from_vec(buf, len, &Device::Cpu)?;
    spans.into_iter().map(|(at, n, shape)| all.narrow(0, at, n)?.reshape(shape)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_views_keep_values_and_shapes_in_one_storage() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6000.0, &dev).unwrap().reshape((60, 100)).unwrap();
        let b = Tensor::arange(0f32, 35.0, &dev).unwrap().reshape((5, 7)).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8] {
            let (a, b) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let out = into_huge_pages(&[a.clone(), b.clone()]).unwrap();
            for (got, want) in out.iter().zip([&a, &b]) {
                assert_eq!(got.dims(), want.dims());
                let diff = (got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap();
                assert_eq!(diff.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            }
            // Both are views into one buffer: b starts where a ends.
            let (_, la) = out[0].storage_and_layout();
            let (_, lb) = out[1].storage_and_layout();
            let (lo_a, hi_a) = la.contiguous_offsets().unwrap();
            assert_eq!(lb.contiguous_offsets().unwrap().0, hi_a);
            assert_eq!(hi_a - lo_a, 6000);
        }
    }
}
