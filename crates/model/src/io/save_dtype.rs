//! The weight type an exported model is written in (`--dtype` of `convert`, `prune`, `train`):
//! `auto` keeps the size honest, the llama.cpp file types pick a type per tensor by llama.cpp's
//! own rule, so a file we write has the tensor types `llama-quantize` would give it.

use candle_core::quantized::GgmlDType;

use super::export::ExportFormat;
use super::storage::{Storage, ggml_name};
use crate::choice::{Choice, UnknownChoice};
use crate::config::ModelConfig;
use crate::weights::TensorRole;

/// A written model's weight type: a float type (HF or GGUF) or a llama.cpp file type (GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    Auto,
    F32,
    F16,
    Bf16,
    Q8_0,
    Q6K,
    Q5_1,
    Q5_0,
    Q5KM,
    Q5KS,
    Q4_1,
    Q4_0,
    Q4KM,
    Q4KS,
}

impl Choice for SaveDtype {
    const ALL: &'static [Self] = &[
        Self::Auto,
        Self::F32,
        Self::F16,
        Self::Bf16,
        Self::Q8_0,
        Self::Q6K,
        Self::Q5KM,
        Self::Q5KS,
        Self::Q5_1,
        Self::Q5_0,
        Self::Q4KM,
        Self::Q4KS,
        Self::Q4_1,
        Self::Q4_0,
    ];

    fn name(self) -> &'static str {
        use SaveDtype::*;
        match self {
            Auto => "auto",
            F32 => "f32",
            F16 => "f16",
            Bf16 => "bf16",
            Q8_0 => "q8_0",
            Q6K => "q6_k",
            Q5_1 => "q5_1",
            Q5_0 => "q5_0",
            Q5KM => "q5_k_m",
            Q5KS => "q5_k_s",
            Q4_1 => "q4_1",
            Q4_0 => "q4_0",
            Q4KM => "q4_k_m",
            Q4KS => "q4_k_s",
        }
    }

    fn about(self) -> &'static str {
        use SaveDtype::*;
        match self {
            Auto => "HF: bf16 (f32 or f16 if the source HF model was); GGUF: the source's type if writable, else the nearest at or above its precision",
            F32 => "32-bit floats, exact",
            F16 => "16-bit IEEE floats",
            Bf16 => "bfloat16 (the Hub's convention)",
            Q8_0 => "GGUF 8.5 bits/weight",
            Q6K => "GGUF 6.56 bits/weight k-quant",
            Q5_1 => "GGUF 6 bits/weight",
            Q5_0 => "GGUF 5.5 bits/weight",
            Q5KM => "GGUF Q5_K with Q6_K for half of attn_v/ffn_down (llama.cpp's mix; alias q5_k)",
            Q5KS => "GGUF Q5_K throughout",
            Q4_1 => "GGUF 5 bits/weight",
            Q4_0 => "GGUF 4.5 bits/weight",
            Q4KM => "GGUF Q4_K with Q6_K for half of attn_v/ffn_down (llama.cpp's mix; alias q4_k)",
            Q4KS => "GGUF Q4_K, Q5_K for the first attn_v/ffn_down",
        }
    }

    /// Names as `llama-quantize` takes them too: any case, and `q4_k`/`q5_k` for the `_m` mixes.
    fn parse(name: &str) -> Result<Self, UnknownChoice> {
        let n = name.trim().to_ascii_lowercase();
        let n = match n.as_str() {
            "q4_k" => "q4_k_m",
            "q5_k" => "q5_k_m",
            other => other,
        };
        Self::ALL.iter().copied().find(|v| v.name() == n).ok_or_else(|| UnknownChoice { given: name.to_string(), known: Self::ALL.iter().map(|v| v.name()).collect() })
    }
}

/// A tensor whose rows a block type does not divide, written in another type.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub tensor: String,
    pub row: usize,
    pub wanted: GgmlDType,
    pub used: GgmlDType,
}

