//! CPU tensors handed to the kernels as slices, and results wrapped back into tensors.
//!
//! The engine's fast paths run only on contiguous CPU tensors; each adapter returns `None`
//! otherwise (a GPU tensor, a strided view), and the caller falls back to candle's ops.

use candle_core::{DType, Result, Storage, Tensor, bail};
use transact_kernels::WeightData;

/// Runs `f` on the raw data and row count of each of `ws`; `None` when one of them is not a
/// contiguous CPU tensor (the caller falls back to candle).
pub fn with_weight_data<R>(ws: &[&Tensor], f: impl FnOnce(&[(WeightData, usize)]) -> R) -> Result<Option<R>> {
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

/// `f` over the data of `ts`, when each is a contiguous f32 tensor on the CPU.
pub fn with_cpu_f32<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<Option<R>> {
    let r = with_weight_data(ts, |data| {
        let fs: Option<Vec<&[f32]>> = data.iter().map(|(d, _)| if let WeightData::F32(x) = d { Some(*x) } else { None }).collect();
        fs.map(|fs| f(&fs))
    })?;
    Ok(r.flatten())
}

/// `a + b` for same-shape tensors, on rayon's threads where both are contiguous CPU f32
/// ([`transact_kernels::elementwise::add`]); candle's add otherwise.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() == b.shape()
        && let Some(sum) = with_cpu_f32(&[a, b], |x| transact_kernels::elementwise::add(x[0], x[1]))?
    {
        return Tensor::from_vec(sum, a.shape(), a.device());
    }
    a + b
}
