//! f32 weights of a LLaMA model and the one naming layer that maps them to file tensor names.

use candle_core::Tensor;

use crate::config::{ModelConfig, RopeLayout};
use crate::rope::permute_rows;

/// Every weight tensor of a LLaMA model, by role. Loaders and exporters iterate over
/// [`TensorRole::all`] so tensor names live in exactly one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    MlpNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl TensorRole {
    /// All roles present in a model with this config (the LM head only when untied).
    pub fn all(cfg: &ModelConfig) -> Vec<TensorRole> {
        use TensorRole::*;
        let mut v = vec![Embed];
        for l in 0..cfg.n_layers() {
            v.extend([AttnNorm(l), Q(l), K(l), V(l), O(l), MlpNorm(l), Gate(l), Up(l), Down(l)]);
        }
        v.push(FinalNorm);
        if !cfg.tied_embeddings {
            v.push(LmHead);
        }
        v
    }

    pub fn gguf_name(self) -> String {
        use TensorRole::*;
        match self {
            Embed => "token_embd.weight".into(),
            FinalNorm => "output_norm.weight".into(),
            LmHead => "output.weight".into(),
            AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Q(l) => format!("blk.{l}.attn_q.weight"),
            K(l) => format!("blk.{l}.attn_k.weight"),
            V(l) => format!("blk.{l}.attn_v.weight"),
            O(l) => format!("blk.{l}.attn_output.weight"),
            MlpNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Gate(l) => format!("blk.{l}.ffn_gate.weight"),
            Up(l) => format!("blk.{l}.ffn_up.weight"),
            Down(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }

    pub fn hf_name(self) -> String {
        use TensorRole::*;
        match self {
            Embed => "model.embed_tokens.weight".into(),
            FinalNorm => "model.norm.weight".into(),
            LmHead => "lm_head.weight".into(),
            AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Q(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            K(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            V(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            O(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            MlpNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Gate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
            Up(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
            Down(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
        }
    }

    /// Shape as `[out, in]` (row-major, like `nn.Linear.weight`), or `[n]` for norms.
    pub fn shape(self, cfg: &ModelConfig) -> Vec<usize> {
        use TensorRole::*;
        let h = cfg.hidden_size;
        let ls = |l: usize| cfg.layers[l];
        match self {
            Embed | LmHead => vec![cfg.vocab_size, h],
            FinalNorm | AttnNorm(_) | MlpNorm(_) => vec![h],
            Q(l) => vec![ls(l).mha_width(), h],
            K(l) | V(l) => vec![ls(l).kv_width(), h],
            O(l) => vec![h, ls(l).mha_width()],
            Gate(l) | Up(l) => vec![ls(l).mlp_width, h],
            Down(l) => vec![h, ls(l).mlp_width],
        }
    }

    pub fn is_norm(self) -> bool {
        matches!(self, TensorRole::FinalNorm | TensorRole::AttnNorm(_) | TensorRole::MlpNorm(_))
    }
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub q_proj: Tensor,
    pub k_proj: Tensor,
    pub v_proj: Tensor,
    pub o_proj: Tensor,
    pub mlp_norm: Tensor,
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
}

impl LayerWeights {
    /// Layer `l`'s weights, asking `load` for each of its roles in [`TensorRole::all`] order.
    pub fn from_roles<E>(l: usize, mut load: impl FnMut(TensorRole) -> Result<Tensor, E>) -> Result<Self, E> {
        use TensorRole::*;
        Ok(Self {
            attn_norm: load(AttnNorm(l))?,
            q_proj: load(Q(l))?,
            k_proj: load(K(l))?,
            v_proj: load(V(l))?,
            o_proj: load(O(l))?,
            mlp_norm: load(MlpNorm(l))?,
            gate_proj: load(Gate(l))?,
            up_proj: load(Up(l))?,
            down_proj: load(Down(l))?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

impl Weights {
    /// Builds the weights by asking `load` for each role in [`TensorRole::all`] order.
    pub fn from_roles<E>(
        cfg: &ModelConfig,
        mut load: impl FnMut(TensorRole) -> Result<Tensor, E>,
    ) -> Result<Self, E> {
        use TensorRole::*;
        let embed = load(Embed)?;
        let mut layers = Vec::with_capacity(cfg.n_layers());
        for l in 0..cfg.n_layers() {
            layers.push(LayerWeights::from_roles(l, &mut load)?);
        }
        let final_norm = load(FinalNorm)?;
        let lm_head = if cfg.tied_embeddings { None } else { Some(load(LmHead)?) };
        Ok(Self { embed, layers, final_norm, lm_head })
    }

    /// The weight of `role` with its Q/K rows in the pair layout `to` (the model keeps them in
    /// `cfg.rope_layout`): what a writer stores for a format with a fixed layout.
    pub fn in_layout(&self, cfg: &ModelConfig, role: TensorRole, to: RopeLayout) -> candle_core::Result<Tensor> {
        let Some(t) = self.get(role) else { candle_core::bail!("the model has no tensor for {role:?}") };
        let heads = match role {
            TensorRole::Q(l) => cfg.layers[l].n_heads,
            TensorRole::K(l) => cfg.layers[l].n_kv_heads,
            _ => return Ok(t.clone()),
        };
        if cfg.rope_layout == to { Ok(t.clone()) } else { permute_rows(t, heads, to) }
    }

    pub fn get(&self, role: TensorRole) -> Option<&Tensor> {
        use TensorRole::*;
        Some(match role {
            Embed => &self.embed,
            FinalNorm => &self.final_norm,
            LmHead => return self.lm_head.as_ref(),
            AttnNorm(l) => &self.layers.get(l)?.attn_norm,
            Q(l) => &self.layers.get(l)?.q_proj,
            K(l) => &self.layers.get(l)?.k_proj,
            V(l) => &self.layers.get(l)?.v_proj,
            O(l) => &self.layers.get(l)?.o_proj,
            MlpNorm(l) => &self.layers.get(l)?.mlp_norm,
            Gate(l) => &self.layers.get(l)?.gate_proj,
            Up(l) => &self.layers.get(l)?.up_proj,
            Down(l) => &self.layers.get(l)?.down_proj,
        })
    }
}