/// llama.cpp's rule for which layers of a `_M` mix get more bits.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl SaveDtype {
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::Bf16)
    }

    /// Why this type cannot be a Hugging Face directory's (a GGUF block type), if it cannot.
    pub fn refused_for_hf(self) -> Option<String> {
        (!self.is_float() && self != Self::Auto).then(|| format!("{} is a GGUF block type; use `format` gguf, or f32, f16, bf16 or auto", self.name()))
    }

    /// The safetensors dtype and `torch_dtype` of an HF directory in this type.
    pub fn hf(self) -> anyhow::Result<(::safetensors::Dtype, &'static str)> {
        Ok(match self {
            Self::F32 => (::safetensors::Dtype::F32, "float32"),
            Self::F16 => (::safetensors::Dtype::F16, "float16"),
            Self::Bf16 => (::safetensors::Dtype::BF16, "bfloat16"),
            Self::Auto => anyhow::bail!("`auto` must be resolved against the source before writing"),
            q => anyhow::bail!("{}", q.refused_for_hf().unwrap_or_default()),
        })
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    pub fn file_type(self) -> u32 {
        use SaveDtype::*;
        match self {
            Auto | F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q4KS => 14,
            Q4KM => 15,
            Q5KS => 16,
            Q5KM => 17,
            Q6K => 18,
            Bf16 => 32,
        }
    }

    fn from_file_type(ft: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|d| *d != Self::Auto && d.file_type() == ft)
    }

    /// The type most tensors get.
    pub fn base(self) -> GgmlDType {
        use SaveDtype::*;
        match self {
            Auto | F32 => GgmlDType::F32,
            F16 => GgmlDType::F16,
            Bf16 => GgmlDType::BF16,
            Q8_0 => GgmlDType::Q8_0,
            Q6K => GgmlDType::Q6K,
            Q5_1 => GgmlDType::Q5_1,
            Q5_0 => GgmlDType::Q5_0,
            Q5KM | Q5KS => GgmlDType::Q5K,
            Q4_1 => GgmlDType::Q4_1,
            Q4_0 => GgmlDType::Q4_0,
            Q4KM | Q4KS => GgmlDType::Q4K,
        }
    }

    /// The GGUF type of tensor `role`, by llama.cpp's `llama-quantize` rule (without an importance
    /// matrix): norms f32; the LM head (the embeddings when tied) Q6_K, or Q8_0 when the base
    /// type's blocks do not divide its rows; the `_M` mixes give Q6_K to attn_v and ffn_down of
    /// the first and last eighth of the layers and every third between, `q4_k_s` Q5_K to the first
    /// four attn_v and the first eighth of ffn_down. A type whose blocks do not divide the rows
    /// falls back as llama.cpp's does (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), and to f16 where
    /// that does not fit either (llama.cpp refuses such tensors for the legacy types).
    pub fn tensor_type(self, role: TensorRole, cfg: &ModelConfig) -> (GgmlDType, Option<Fallback>) {
        use SaveDtype::*;
        use TensorRole::*;
        if role.is_norm() {
            return (GgmlDType::F32, None);
        }
        let base = self.base();
        if self.is_float() || self == Auto {
            return (base, None);
        }
        let row = *role.shape(cfg).last().unwrap_or(&0);
        let n = cfg.n_layers();
        let wanted = match role {
            LmHead => Self::head_type(base, row),
            Embed if cfg.tied_embeddings => Self::head_type(base, row),
            V(l) | Down(l) if matches!(self, Q4KM | Q5KM) && more_bits(l, n) => GgmlDType::Q6K,
            V(l) if self == Q4KS && l < 4 => GgmlDType::Q5K,
            Down(l) if self == Q4KS && l < n / 8 => GgmlDType::Q5K,
            _ => base,
        };
        if row.is_multiple_of(wanted.block_size()) {
            return (wanted, None);
        }
        let mut used = match wanted {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            _ => GgmlDType::F16,
        };
        if !row.is_multiple_of(used.block_size()) {
            used = GgmlDType::F16;
        }
        (used, Some(Fallback { tensor: role.gguf_name(), row, wanted, used }))
    }

    fn head_type(base: GgmlDType, row: usize) -> GgmlDType {
        if !row.is_multiple_of(base.block_size()) || base == GgmlDType::Q8_0 { GgmlDType::Q8_0 } else { GgmlDType::Q6K }
    }

    /// This type with `auto` resolved for writing `format` from a model stored as `source`, and
    /// why (for `auto`): HF → bf16 unless the source was an f32 or f16 HF model (kept, since
    /// bf16 would lose precision); GGUF → the source's file type, or its dominant tensor type,
    /// if writable, else the cheapest writable type at or above its bits per weight.
    pub fn resolve(self, format: ExportFormat, source: &Storage, source_is_hf: bool) -> (SaveDtype, Option<String>) {
        if self != Self::Auto {
            return (self, None);
        }
        let dominant = source.dominant_dtype().unwrap_or("F32").to_string();
        match format {
            ExportFormat::Hf => match (source_is_hf, dominant.as_str()) {
                (true, "F32") => (Self::F32, Some("auto: the source is f32".into())),
                (true, "F16") => (Self::F16, Some("auto: the source is f16".into())),
                _ => (Self::Bf16, Some(format!("auto: bf16, the Hub's convention (source {dominant})"))),
            },
            ExportFormat::Gguf => {
                if let Some(d) = source.file_type.and_then(Self::from_file_type) {
                    return (d, Some(format!("auto: the source's file type {}", d.name())));
                }
                let by_tensor = match dominant.as_str() {
                    "F32" => Some(Self::F32),
                    "F16" => Some(Self::F16),
                    "BF16" => Some(Self::Bf16),
                    "Q8_0" => Some(Self::Q8_0),
                    "Q6_K" => Some(Self::Q6K),
                    "Q5_1" => Some(Self::Q5_1),
                    "Q5_0" => Some(Self::Q5_0),
                    "Q5_K" => Some(Self::Q5KM),
                    "Q4_1" => Some(Self::Q4_1),
                    "Q4_0" => Some(Self::Q4_0),
                    "Q4_K" => Some(Self::Q4KM),
                    _ => None,
                };
                if let Some(d) = by_tensor {
                    return (d, Some(format!("auto: the source's type {dominant}")));
                }
                let bits = bits_per_weight(&dominant);
                let d = Self::ALL
                    .iter()
                    .copied()
                    .filter(|d| *d != Self::Auto && bits_per_weight(ggml_name(d.base())) >= bits)
                    .min_by(|a, b| bits_per_weight(ggml_name(a.base())).total_cmp(&bits_per_weight(ggml_name(b.base()))))
                    .unwrap_or(Self::F16);
                (d, Some(format!("auto: {} is not writable, {} is the nearest type at or above its precision", dominant, d.name())))
            }
        }
    }
}

