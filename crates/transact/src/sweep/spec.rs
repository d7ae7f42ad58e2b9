//! The sweep spec: one model, the settings every run shares (calibration, recovery, evaluation),
//! and one or more grids whose every combination is a run. TOML or JSON:
//!
//! ```toml
//! model = "assets/SmolLM2-135M-Instruct.Q4_1.gguf"
//! [eval]
//! tasks = ["all"]        # built-in task names, or "all"
//! limit = 100            # first N docs of each task
//! ppl = ["wiki"]
//! ppl_seq_len = 2048
//! ppl_windows = 20
//! [[grid]]
//! name = "scorers"
//! scorer = ["transact", "magnitude", "random", "wanda-sp", "flap"]
//! ratio = [0.25, 0.4, 0.5]
//! recover = [0, "100K"]
//! ```
//!
//! Every grid field takes one value or a list; a point that two grids share runs once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::SettingError;
use crate::prune::compensate::Compensate;
use crate::prune::hidden::Axis;
use crate::prune::scorer::ScorerKind;
use crate::train::LossKind;
use crate::train::options::count;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The dense model every run starts from (GGUF file or HF directory), relative to the
    /// directory `sweep` runs in.
    pub model: PathBuf,
    #[serde(default)]
    pub calib: CalibSettings,
    #[serde(default)]
    pub recovery: RecoverySettings,
    #[serde(default)]
    pub eval: EvalSettings,
    /// Measure prefill and decode speed once per distinct pruned shape.
    #[serde(default = "yes")]
    pub bench: bool,
    /// Keep every run's model files (by default only its reports stay: models are rebuilt by
    /// rerunning the row's `prune` command, which its report holds).
    #[serde(default)]
    pub keep_models: bool,
    #[serde(rename = "grid")]
    pub grids: Vec<Grid>,
}

fn yes() -> bool {
    true
}

/// Calibration shared by every run (`prune`'s `--calib --samples --seq-len --calib-batch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibSettings {
    pub source: String,
    pub samples: usize,
    pub seq_len: usize,
    pub batch: usize,
}

impl Default for CalibSettings {
    fn default() -> Self {
        Self { source: "mix".into(), samples: 128, seq_len: 256, batch: 8 }
    }
}

/// The built-in recovery's settings (`prune`'s `--recover-loss --recover-lr --recover-data`);
/// how many tokens is a grid field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySettings {
    pub loss: LossKind,
    pub lr: f64,
    pub data: String,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self { loss: LossKind::Kd, lr: 3e-4, data: "mix".into() }
    }
}

/// What every model (the dense one too) is scored on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Built-in task names, or `all`.
    pub tasks: Vec<String>,
    /// First N docs of each task (`None`: all).
    pub limit: Option<usize>,
    /// Perplexity corpora (as `eval --ppl`).
    pub ppl: Vec<String>,
    pub ppl_seq_len: usize,
    /// First N windows of each corpus (`None`: all).
    pub ppl_windows: Option<usize>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { tasks: vec!["all".into()], limit: Some(100), ppl: vec!["wiki".into()], ppl_seq_len: 2048, ppl_windows: Some(20) }
    }
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn values(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// A token count: a number or a string with a K/M/B suffix (`"100K"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Count {
    Number(u64),
    Text(String),
}

impl Count {
    fn tokens(&self) -> Result<u64, String> {
        match self {
            Self::Number(n) => Ok(*n),
            Self::Text(t) => count(t),
        }
    }
}

/// A grid: every combination of its values is a run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Shown in the report's legends and kept in each row (default `grid N`).
    pub name: Option<String>,
    /// Fraction of non-embedding parameters removed (0–1).
    pub ratio: OneOrMany<f64>,
    #[serde(default = "default_scorer")]
    pub scorer: OneOrMany<ScorerKind>,
    #[serde(default = "default_axis")]
    pub axis: OneOrMany<Axis>,
    #[serde(default = "default_shots")]
    pub shots: OneOrMany<usize>,
    #[serde(default = "default_compensate")]
    pub compensate: OneOrMany<Compensate>,
    /// Built-in recovery tokens over all shots (0: none).
    #[serde(default = "default_count")]
    pub recover: OneOrMany<Count>,
    /// Built-in recovery tokens after the last shot (0: none).
    #[serde(default = "default_count")]
    pub final_recover: OneOrMany<Count>,
    /// Seeds of the calibration draw (and of the random scorer).
    #[serde(default = "default_seed")]
    pub seed: OneOrMany<u64>,
}

fn default_scorer() -> OneOrMany<ScorerKind> {
    OneOrMany::One(ScorerKind::Transact)
}
fn default_axis() -> OneOrMany<Axis> {
    OneOrMany::One(Axis::Transitional)
}
fn default_shots() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn default_compensate() -> OneOrMany<Compensate> {
    OneOrMany::One(Compensate::None)
}
fn default_count() -> OneOrMany<Count> {
    OneOrMany::One(Count::Number(0))
}
fn default_seed() -> OneOrMany<u64> {
    OneOrMany::One(0)
}

