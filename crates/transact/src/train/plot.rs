//! The loss curve as a PNG next to the trained model: training loss per step (and its parts),
//! with held-out perplexity on a second axis when the run evaluated.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::log::StepRecord;

/// Which number of a step record a line shows.
type Pick = fn(&StepRecord) -> Option<f64>;

/// Draws `log` and the held-out `evals` (step, perplexity; step 0 is before training) into
/// `path` (800 × 480).
pub fn loss_curve(log: &[StepRecord], evals: &[(u64, f64)], title: &str, path: &Path) -> Result<()> {
    if log.is_empty() {
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("{}: cannot draw the loss curve: {e}", path.display());
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let last = log.last().map_or(1, |r| r.step).max(1) as f64;
    let finite = |x: f64| x.is_finite().then_some(x);
    let losses: Vec<f64> = log.iter().filter_map(|r| finite(r.loss)).collect();
    let top = losses.iter().cloned().fold(0.0f64, f64::max) * 1.05;
    let evals: Vec<(f64, f64)> = evals.iter().filter(|e| e.1.is_finite()).map(|&(s, p)| (s as f64, p)).collect();
    let ppl_top = evals.iter().map(|e| e.1).fold(0.0f64, f64::max) * 1.1;

    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .right_y_label_area_size(if evals.is_empty() { 0 } else { 56 })
        .build_cartesian_2d(0.0..last, 0.0..top.max(1e-3))
        .map_err(|e| err(&e))?
        .set_secondary_coord(0.0..last, 0.0..ppl_top.max(1.0));
    chart.configure_mesh().x_desc("optimizer step").y_desc("training loss").draw().map_err(|e| err(&e))?;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("loss", BLUE, |r| Some(r.loss)),
        ("kd", RGBColor(0, 150, 0), |r| r.kd),
        ("ce", RGBColor(200, 120, 0), |r| r.ce),
    ];
    for (name, color, pick) in series {
        let points: Vec<(f64, f64)> = log.iter().filter_map(|r| Some((r.step as f64, finite(pick(r)?)?))).collect();
        // A part that is the whole loss (kd alone, ce alone) would hide the loss line.
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
        if points.is_empty() || (name != "loss" && points.iter().zip(log).all(|(p, r)| same(p.1, r.loss))) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if !evals.is_empty() {
        chart.configure_secondary_axes().y_desc("held-out wiki perplexity").draw().map_err(|e| err(&e))?;
        chart
            .draw_secondary_series(LineSeries::new(evals.clone(), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("wiki perplexity (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart.draw_secondary_series(evals.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
