//! Training text must not contain evaluation text: a training document that shares any run of
//! `N` = 13 words with an evaluation text is dropped (the 13-gram test of GPT-3's contamination
//! study). Words are normalised (lowercased, split on anything not alphanumeric), so case,
//! punctuation and spacing cannot hide a copy.
//!
//! Each 13-gram is kept as a 64-bit hash, the same on every run and machine: FNV-1a per word, the
//! 13 word hashes folded through SplitMix64's mixer. With a few million n-grams on each side a
//! false match has a probability around 1e-7 per run.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use anyhow::{Result, bail};
use rayon::prelude::*;
use serde::Serialize;

use super::corpus;
use crate::eval::task;

/// Words per n-gram.
pub const N: usize = 13;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One evaluation set in an index.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSet {
    pub name: String,
    /// Texts given (after removing exact duplicates).
    pub texts: usize,
    /// Texts shorter than `N` words: no 13-gram, so nothing of them can be matched.
    pub short_texts: usize,
    /// Distinct 13-grams.
    pub ngrams: usize,
}

/// The 13-grams of evaluation texts, each tagged with the sets it occurs in.
#[derive(Debug, Default)]
pub struct EvalIndex {
    /// 13-gram hash → bit i set when set i contains it.
    grams: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    sets: Vec<EvalSet>,
}

impl EvalIndex {
    /// Every evaluation text the project scores: `wiki` (BoolQ passages) and `book` (LAMBADA)
    /// perplexity corpora, and every request (context + continuation) of each built-in task
    /// (`task::builtin_names()`), each as its own set.
    pub fn evaluation_sets() -> Result<Self> {
        let mut index = Self::default();
        for name in ["wiki", "book"] {
            index.add(name, &corpus::load(name)?.docs)?;
        }
        for name in task::builtin_names() {
            let t = task::builtin(name)?;
            let texts: Vec<String> = t
                .docs
                .iter()
                .flat_map(|d| d.requests.iter().map(|r| format!("{}{}", r.context, r.continuation)))
                .collect();
            index.add(name, &texts)?;
        }
        Ok(index)
    }

    /// An index of one set, e.g. for tests or a custom evaluation corpus.
    pub fn from_texts(name: &str, texts: &[String]) -> Self {
        let mut index = Self::default();
        index.add(name, texts).expect("the first set always fits");
        index
    }

    /// Adds a set; at most 32 sets (one bit each).
    pub fn add(&mut self, name: &str, texts: &[String]) -> Result<()> {
        let bit = self.sets.len();
        if bit >= 32 {
            bail!("overlap index: cannot add `{name}`: at most 32 evaluation sets");
        }
        let mut unique: Vec<&str> = texts.iter().map(String::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        // Hashing runs in parallel; insertion is one pass over the sorted, deduplicated hashes.
        let per_text: Vec<Vec<u64>> = unique.par_iter().map(|t| ngram_hashes(&word_hashes(t))).collect();
        let short_texts = per_text.iter().filter(|g| g.is_empty()).count();
        let mut all: Vec<u64> = per_text.into_iter().flatten().collect();
        all.par_sort_unstable();
        all.dedup();
        self.grams.reserve(all.len());
        for &g in &all {
            *self.grams.entry(g).or_insert(0) |= 1 << bit;
        }
        self.sets.push(EvalSet { name: name.to_string(), texts: unique.len(), short_texts, ngrams: all.len() });
        Ok(())
    }

    /// The sets indexed, in the order added.
    pub fn sets(&self) -> &[EvalSet] {
        &self.sets
    }

    /// Distinct 13-grams over all sets.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// How many of `doc`'s 13-grams (counted with repeats) occur in some evaluation text.
    pub fn overlaps(&self, doc: &str) -> usize {
        self.scan(doc).matched
    }

    fn scan(&self, doc: &str) -> Scan {
        let words = word_hashes(doc);
        let mut s = Scan { words: words.len(), matched: 0, per_set: vec![0; self.sets.len()] };
        for g in ngram_hashes(&words) {
            if let Some(&mask) = self.grams.get(&g) {
                s.matched += 1;
                for (i, n) in s.per_set.iter_mut().enumerate() {
                    *n += (mask >> i & 1) as usize;
                }
            }
        }
        s
    }
}

/// One document against the index.
struct Scan {
    words: usize,
    matched: usize,
    per_set: Vec<usize>,
}

/// What `filter` found in one training source.
#[derive(Debug, Clone, Serialize)]
pub struct OverlapReport {
    pub source: String,
    /// Words per n-gram (`N`).
    pub n: usize,
    pub documents: usize,
    /// Documents sharing at least one 13-gram with any evaluation set: dropped.
    pub overlapping: usize,
    /// Normalised words in all documents, and in the dropped ones (tokens ≈ 1.3 × words).
    pub words: usize,
    pub dropped_words: usize,
    /// Per evaluation set, in index order.
    pub per_eval_set: Vec<SetOverlap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetOverlap {
    pub name: String,
    /// Documents sharing at least one 13-gram with this set.
    pub documents: usize,
    /// The documents' 13-grams found in this set, counted with repeats.
    pub ngrams: usize,
}

/// Splits `docs` (named `source` in the report) into those sharing no 13-gram with `index`,
/// kept in order, and a report of the rest.
pub fn filter(index: &EvalIndex, source: &str, docs: Vec<String>) -> (Vec<String>, OverlapReport) {
    let scans: Vec<Scan> = docs.par_iter().map(|d| index.scan(d)).collect();
    let mut report = OverlapReport {
        source: source.to_string(),
        n: N,
        documents: docs.len(),
        overlapping: 0,
        words: 0,
        dropped_words: 0,
        per_eval_set: index.sets.iter().map(|s| SetOverlap { name: s.name.clone(), documents: 0, ngrams: 0 }).collect(),
    };
    let mut kept = Vec::with_capacity(docs.len());
    for (doc, s) in docs.into_iter().zip(scans) {
        report.words += s.words;
        for (r, &n) in report.per_eval_set.iter_mut().zip(&s.per_set) {
            r.documents += usize::from(n > 0);
            r.ngrams += n;
        }
        if s.matched > 0 {
            report.overlapping += 1;
            report.dropped_words += s.words;
        } else {
            kept.push(doc);
        }
    }
    (kept, report)
}

/// FNV-1a of each normalised word: maximal runs of alphanumeric characters, lowercased.
fn word_hashes(text: &str) -> Vec<u64> {
    fn feed(h: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
    }
    let mut out = Vec::with_capacity(text.len() / 5);
    let mut h = FNV_OFFSET;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            h = feed(h, &[c.to_ascii_lowercase() as u8]);
            in_word = true;
        } else if !c.is_ascii() && c.is_alphanumeric() {
            for l in c.to_lowercase() {
                h = feed(h, l.encode_utf8(&mut [0; 4]).as_bytes());
            }
            in_word = true;
        } else if in_word {
            out.push(h);
            h = FNV_OFFSET;
            in_word = false;
        }
    }
    if in_word {
        out.push(h);
    }
    out
}