/// One run of the grid: everything that differs between rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub axis: Axis,
    pub scorer: ScorerKind,
    pub ratio: f64,
    pub shots: usize,
    pub compensate: Compensate,
    pub recover: u64,
    pub final_recover: u64,
    pub seed: u64,
}

fn name<T: Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

impl Point {
    /// The row's identity in `results.jsonl` (a finished key is skipped on a rerun).
    pub fn key(&self) -> String {
        format!(
            "axis={} scorer={} ratio={} shots={} compensate={} recover={} final_recover={} seed={}",
            name(self.axis),
            name(self.scorer),
            self.ratio,
            self.shots,
            name(self.compensate),
            self.recover,
            self.final_recover,
            self.seed
        )
    }

    /// The run's folder under `runs/`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}-{}-r{}-k{}-{}-rec{}-fin{}-s{}",
            name(self.axis),
            name(self.scorer),
            self.ratio,
            self.shots,
            name(self.compensate),
            self.recover,
            self.final_recover,
            self.seed
        )
    }

    /// Training tokens in all: a grid's rows run cheapest first so its outline comes early.
    pub fn cost(&self) -> u64 {
        self.recover + self.final_recover
    }
}

/// Index of the grid labelled `label` (unnamed grids are `grid N`).
fn first_grid(grids: &[Grid], label: &str) -> usize {
    grids.iter().enumerate().position(|(i, g)| g.label(i) == label).unwrap_or(0)
}

impl Grid {
    /// The grid's name, or `grid N` (1-based) for an unnamed one.
    fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("grid {}", index + 1))
    }
}

/// A point with the names of the grids that hold it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub point: Point,
    pub grids: Vec<String>,
}

impl Spec {
    /// Reads a `.toml` or `.json` spec; every problem names the file.
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the sweep spec", path.display()))?;
        let spec: Spec = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).with_context(|| format!("{}: not a sweep spec", path.display()))?
        } else {
            toml::from_str(&text).with_context(|| format!("{}: not a sweep spec", path.display()))?
        };
        spec.plan().with_context(|| format!("{}: not a sweep spec", path.display()))?;
        Ok(spec)
    }

    /// Every distinct point of every grid: grid by grid in spec order, each grid's points
    /// cheapest first (fewest training tokens), in spec order among equals.
    pub fn plan(&self) -> Result<Vec<Planned>> {
        if self.grids.is_empty() {
            bail!("has no [[grid]]: nothing to run");
        }
        let e = &self.eval;
        if e.tasks.is_empty() && e.ppl.is_empty() {
            return Err(SettingError::new("eval", "scores nothing: give `tasks` and/or `ppl`").into());
        }
        if e.ppl_seq_len < 2 || e.limit == Some(0) || e.ppl_windows == Some(0) {
            return Err(SettingError::new("eval", "`ppl_seq_len` must be at least 2, `limit` and `ppl_windows` at least 1").into());
        }
        if self.calib.samples == 0 || self.calib.seq_len == 0 || self.calib.batch == 0 {
            return Err(SettingError::new("calib", "`samples`, `seq_len` and `batch` must be at least 1").into());
        }
        let mut planned: Vec<Planned> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (g, grid) in self.grids.iter().enumerate() {
            let label = grid.label(g);
            let counts = |c: &OneOrMany<Count>, what: &'static str| -> Result<Vec<u64>> {
                c.values().iter().map(|c| c.tokens().map_err(|p| SettingError::new(what, p).into())).collect()
            };
            let (recover, final_recover) = (counts(&grid.recover, "recover")?, counts(&grid.final_recover, "final_recover")?);
            let (axes, scorers, compensates, shots, ratios, seeds) =
                (grid.axis.values(), grid.scorer.values(), grid.compensate.values(), grid.shots.values(), grid.ratio.values(), grid.seed.values());
            let sizes = [axes.len(), scorers.len(), compensates.len(), shots.len(), recover.len(), final_recover.len(), ratios.len(), seeds.len()];
            if sizes.contains(&0) {
                bail!("grid `{label}` has an empty list: every field needs at least one value");
            }
            if let Some(r) = ratios.iter().find(|r| !(**r > 0.0 && **r < 1.0)) {
                return Err(
                    SettingError::new("ratio", format!("is the fraction removed and must lie strictly between 0 and 1, got {r} in grid `{label}`")).into()
                );
            }
            if compensates.contains(&Compensate::Auto) {
                return Err(SettingError::new("compensate", format!("is `none` or `ls` in a sweep (`auto` would hide which rows compensated), in grid `{label}`")).into());
            }
            if shots.contains(&0) {
                return Err(SettingError::new("shots", format!("must be at least 1 in grid `{label}`")).into());
            }
            // Every combination: index `i` in mixed radix, the first field varying fastest.
            for i in 0..sizes.iter().product::<usize>() {
                let mut rest = i;
                let mut pick = |n: usize| {
                    let k = rest % n;
                    rest /= n;
                    k
                };
                let point = Point {
                    axis: axes[pick(sizes[0])],
                    scorer: scorers[pick(sizes[1])],
                    compensate: compensates[pick(sizes[2])],
                    shots: shots[pick(sizes[3])],
                    recover: recover[pick(sizes[4])],
                    final_recover: final_recover[pick(sizes[5])],
                    ratio: ratios[pick(sizes[6])],
                    seed: seeds[pick(sizes[7])],
                };
                match index.get(&point.key()) {
                    Some(&i) if !planned[i].grids.contains(&label) => planned[i].grids.push(label.clone()),
                    Some(_) => {}
                    None => {
                        index.insert(point.key(), planned.len());
                        planned.push(Planned { point, grids: vec![label.clone()] });
                    }
                }
            }
        }
        // Grids run in spec order (its author's priority), each cheapest first; a point two
        // grids share runs with the first.
        planned.sort_by_key(|p| (first_grid(&self.grids, &p.grids[0]), p.point.cost()));
        Ok(planned)
    }

    /// The settings every row of a results folder must share: a rerun with other values would
    /// mix incomparable rows, so `sweep` refuses it.
    pub fn shared(&self, model_sha256: &str) -> Shared {
        Shared { model: self.model.display().to_string(), model_sha256: model_sha256.to_string(), calib: self.calib.clone(), recovery: self.recovery.clone(), eval: self.eval.clone() }
    }
}

