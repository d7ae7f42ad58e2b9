//! The instruction sets the kernels dispatch on. Plain builds target the baseline x86-64 (SSE2),
//! so every faster path is chosen at run time; std caches each detection after its first call.

/// AVX2 with FMA and F16C: the 256-bit kernels (every AVX2 CPU has F16C).
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`avx2`] plus AVX-512 VNNI on 256-bit registers: Q8_0 decode and the 8-bit KV cache's scores.
pub fn vnni256() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX-512 F: the few-row f32 product ([`crate::gemm::f32_small`]).
pub fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX-512 F, BW and VNNI on 512-bit registers: the Q8_0 GEMM.
pub fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX-512 F, BW and BF16: the bf16 GEMM.
pub fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
