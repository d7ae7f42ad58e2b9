//! Weights and results must be numbers: a NaN or infinite weight would make every later result
//! silently wrong (a NaN perplexity, a 33 % accuracy), so each is named where it enters.

use anyhow::{Result, bail};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::host::with_cpu_f32;

/// Fails, naming `what` (plural: "the logits") and the first bad value's position, when `t`
/// holds NaN or ±inf.
pub fn check_tensor(t: &Tensor, what: &str) -> Result<()> {
    let first = match with_cpu_f32(&[t], |d| transact_kernels::elementwise::first_non_finite(d[0]))? {
        Some(found) => found,
        None => {
            let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            transact_kernels::elementwise::first_non_finite(&v)
        }
    };
    let Some(i) = first else { return Ok(()) };
    let dims = t.dims();
    let cols = dims.last().copied().unwrap_or(1).max(1);
    let value = t.flatten_all()?.get(i)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if dims.len() >= 2 {
        bail!("{what} hold {value} at row {}, column {}: the model's weights or activations overflow", i / cols, i % cols);
    }
    bail!("{what} hold {value} at index {i}: the model's weights or activations overflow");
}

/// Where a GGML block of type `t` keeps its f16 scales: (block bytes, offsets of the scales). A
/// block's values are small integers times these scales (plus a scaled minimum), so they are all
/// finite exactly when the scales are. `None` for the float types.
fn scale_layout(t: GgmlDType) -> Option<(usize, &'static [usize])> {
    use GgmlDType::*;
    Some(match t {
        Q4_0 => (18, &[0]),
        Q4_1 => (20, &[0, 2]),
        Q5_0 => (22, &[0]),
        Q5_1 => (24, &[0, 2]),
        Q8_0 => (34, &[0]),
        Q2K => (84, &[80, 82]),
        Q3K => (110, &[108]),
        Q4K => (144, &[0, 2]),
        Q5K => (176, &[0, 2]),
        Q6K => (210, &[208]),
        _ => return None,
    })
}

/// The first value (its index) of a GGML tensor of type `t` stored as `bytes` that is NaN or
/// infinite, read from the stored bits without dequantizing: a fraction of a dequantized pass.
/// `None` also for a type this does not know.
pub fn first_non_finite_stored(t: GgmlDType, bytes: &[u8]) -> Option<usize> {
    // An IEEE value is NaN or infinite exactly when its exponent bits are all ones. Chunks are
    // checked without an early exit, which vectorizes; the first bad chunk is then searched.
    fn any_bad(c: &[u8], width: usize, mask: u32) -> bool {
        let mut any = false;
        if width == 4 {
            for v in c.chunks_exact(4) {
                any |= u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & mask == mask;
            }
        } else {
            for v in c.chunks_exact(2) {
                any |= u32::from(u16::from_le_bytes([v[0], v[1]])) & mask == mask;
            }
        }
        any
    }
    fn first_bad(bytes: &[u8], width: usize, mask: u32) -> Option<usize> {
        let chunk = width << 16;
        let first = bytes.par_chunks(chunk).position_first(|c| any_bad(c, width, mask))?;
        let at = bytes[first * chunk..].chunks_exact(width).position(|v| any_bad(v, width, mask))?;
        Some((first << 16) + at)
    }
    match t {
        GgmlDType::F32 => first_bad(bytes, 4, 0x7f80_0000),
        GgmlDType::F16 => first_bad(bytes, 2, 0x7c00),
        GgmlDType::BF16 => first_bad(bytes, 2, 0x7f80),
        t => {
            let (size, scales) = scale_layout(t)?;
            let bad = |b: &[u8]| scales.iter().any(|&o| u16::from_le_bytes([b[o], b[o + 1]]) & 0x7c00 == 0x7c00);
            bytes.chunks_exact(size).position(bad).map(|block| block * t.block_size())
        }
    }
}

/// Fails, naming tensor `name` and the row and column of its first bad value, when the stored
/// tensor (`bytes` of type `t`, rows of `cols` values) holds NaN or ±inf.
pub fn check_stored(t: GgmlDType, bytes: &[u8], name: &str, cols: usize) -> Result<()> {
    match first_non_finite_stored(t, bytes) {
        Some(i) => bail!("tensor `{name}` holds a NaN or infinite value at row {}, column {} (weights must be finite)", i / cols.max(1), i % cols.max(1)),
        None => Ok(()),
    }
}

/// Fails when `x` is NaN or infinite: `what` says what it is (a log-likelihood, a perplexity).
pub fn check_value(x: f64, what: &str) -> Result<f64> {
    if !x.is_finite() {
        bail!("{what} is {x}: the model's weights or activations overflow, so there is no result to report");
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn stored_blocks_with_a_bad_scale_are_found() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 256), &dev).unwrap();
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0, GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K, GgmlDType::F16, GgmlDType::F32, GgmlDType::BF16] {
            let q = QTensor::quantize(&x, t).unwrap();
            let mut bytes = q.data().unwrap().into_owned();
            assert_eq!(first_non_finite_stored(t, &bytes), None, "{t:?}");
            // Poison the third block's first scale (or the third value) with an f16/f32 NaN.
            let (size, at) = scale_layout(t).map(|(s, o)| (s, o[0])).unwrap_or((t.type_size(), 0));
            let o = 2 * size + at;
            match t {
                GgmlDType::F32 => bytes[o..o + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
                GgmlDType::BF16 => bytes[o..o + 2].copy_from_slice(&half::bf16::INFINITY.to_le_bytes()),
                _ => bytes[o..o + 2].copy_from_slice(&half::f16::NAN.to_le_bytes()),
            }
            assert_eq!(first_non_finite_stored(t, &bytes), Some(2 * t.block_size()), "{t:?}");
            // And the dequantized tensor agrees.
            let bad = candle_core::quantized::ggml_file::qtensor_from_ggml(t, &bytes, vec![4, 256], &dev).unwrap();
            assert!(check_tensor(&bad.dequantize(&dev).unwrap(), "w").is_err(), "{t:?}");
        }
    }

    #[test]
    fn the_first_bad_value_is_named() {
        let mut v = vec![0.5f32; 12];
        v[7] = f32::NAN;
        let t = Tensor::from_vec(v, (3, 4), &candle_core::Device::Cpu).unwrap();
        let e = check_tensor(&t, "the logits").unwrap_err().to_string();
        assert!(e.contains("the logits hold NaN at row 1, column 3"), "{e}");
        assert!(check_tensor(&t.to_dtype(DType::BF16).unwrap(), "x").is_err());
        assert!(check_tensor(&Tensor::ones(5, DType::F32, &candle_core::Device::Cpu).unwrap(), "x").is_ok());
        assert!(check_value(f64::INFINITY, "the perplexity").unwrap_err().to_string().starts_with("the perplexity is inf"));
    }
}