/// Bits per weight of a llama.cpp type by name (unknown names count as 16).
fn bits_per_weight(name: &str) -> f64 {
    match name {
        "F32" => 32.0,
        "F16" | "BF16" => 16.0,
        "Q8_0" => 8.5,
        "Q6_K" => 6.5625,
        "Q5_1" => 6.0,
        "Q5_0" | "Q5_K" => 5.5,
        "Q4_1" => 5.0,
        "Q4_0" | "Q4_K" => 4.5,
        "Q3_K" => 3.4375,
        "Q2_K" => 2.625,
        _ => 16.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerShape;
    use crate::config::RopeLayout;

    fn cfg(hidden: usize, mlp: usize, tied: bool) -> ModelConfig {
        ModelConfig {
            name: "t".into(),
            hidden_size: hidden,
            vocab_size: 64,
            layers: vec![LayerShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, mlp_width: mlp }; 30],
            rope_theta: 1e4,
            rope_layout: RopeLayout::Adjacent,
            rms_eps: 1e-5,
            tied_embeddings: tied,
            max_position: 2048,
            rope_inv_freq: None,
        }
    }

    #[test]
    fn llama_quantize_rule_on_smollm2_shapes() {
        let c = cfg(576, 1536, true);
        // Rows of 576 are not a multiple of 256: k-quants fall back as llama.cpp's do.
        assert_eq!(SaveDtype::Q4KM.tensor_type(TensorRole::Q(5), &c).0, GgmlDType::Q5_0);
        assert_eq!(SaveDtype::Q5KM.tensor_type(TensorRole::Q(5), &c).0, GgmlDType::Q5_1);
        // Tied embeddings take the LM head's type: Q6_K, which falls back to Q8_0.
        assert_eq!(SaveDtype::Q4_1.tensor_type(TensorRole::Embed, &c).0, GgmlDType::Q8_0);
        // ffn_down rows of 1536 = 6 × 256: Q6_K on the layers of the mix, Q4_K elsewhere.
        assert_eq!(SaveDtype::Q4KM.tensor_type(TensorRole::Down(0), &c), (GgmlDType::Q6K, None));
        assert_eq!(SaveDtype::Q4KM.tensor_type(TensorRole::Down(4), &c), (GgmlDType::Q4K, None));
        assert_eq!(SaveDtype::Q4KM.tensor_type(TensorRole::Down(5), &c), (GgmlDType::Q6K, None));
        assert_eq!(SaveDtype::Q4KS.tensor_type(TensorRole::Down(2), &c), (GgmlDType::Q5K, None));
        assert_eq!(SaveDtype::Q4_1.tensor_type(TensorRole::AttnNorm(0), &c), (GgmlDType::F32, None));
        // A pruned MLP width of 682 fits no block: f16, reported.
        let p = cfg(576, 682, true);
        let (t, f) = SaveDtype::Q4_1.tensor_type(TensorRole::Down(3), &p);
        assert_eq!(t, GgmlDType::F16);
        assert_eq!(f.unwrap().row, 682);
        assert_eq!(SaveDtype::Q4_1.tensor_type(TensorRole::Up(3), &p), (GgmlDType::Q4_1, None));
    }

    #[test]
    fn mix_layers_match_llama_cpp() {
        let picked: Vec<usize> = (0..30).filter(|&l| more_bits(l, 30)).collect();
        assert_eq!(picked, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn names_and_auto() {
        assert_eq!(SaveDtype::parse("Q4_K").unwrap(), SaveDtype::Q4KM);
        assert_eq!(SaveDtype::parse("q5_k").unwrap(), SaveDtype::Q5KM);
        assert!(SaveDtype::parse("q3_k").is_err());
        let gguf = |ft: Option<u32>, d: &str| Storage {
            file_type: ft,
            tensors: vec![crate::io::storage::StoredTensor { name: "x".into(), group: "mlp", dtype: d.into(), elements: 1, bytes: 1 }],
            hub_id: None,
            license: None,
        };
        assert_eq!(SaveDtype::Auto.resolve(ExportFormat::Gguf, &gguf(Some(3), "Q4_1"), false).0, SaveDtype::Q4_1);
        assert_eq!(SaveDtype::Auto.resolve(ExportFormat::Gguf, &gguf(None, "Q3_K"), false).0, SaveDtype::Q4KM);
        assert_eq!(SaveDtype::Auto.resolve(ExportFormat::Hf, &gguf(Some(3), "Q4_1"), false).0, SaveDtype::Bf16);
        assert_eq!(SaveDtype::Auto.resolve(ExportFormat::Hf, &gguf(None, "F32"), true).0, SaveDtype::F32);
        assert_eq!(SaveDtype::Auto.resolve(ExportFormat::Gguf, &gguf(None, "BF16"), true).0, SaveDtype::Bf16);
    }
}