/// SplitMix64's finaliser: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash of every window of `N` consecutive words, in order (none when fewer words).
fn ngram_hashes(words: &[u64]) -> Vec<u64> {
    words.windows(N).map(|w| w.iter().fold(FNV_OFFSET, |h, &x| mix(h ^ x))).collect()
}

/// The map's keys are already well-mixed hashes: use them as they are instead of hashing again.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are stored; anything else still hashes correctly, just slower.
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct made-up words: w0 w1 ... (no accidental shared runs).
    fn words(prefix: &str, range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(" ")
    }

    fn eval() -> EvalIndex {
        EvalIndex::from_texts("eval", &[words("e", 0..40)])
    }

    #[test]
    fn shared_13_words_are_found_and_12_are_not() {
        let idx = eval();
        let with13 = format!("{} {} {}", words("t", 0..20), words("e", 10..23), words("t", 20..30));
        let with12 = format!("{} {} {}", words("t", 0..20), words("e", 10..22), words("t", 20..30));
        assert_eq!(idx.overlaps(&with13), 1);
        assert_eq!(idx.overlaps(&with12), 0);
        assert_eq!(idx.overlaps(&words("e", 0..14)), 2);
    }

    #[test]
    fn case_punctuation_and_spacing_are_ignored() {
        let idx = EvalIndex::from_texts(
            "eval",
            &["The quick brown fox jumps over the lazy dog, then naps in the warm sun.".to_string()],
        );
        assert!(idx.overlaps("He saw THE QUICK brown-fox jumps... over the lazy\n\ndog; then naps! in, the warm") > 0);
        assert_eq!(idx.overlaps("the quick brown fox jumps over the lazy cat then naps in the warm sun"), 0);
        assert_eq!(word_hashes("Élan ÉLAN élan"), vec![word_hashes("élan")[0]; 3]);
    }

    #[test]
    fn hashes_are_fixed_across_runs() {
        // FNV-1a 64 of "a" is a published constant; a change here changes every stored report.
        assert_eq!(word_hashes("A"), vec![0xaf63_dc4c_8601_ec8c]);
        assert_eq!(ngram_hashes(&word_hashes(&words("e", 0..13))).len(), 1);
    }

    #[test]
    fn filter_keeps_clean_documents_in_order_and_reports_the_rest() {
        let mut idx = eval();
        idx.add("other", &[words("o", 0..20), "too short".into()]).unwrap();
        assert_eq!(idx.sets()[1].short_texts, 1);
        assert_eq!(idx.sets()[0].ngrams, 40 - N + 1);
        let docs = vec![words("t", 0..30), words("e", 5..25), words("x", 0..5), words("o", 3..16)];
        let (kept, r) = filter(&idx, "test", docs.clone());
        assert_eq!(kept, vec![docs[0].clone(), docs[2].clone()]);
        assert_eq!((r.documents, r.overlapping, r.words, r.dropped_words), (4, 2, 68, 33));
        assert_eq!((r.per_eval_set[0].documents, r.per_eval_set[0].ngrams), (1, 20 - N + 1));
        assert_eq!((r.per_eval_set[1].documents, r.per_eval_set[1].ngrams), (1, 1));
    }
}
