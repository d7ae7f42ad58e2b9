//! Linear layers in the type the weights are kept in: f32 (the default, and what pruning and
//! export work on), f16, bf16 or GGML Q8_0.
//!
//! A Q8_0 matrix `[n, k]` is kept as a `u8` tensor `[n, k/32 · 34]`: the GGUF block layout, so
//! decode reads 8.5 bits per weight. Few activation rows (decode) go through [`gemv`]; more
//! rows (prefill, scoring) multiply bf16 and Q8_0 weights in their own type where the CPU has
//! the AVX-512 instructions for it ([`gemm`]) and otherwise widen the weights to f32 for the
//! multi-threaded f32 GEMM ([`gemm::f32`]).

use candle_core::{DType, Device, Result, Storage, Tensor, bail};

use super::gemm;
use super::gemv::{self, Q8_BLOCK, Q8_BYTES, WeightData};
use super::vmath::with_cpu_f32;

/// The type the forward keeps its weight matrices in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale; norms stay f32.
    #[value(name = "q8_0")]
    Q8_0,
}

impl WeightDtype {
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Q8_0 => "q8_0",
        }
    }
}

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
        _ => match with_weight_data(&[w], |d| gemv::widen(d[0].0, n, k))? {
            Some(f) => Tensor::from_vec(f, (n, k), w.device()),
            // Not a contiguous CPU tensor.
            None if w.dtype() == DType::U8 => {
                let bytes = w.flatten_all()?.to_vec1::<u8>()?;
                Tensor::from_vec(gemv::widen(WeightData::Q8_0(&bytes), n, k), (n, k), w.device())
            }
            None => w.to_dtype(DType::F32),
        },
    }
}

/// `y = x · Wᵀ` for `x` of shape `[b, t, in]` (f32) and `W` of shape `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(linear_many(x, &[w])?.remove(0))
}

/// Runs `f` on the raw data and row count of each of `ws`; `None` when one of them is not a
/// contiguous CPU tensor (the caller falls back to candle).
pub(crate) fn with_weight_data<R>(ws: &[&Tensor], f: impl FnOnce(&[(WeightData, usize)]) -> R) -> Result<Option<R>> {
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let mut data = Vec::with_capacity(ws.len());
    for (w, (storage, layout)) in ws.iter().zip(&guards) {
        let (Storage::Cpu(cpu), Some((lo, hi))) = (&**storage, layout.contiguous_offsets()) else { return Ok(None) };
        let d = match w.dtype() {
            DType::F32 => WeightData::F32(&cpu.as_slice::<f32>()?[lo..hi]),
            DType::F16 => WeightData::F16(&cpu.as_slice::<half::f16>()?[lo..hi]),
            DType::BF16 => WeightData::BF16(&cpu.as_slice::<half::bf16>()?[lo..hi]),
            DType::U8 => WeightData::Q8_0(&cpu.as_slice::<u8>()?[lo..hi]),
            d => bail!("linear: weights of type {d:?} are not supported"),
        };
        data.push((d, w.dim(0)?));
    }
    Ok(Some(f(&data)))
}

/// [`linear`] of several weights applied to the same `x` (one parallel region when decoding).
pub fn linear_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (b, t, n_in) = x.dims3()?;
    for w in ws {
        if in_features(w)? != n_in {
            bail!("linear: input has {n_in} features, weight {:?} expects {}", w.dims(), in_features(w)?);
        }
    }
    // On the CPU: few rows through the GEMV; more through a GEMM in the weights' own type
    // where there is one for it. Everything else widens to f32 (below).
    let rows = b * t;
    let own_type = ws.iter().all(|w| matches!(w.dtype(), DType::BF16 | DType::U8));
    if matches!(x.device(), Device::Cpu) && (rows <= gemv::MAX_ROWS || own_type) {
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ys = with_weight_data(ws, |data| {
            if rows <= gemv::MAX_ROWS { Some(gemv::gemv_many(&xs, rows, n_in, data)) } else { gemm::gemm_many(&xs, rows, n_in, data) }
        })?;
        if let Some(Some(ys)) = ys {
            return ys.into_iter().zip(ws).map(|(y, w)| Tensor::from_vec(y, (b, t, w.dim(0)?), x.device())).collect();
        }
    }
    if matches!(x.device(), Device::Cpu) {
        // f32 products; other types widened first (f16; bf16 and Q8_0 where this CPU lacks the
        // AVX-512 kernels).
        let wf = ws.iter().map(|w| to_f32(w)).collect::<Result<Vec<_>>>()?;
        let all: Vec<&Tensor> = std::iter::once(x).chain(&wf).collect();
        // A few rows without re-laying the weights (`gemm/f32_small.rs`); more through gemm.
        let small = rows <= gemm::f32_small::MAX_M && gemm::f32_small::available();
        let ys = with_cpu_f32(&all, |d| {
            let (x, ws) = (d[0], &d[1..]);
            let product = |w: &&[f32]| if small { gemm::f32_small::matmul(x, rows, n_in, w, w.len() / n_in) } else { gemm::f32::matmul(1, rows, w.len() / n_in, n_in, x, w, true) };
            ws.iter().map(product).collect::<Vec<_>>()
        })?;
        if let Some(ys) = ys {
            return ys.into_iter().zip(ws).map(|(y, w)| Tensor::from_vec(y, (b, t, w.dim(0)?), x.device())).collect();
        }
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
