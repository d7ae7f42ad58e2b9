//! This machine's two roofs, measured in the same run as the model: f32 matrix-multiply rate
//! (what prefill can reach) and memory read bandwidth (what decode can reach). On a GPU both
//! are the device's: a larger product (a small one measures launch latency) and a copy in
//! device memory.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Roofs {
    /// Best f32 GEMM rate through candle, in GFLOP/s: [512×2048]·[2048×2048] on the CPU,
    /// [4096×4096]·[4096×4096] on a GPU.
    pub gemm_gflops: f64,
    /// Best bandwidth in GB/s: on the CPU reading a 512 MiB buffer on every core, on a GPU
    /// copying 1 GiB in device memory (bytes read plus written).
    pub bandwidth_gbs: f64,
}

/// The f32 GEMM roof alone ([`Roofs::gemm_gflops`]): about a second on the CPU.
pub fn gemm(device: &Device) -> Result<f64> {
    let (m, k, n) = if device.is_cpu() { (512, 2048, 2048) } else { (4096, 4096, 4096) };
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    let mut best = 0f64;
    for _ in 0..8 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.sum_all()?.to_scalar::<f32>()?; // force completion on lazy devices
        best = best.max(2.0 * (m * k * n) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

/// Sum of `c` with sixteen independent partial sums: one running sum is a chain of dependent
/// adds that measures add latency (~4 GB/s), not memory.
fn stream_sum(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for block in c.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(block) {
            *a += v;
        }
    }
    acc.iter().sum()
}

fn bandwidth() -> f64 {
    // In huge pages, as the weights it is compared with (`huge_pages`): advised before the
    // first write, which is when pages are chosen.
    let mut buf = vec![0f32; 128 << 20];
    transact_kernels::huge_pages::advise(&buf);
    buf.fill(1.0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..8 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || stream_sum(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max((buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn device_bandwidth(device: &Device) -> Result<f64> {
    let src = Tensor::zeros(256 << 20, candle_core::DType::F32, device)?;
    let mut best = 0f64;
    for _ in 0..8 {
        device.synchronize()?;
        let t = Instant::now();
        let copy = src.copy()?;
        device.synchronize()?;
        best = best.max((2 * 4 * src.elem_count()) as f64 / t.elapsed().as_secs_f64() / 1e9);
        drop(copy);
    }
    Ok(best)
}

pub fn measure(device: &Device) -> Result<Roofs> {
    let bandwidth_gbs = if device.is_cpu() { bandwidth() } else { device_bandwidth(device)? };
    Ok(Roofs { gemm_gflops: gemm(device)?, bandwidth_gbs })
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