/// What `sweep.json` records of the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    pub model: String,
    pub model_sha256: String,
    pub calib: CalibSettings,
    pub recovery: RecoverySettings,
    pub eval: EvalSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Planned>> {
        let spec: Spec = toml::from_str(text)?;
        spec.plan()
    }

    #[test]
    fn grids_expand_dedupe_and_run_cheapest_first() {
        let plan = parse(
            r#"
            model = "m.gguf"
            [[grid]]
            name = "scorers"
            scorer = ["transact", "magnitude"]
            ratio = [0.25, 0.5]
            recover = ["1K", 0]
            [[grid]]
            name = "iterative"
            ratio = 0.5
            shots = [1, 8]
            recover = 1000
            "#,
        )
        .unwrap();
        // 2 scorers × 2 ratios × 2 budgets, plus the 8-shot point (the 1-shot one is shared).
        assert_eq!(plan.len(), 9);
        // The first grid's four cheap points, its four trained ones, then the second grid's new point.
        let costs: Vec<u64> = plan.iter().map(|p| p.point.cost()).collect();
        assert_eq!(costs, [0, 0, 0, 0, 1000, 1000, 1000, 1000, 1000]);
        assert_eq!(plan[8].point.shots, 8);
        let shared =
            plan.iter().find(|p| p.point.shots == 1 && p.point.recover == 1000 && p.point.ratio == 0.5 && p.point.scorer == ScorerKind::Transact).unwrap();
        assert_eq!(shared.grids, ["scorers", "iterative"]);
        assert_eq!(shared.point.key(), "axis=transitional scorer=transact ratio=0.5 shots=1 compensate=none recover=1000 final_recover=0 seed=0");
        assert_eq!(shared.point.dir_name(), "transitional-transact-r0.5-k1-none-rec1000-fin0-s0");
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        for (text, needle) in [
            ("model = \"m\"\n[[grid]]\nratio = 1.5", "ratio"),
            ("model = \"m\"\n[[grid]]\nratio = 0.5\nshots = 0", "shots"),
            ("model = \"m\"\n[[grid]]\nratio = 0.5\nrecover = \"lots\"", "recover"),
            ("model = \"m\"\n[[grid]]\nratio = []", "empty list"),
            ("model = \"m\"\n[[grid]]\nratio = 0.5\ncompensate = [\"ls\", \"auto\"]", "compensate"),
            ("model = \"m\"", "grid"),
            ("model = \"m\"\n[eval]\ntasks = []\nppl = []\n[[grid]]\nratio = 0.5", "scores nothing"),
        ] {
            let e = match toml::from_str::<Spec>(text) {
                Ok(s) => format!("{:#}", s.plan().unwrap_err()),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(needle), "{text}: {e}");
        }
        for text in ["model = \"m\"\n[[grid]]\nratio = 0.5\nscorer = \"best\"", "model = \"m\"\ntypo = 1\n[[grid]]\nratio = 0.5"] {
            assert!(toml::from_str::<Spec>(text).is_err(), "{text}");
        }
    }
}
