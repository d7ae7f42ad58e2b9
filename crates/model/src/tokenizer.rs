//! Tokenizer: Hugging Face `tokenizer.json`, or GPT-2 byte-level BPE rebuilt from GGUF metadata.
//!
//! candle's `from_gguf` adds a prefix space for SmolLM2, so the GGUF path builds the `tokenizers`
//! BPE itself from the vocab and merges with the pre-tokenizer the file names.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// Special ids and policies that travel with the tokenizer.
#[derive(Debug, Clone, Default)]
pub struct TokenizerMeta {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    /// Whether the model expects BOS first. SmolLM2 does not: we never prepend it unless set.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub meta: TokenizerMeta,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab {}, {:?})", self.vocab_size(), self.meta)
    }
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok().or_else(|| v.to_i32().ok().map(|x| x as u32)))
}

fn md_strings<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Vec<&'a str>> {
    let arr = md.get(key).ok_or_else(|| anyhow!("missing tokenizer metadata `{key}`"))?;
    let arr = arr.to_vec().map_err(|_| anyhow!("tokenizer metadata `{key}` is not an array"))?;
    arr.iter()
        .map(|v| v.to_string().map(|s| s.as_str()).map_err(|_| anyhow!("`{key}` holds a non-string")))
        .collect()
}

impl Tokenizer {
    /// Rebuilds the tokenizer from GGUF `tokenizer.ggml.*` metadata (GPT-2 byte-level BPE only).
    pub fn from_gguf(md: &HashMap<String, Value>) -> Result<Self> {
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| anyhow!("missing tokenizer metadata `tokenizer.ggml.model`"))?;
        if model != "gpt2" {
            bail!(
                "tokenizer type `{model}` is not supported (only GPT-2 byte-level BPE); \
                 convert the model to a Hugging Face directory with a tokenizer.json instead"
            );
        }
        let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let merges = md_strings(md, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(v)) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            Some(Err(_)) => bail!("tokenizer metadata `tokenizer.ggml.token_type` is not an array"),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            bail!("tokenizer metadata `tokenizer.ggml.token_type` has {} entries for {} tokens", types.len(), tokens.len());
        }
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow!("malformed BPE merge `{m}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = crate::contain::contain("building the BPE tokenizer", || BPE::builder().vocab_and_merges(vocab, merges).build())?
            .map_err(|e| anyhow!("cannot build BPE tokenizer: {e}"))?;
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // SmolLM splits digits one by one before the GPT-2 regex.
            Some("smollm") => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            None | Some("default") | Some("gpt2") => byte_level.into(),
            Some(other) => bail!(
                "pre-tokenizer `{other}` is not supported (known: smollm, gpt2, default); \
                 convert the model to a Hugging Face directory with a tokenizer.json instead"
            ),
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(byte_level));
        // Control (3) and user-defined (4) tokens must match as whole strings, never be split.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, t)| AddedToken::from(s.to_string(), *t == 3))
            .collect();
        inner.add_special_tokens(added).map_err(|e| anyhow!("{e}"))?;
        let meta = TokenizerMeta {
            bos: md_u32(md, "tokenizer.ggml.bos_token_id"),
            eos: md_u32(md, "tokenizer.ggml.eos_token_id"),
            pad: md_u32(md, "tokenizer.ggml.padding_token_id"),
            unk: md_u32(md, "tokenizer.ggml.unknown_token_id"),
            add_bos: md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
            chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
        };
        Ok(Self { inner, meta })
    }

    /// Loads `tokenizer.json`, with special ids and BOS policy from `tokenizer_config.json` and
    /// `config.json` when present.
    pub fn from_hf_dir(dir: &Path, config_bos: Option<u32>, config_eos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: missing; a Hugging Face model directory needs its tokenizer.json", path.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
        let inner: tokenizers::Tokenizer = crate::contain::contain("parsing the tokenizer", || text.parse())
            .and_then(|r| r.map_err(|e| anyhow!("{e}")))
            .map_err(|e| anyhow!("{}: cannot parse tokenizer: {e}", path.display()))?;
        let mut meta = TokenizerMeta { bos: config_bos, eos: config_eos, ..Default::default() };
        let tc_path = dir.join("tokenizer_config.json");
        if tc_path.exists() {
            let text = std::fs::read_to_string(&tc_path)
                .with_context(|| format!("{}: cannot read", tc_path.display()))?;
            let tc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", tc_path.display()))?;
            let id_of = |key: &str| {
                let tok = match &tc[key] {
                    serde_json::Value::String(s) => Some(s.as_str()),
                    serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
                    _ => None,
                };
                tok.and_then(|t| inner.token_to_id(t))
            };
            meta.bos = meta.bos.or(id_of("bos_token"));
            meta.eos = meta.eos.or(id_of("eos_token"));
            meta.pad = id_of("pad_token");
            meta.unk = id_of("unk_token");
            meta.add_bos = tc["add_bos_token"].as_bool().unwrap_or(false);
            meta.chat_template = tc["chat_template"].as_str().map(str::to_string);
        }
        Ok(Self { inner, meta })
    }

    /// Token ids of `text`, without BOS or any other added token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = crate::contain::contain("tokenizing", || self.inner.encode(text, false))?.map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        crate::contain::contain("detokenizing", || self.inner.decode(ids, false))?.map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// The text of a growing sequence of ids, piece by piece as it becomes valid text.
    pub fn text_stream(&self) -> TextStream<'_> {
        TextStream(self.inner.decode_stream(false))
    }

    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every id the tokenizer can produce, and each special id, is a row of a model with
    /// `model_vocab` embedding rows: otherwise some text would index past the embedding.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        let ids = self.vocab_size();
        if ids > model_vocab {
            bail!("the tokenizer has {ids} tokens but the model's vocabulary has {model_vocab} rows");
        }
        // Ids need not be dense: the largest one decides.
        if let Some((token, id)) = self.inner.get_vocab(true).into_iter().max_by_key(|(_, id)| *id)
            && id as usize >= model_vocab
        {
            bail!("the tokenizer's token {token:?} has id {id}, outside the model's vocabulary of {model_vocab}");
        }
        let m = &self.meta;
        for (what, id) in [("BOS", m.bos), ("EOS", m.eos), ("padding", m.pad), ("unknown", m.unk)] {
            if let Some(id) = id.filter(|&id| id as usize >= model_vocab) {
                bail!("the {what} token id {id} is outside the model's vocabulary of {model_vocab}");
            }
        }
        Ok(())
    }

    /// The tokenizer as Hugging Face `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| anyhow!("tokenizer: {e}"))
    }
}

/// Decodes generated ids one at a time ([`Tokenizer::text_stream`]): a piece comes out once the
/// bytes so far form whole characters.
pub struct TextStream<'t>(
    tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
);

impl TextStream<'_> {
    /// The text `id` adds, if it completes any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        crate::contain::contain("detokenizing", || self.0.step(id))?.map_err(|e| anyhow!("tokenizer: {e}"))
    }
}
