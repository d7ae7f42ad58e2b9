//! Rows grouped into the lines of a plot: the rows whose settings differ only in the ratio form
//! one series, named by the settings that vary across the sweep.

use crate::prune::compensate::Compensate;
use crate::prune::hidden::Axis;
use crate::sweep::results::Row;
use crate::sweep::spec::Point;

/// One line: rows of one setting at several sizes, smallest model first.
pub struct Series<'a> {
    pub label: String,
    /// The label without the training: a trained series and its untrained twin share a colour.
    pub family: String,
    /// Trained after pruning (drawn with filled markers).
    pub recovered: bool,
    pub rows: Vec<&'a Row>,
}

/// Which settings take more than one value among the pruned rows.
struct Varies {
    shots: bool,
    seed: bool,
}

fn varies(points: &[&Point]) -> Varies {
    let many = |f: &dyn Fn(&Point) -> String| points.iter().map(|p| f(p)).collect::<std::collections::BTreeSet<_>>().len() > 1;
    Varies { shots: many(&|p| p.shots.to_string()), seed: many(&|p| p.seed.to_string()) }
}

/// `100000` → `100K`.
pub fn tokens(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 && n % 100_000_000 == 0 => format!("{}B", n as f64 / 1e9),
        n if n >= 1_000_000 && n % 100_000 == 0 => format!("{}M", n as f64 / 1e6),
        n if n >= 1_000 && n % 100 == 0 => format!("{}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The series' label and its family (the label without the training parts).
fn label(p: &Point, v: &Varies) -> (String, String) {
    let mut parts = Vec::new();
    parts.push(match p.axis {
        Axis::Hidden => "hidden size".to_string(),
        Axis::Transitional => serde_json::to_value(p.scorer).ok().and_then(|s| s.as_str().map(str::to_string)).unwrap_or_default(),
    });
    if v.shots || p.shots > 1 {
        parts.push(format!("{} shot{}", p.shots, if p.shots == 1 { "" } else { "s" }));
    }
    if p.compensate == Compensate::Ls {
        parts.push("ls".into());
    }
    let family = parts.join(", ");
    if p.recover > 0 {
        parts.push(format!("+{} tokens", tokens(p.recover)));
    }
    if p.final_recover > 0 {
        parts.push(format!("+{} final", tokens(p.final_recover)));
    }
    if v.seed {
        parts.push(format!("seed {}", p.seed));
    }
    let family = if v.seed { format!("{family}, seed {}", p.seed) } else { family };
    (parts.join(", "), family)
}

/// The pruned rows as series, in the order their settings first appear.
pub fn series(rows: &[Row]) -> Vec<Series<'_>> {
    let pruned: Vec<&Row> = rows.iter().filter(|r| r.point.is_some()).collect();
    let points: Vec<&Point> = pruned.iter().filter_map(|r| r.point.as_ref()).collect();
    let v = varies(&points);
    let mut out: Vec<Series> = Vec::new();
    for r in pruned {
        let p = r.point.as_ref().expect("pruned rows have a point");
        let (l, family) = label(p, &v);
        match out.iter_mut().find(|s| s.label == l) {
            Some(s) => s.rows.push(r),
            None => out.push(Series { label: l, family, recovered: p.recover + p.final_recover > 0, rows: vec![r] }),
        }
    }
    for s in &mut out {
        s.rows.sort_by_key(|r| r.params_non_embedding);
    }
    out
}
