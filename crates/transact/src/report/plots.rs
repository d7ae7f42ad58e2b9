//! The report's figures, drawn with plotters on any backend: each is written as a PNG (for the
//! Markdown report and the README) and an SVG string (inlined into the HTML page).

use std::fmt::Display;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::series::Series;
use crate::calibrate::activations::ActivationStats;
use crate::prune::scorer::{self, ScorerKind};
use crate::sweep::results::Row;

/// A plotters result as an anyhow one.
pub(crate) trait Drawn<T> {
    fn drawn(self) -> Result<T>;
}

impl<T, E: Display> Drawn<T> for std::result::Result<T, E> {
    fn drawn(self) -> Result<T> {
        self.map_err(|e| anyhow!("cannot draw a figure: {e}"))
    }
}

/// Draws a figure twice with the same code: into `DIR/NAME.png` and into SVG, written to
/// `DIR/NAME.svg` and the value of the macro. `$root` names the drawing area in `$body` (a `Result<()>`).
macro_rules! figure {
    ($dir:expr, $name:expr, $size:expr, |$root:ident| $body:expr) => {{
        use plotters::prelude::*;
        use $crate::report::plots::Drawn as _;
        let png = $dir.join(format!("{}.png", $name));
        {
            let $root = BitMapBackend::new(&png, $size).into_drawing_area();
            $root.fill(&WHITE).drawn()?;
            $body?;
            $root.present().drawn()?;
        }
        let mut svg = String::new();
        {
            let $root = SVGBackend::with_string(&mut svg, $size).into_drawing_area();
            $root.fill(&WHITE).drawn()?;
            $body?;
            $root.present().drawn()?;
        }
        std::fs::write($dir.join(format!("{}.svg", $name)), &svg)?;
        svg
    }};
}
pub(crate) use figure;

const FONT: &str = "sans-serif";

/// The colour of series `i`; the trained and untrained variants of one setting share it.
/// Twenty-four colours, repeating after that (the paper grid's recovery figure has 22 series).
pub fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 24] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 128),
        RGBColor(128, 128, 0),
        RGBColor(0, 128, 128),
        RGBColor(128, 0, 0),
        RGBColor(218, 165, 32),
        RGBColor(50, 205, 50),
        RGBColor(75, 0, 130),
        RGBColor(250, 128, 114),
        RGBColor(47, 79, 79),
        RGBColor(199, 21, 133),
        RGBColor(0, 0, 255),
        RGBColor(139, 69, 19),
        RGBColor(0, 100, 0),
        RGBColor(255, 0, 255),
    ];
    COLORS[i % COLORS.len()]
}

/// How a series is drawn: its colour (by family) and whether it was trained.
pub struct Look {
    pub color: RGBColor,
    pub filled: bool,
}

/// Looks of `series`: one colour per family (the label without its training), filled markers
/// and solid lines for trained series, hollow and dashed for untrained ones.
pub fn looks(series: &[Series]) -> Vec<Look> {
    let mut families: Vec<&str> = Vec::new();
    series
        .iter()
        .map(|s| {
            let i = families.iter().position(|f| *f == s.family).unwrap_or_else(|| {
                families.push(&s.family);
                families.len() - 1
            });
            Look { color: color(i), filled: s.recovered }
        })
        .collect()
}

/// A chart on `area` with the report's caption, margin and label areas (`y_labels` pixels wide).
fn framed<'a, 'b, DB: DrawingBackend>(area: &'a DrawingArea<DB, Shift>, title: &str, y_labels: u32) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(title, (FONT, 18)).margin(10).x_label_area_size(40).y_label_area_size(y_labels);
    b
}

/// The quality figure's legend entry for the dense model.
pub const DENSE_LABEL: &str = "dense (triangle, dotted)";

/// Columns of a legend at width `w` whose longest label has `chars` characters: as many as fit
/// (~7.5 px a character at 14 px, after the 34 px marker), at least 300 px each.
fn legend_columns(chars: usize, w: u32) -> usize {
    let col = (34 + chars * 15 / 2 + 24).max(300) as u32;
    (w / col).max(1) as usize
}

/// Entries of a legend drawn below the plots, in as many columns as fit.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, RGBColor, bool)]) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let cols = legend_columns(entries.iter().map(|e| e.0.chars().count()).max().unwrap_or(0), w);
    let col_w = (w as usize / cols) as i32;
    for (i, (label, color, filled)) in entries.iter().enumerate() {
        let (x, y) = (12 + (i % cols) as i32 * col_w, 10 + (i / cols) as i32 * 20);
        let style = if *filled { color.stroke_width(2) } else { color.stroke_width(1) };
        area.draw(&PathElement::new(vec![(x, y + 6), (x + 26, y + 6)], style)).drawn()?;
        let marker = if *filled { color.filled() } else { color.stroke_width(1) };
        area.draw(&Circle::new((x + 13, y + 6), 4, marker)).drawn()?;
        area.draw(&Text::new(label.clone(), (x + 34, y), (FONT, 14))).drawn()?;
    }
    Ok(())
}

/// Pixels the legend of `labels` needs at width `w`.
pub fn legend_height<'a>(labels: impl IntoIterator<Item = &'a str>, w: u32) -> u32 {
    let (n, chars) = labels.into_iter().fold((0usize, 0), |(n, c), l| (n + 1, c.max(l.chars().count())));
    (n.div_ceil(legend_columns(chars, w)) as u32) * 20 + 16
}

/// A panel of one number against non-embedding parameters (millions), a line per series and
/// the dense model as a dotted reference; `log` draws the number on a log scale.
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    log: bool,
    series: &[Series],
    looks: &[Look],
    dense: Option<&Row>,
    value: &dyn Fn(&Row) -> Option<f64>,
) -> Result<()> {
    let y = |r: &Row| value(r).filter(|v| v.is_finite() && (!log || *v > 0.0)).map(|v| if log { v.log10() } else { v });
    let x = |r: &Row| r.params_non_embedding as f64 / 1e6;
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.rows.iter().copied()).chain(dense).filter_map(|r| Some((x(r), y(r)?))).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xpad, ypad) = (((x1 - x0) * 0.05).max(1.0), ((y1 - y0) * 0.08).max(if log { 0.05 } else { 0.005 }));
    let mut chart = framed(area, title, 60)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad), (y0 - ypad)..(y1 + ypad))
        .drawn()?;
    let span = y1 - y0 + 2.0 * ypad;
    let unlog = |v: &f64| if log { log_label(*v, span) } else { format!("{v:.2}") };
    chart
        .configure_mesh()
        .x_desc("non-embedding parameters (millions)")
        .y_desc(y_desc)
        .y_label_formatter(&unlog)
        .label_style((FONT, 13))
        .light_line_style(WHITE)
        .draw()
        .drawn()?;
    if let Some(d) = dense.and_then(|d| Some((x(d), y(d)?))) {
        chart.draw_series(DashedLineSeries::new(vec![(x0 - xpad, d.1), (x1 + xpad, d.1)], 4, 4, BLACK.stroke_width(1))).drawn()?;
        chart.draw_series(std::iter::once(TriangleMarker::new(d, 6, BLACK.filled()))).drawn()?;
    }
    for (s, look) in series.iter().zip(looks) {
        let points: Vec<(f64, f64)> = s.rows.iter().filter_map(|r| Some((x(r), y(r)?))).collect();
        if look.filled {
            chart.draw_series(LineSeries::new(points.clone(), look.color.stroke_width(2))).drawn()?;
        } else {
            chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, look.color.stroke_width(1))).drawn()?;
        }
        let style = if look.filled { look.color.filled() } else { look.color.stroke_width(1) };
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style))).drawn()?;
    }
    Ok(())
}

/// The label of tick `v` (a log10 value) of an axis spanning `span` decades: over two decades or
/// more only whole decades are labelled (10, 100, 1000, 1e4, …), so the ticks read as round numbers.
fn log_label(v: f64, span: f64) -> String {
    let whole = (v - v.round()).abs() < 1e-6;
    match (span >= 2.0, whole) {
        (true, false) => String::new(),
        (true, true) if v.round() > 4.0 => format!("1e{}", v.round()),
        _ => format!("{:.0}", 10f64.powf(v)),
    }
}

/// Perplexity (log) and mean accuracy against size, one line per series.
pub fn quality<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &[Series], dense: Option<&Row>, corpus: &str) -> Result<()> {
    let looks = looks(series);
    let (w, h) = root.dim_in_pixel();
    let entries: Vec<(String, RGBColor, bool)> = series
        .iter()
        .zip(&looks)
        .map(|(s, l)| (s.label.clone(), l.color, l.filled))
        .chain(dense.map(|_| (DENSE_LABEL.to_string(), BLACK, true)))
        .collect();
    let (plots, key) = root.split_vertically(h - legend_height(entries.iter().map(|e| e.0.as_str()), w));
    let (left, right) = plots.split_horizontally(w / 2);
    let ppl = |r: &Row| r.perplexity.get(corpus).copied();
    panel(&left, &format!("{corpus} perplexity (lower is better)"), "token perplexity (log scale)", true, series, &looks, dense, &ppl)?;
    let acc = |r: &Row| r.mean_acc.map(|a| 100.0 * a);
    panel(&right, "mean accuracy over the tasks (higher is better)", "accuracy (%)", false, series, &looks, dense, &acc)?;
    legend(&key, &entries)
}

/// Speed and KV cache against size: one marker per distinct shape (pruned axis by colour).
pub fn speed<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, rows: &[Row]) -> Result<()> {
    let (w, _) = root.dim_in_pixel();
    let (left, right) = root.split_horizontally(w / 2);
    let mut shapes: Vec<&Row> = Vec::new();
    for r in rows {
        if !shapes.iter().any(|s| s.shape == r.shape) {
            shapes.push(r);
        }
    }
    let group = |r: &Row| match &r.point {
        None => BLACK,
        Some(p) if p.axis == crate::prune::hidden::Axis::Hidden => color(3),
        Some(_) => color(0),
    };
    let x = |r: &Row| r.params_non_embedding as f64 / 1e6;
    let xmax = shapes.iter().map(|r| x(r)).fold(1.0, f64::max) * 1.08;
    // Left: tokens per second, prefill (squares) and decode (circles).
    let top = shapes.iter().filter_map(|r| r.speed.map(|s| s.prefill_tokens_per_s.max(s.decode_tokens_per_s))).fold(1.0, f64::max) * 1.1;
    let mut chart = framed(&left, "speed (f32, this machine)", 60)
        .build_cartesian_2d(0.0..xmax, 0.0..top)
        .drawn()?;
    chart
        .configure_mesh()
        .x_desc("non-embedding parameters (millions)")
        .y_desc("tokens per second")
        .label_style((FONT, 13))
        .light_line_style(WHITE)
        .draw()
        .drawn()?;
    for r in &shapes {
        let c = group(r);
        if let Some(s) = r.speed {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x(r) - 0.8, s.prefill_tokens_per_s * 0.985), (x(r) + 0.8, s.prefill_tokens_per_s * 1.015)],
                    c.filled(),
                )))
                .drawn()?;
            chart.draw_series(std::iter::once(Circle::new((x(r), s.decode_tokens_per_s), 4, c.filled()))).drawn()?;
        }
    }
    for (name, c) in [("dense", BLACK), ("heads + MLP pruned", color(0)), ("hidden size pruned", color(3))] {
        chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>()).drawn()?.label(name).legend(move |(px, py)| Circle::new((px + 8, py), 4, c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .drawn()?;
    chart.draw_series(std::iter::once(Text::new("bars: prefill of 256 tokens; dots: decode", (xmax * 0.03, top * 0.95), (FONT, 13)))).drawn()?;
    // Right: KV-cache bytes per token.
    let kv_top = shapes.iter().map(|r| r.kv_bytes_per_token_f32 as f64 / 1024.0).fold(1.0, f64::max) * 1.1;
    let mut chart = framed(&right, "KV cache per token (f32)", 60)
        .build_cartesian_2d(0.0..xmax, 0.0..kv_top)
        .drawn()?;
    chart
        .configure_mesh()
        .x_desc("non-embedding parameters (millions)")
        .y_desc("KiB per token")
        .label_style((FONT, 13))
        .light_line_style(WHITE)
        .draw()
        .drawn()?;
    for r in &shapes {
        let c = group(r);
        chart.draw_series(std::iter::once(Circle::new((x(r), r.kv_bytes_per_token_f32 as f64 / 1024.0), 5, c.filled()))).drawn()?;
    }
    Ok(())
}

/// Training loss along each recovery (tokens on x, the shots of one run joined) and the
/// held-out perplexity after each shot.
pub fn recovery<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[(String, &Row)]) -> Result<()> {
    let (w, h) = root.dim_in_pixel();
    let entries: Vec<(String, RGBColor, bool)> = runs.iter().enumerate().map(|(i, (l, _))| (l.clone(), color(i), true)).collect();
    let (plots, key) = root.split_vertically(h - legend_height(entries.iter().map(|e| e.0.as_str()), w));
    let (left, right) = plots.split_horizontally(w / 2);
    let curve = |r: &Row| -> Vec<(f64, f64)> {
        let mut seen = 0f64;
        let mut out = Vec::new();
        for c in &r.recovery {
            let per_step = c.tokens as f64 / c.loss_by_step.len().max(1) as f64;
            for &l in &c.loss_by_step {
                seen += per_step;
                if l.is_finite() {
                    out.push((seen / 1e3, l));
                }
            }
        }
        out
    };
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|(_, r)| curve(r)).collect();
    let xmax = curves.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let ymax = curves.iter().flatten().map(|p| p.1).fold(0.1, f64::max) * 1.05;
    let mut chart = framed(&left, "recovery: training loss", 60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .drawn()?;
    chart.configure_mesh().x_desc("training tokens (thousands)").y_desc("loss per step").label_style((FONT, 13)).light_line_style(WHITE).draw().drawn()?;
    for (i, c) in curves.into_iter().enumerate() {
        chart.draw_series(LineSeries::new(c, color(i).stroke_width(2))).drawn()?;
    }
    let ppl: Vec<Vec<(usize, f64)>> = runs
        .iter()
        .map(|(_, r)| r.held_out.iter().enumerate().filter(|(_, p)| p.is_finite() && **p > 0.0).map(|(i, p)| (i + 1, p.log10())).collect())
        .collect();
    let shots = ppl.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
    let (lo, hi) = ppl.iter().flatten().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (lo, hi) = if lo <= hi { (lo - 0.05, hi + 0.05) } else { (0.0, 1.0) };
    let mut chart = framed(&right, "held-out wiki perplexity after each shot", 60)
        .build_cartesian_2d((0..shots + 1).into_segmented(), lo..hi)
        .drawn()?;
    chart
        .configure_mesh()
        .x_desc("shot (the last point: after the final recovery, if any)")
        .y_desc("perplexity (log scale, 8 × 512 tokens)")
        .y_label_formatter(&|v| log_label(*v, hi - lo))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => i.to_string(),
            SegmentValue::Last => String::new(),
        })
        .label_style((FONT, 13))
        .light_line_style(WHITE)
        .draw()
        .drawn()?;
    for (i, p) in ppl.into_iter().enumerate() {
        let p: Vec<(SegmentValue<usize>, f64)> = p.into_iter().map(|(s, v)| (SegmentValue::CenterOf(s), v)).collect();
        chart.draw_series(LineSeries::new(p.clone(), color(i).stroke_width(2))).drawn()?;
        chart.draw_series(p.into_iter().map(|q| Circle::new(q, 4, color(i).filled()))).drawn()?;
    }
    legend(&key, &entries)
}

/// The dense model's salience per layer: TransAct's head scores (layers × heads) and the MLP
/// channel norms sorted from high to low (averaged into bins), each layer scaled to its maximum.
pub fn salience<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, stats: &ActivationStats, n_heads: usize) -> Result<()> {
    let (w, _) = root.dim_in_pixel();
    let (left, right) = root.split_horizontally(w * 2 / 5);
    let transact = scorer::build(ScorerKind::Transact, None, 0);
    let heads: Vec<Vec<f64>> = stats
        .layers
        .iter()
        .map(|l| {
            let ch = l.attn.l2();
            let d = ch.len() / n_heads.max(1);
            ch.chunks(d.max(1)).map(|c| transact.head(c)).collect()
        })
        .collect();
    const BINS: usize = 128;
    let mlp: Vec<Vec<f64>> = stats
        .layers
        .iter()
        .map(|l| {
            let mut ch = l.mlp.l2();
            ch.sort_by(|a, b| b.total_cmp(a));
            let per = ch.len().div_ceil(BINS).max(1);
            ch.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
        })
        .collect();
    heat(&left, "attention heads (TransAct score)", "head", &heads, false)?;
    heat(
        &right,
        &format!("MLP channels, sorted (bins of {})", stats.layers.first().map_or(1, |l| l.mlp.width().div_ceil(BINS))),
        "channel rank (bin)",
        &mlp,
        true,
    )
}

/// Decades below a row's maximum that the heat map's colour scale spans.
const DECADES: f64 = 2.0;

/// A heat map with a row per layer (viridis: bright = the row's maximum). `log`: each row on a
/// log scale of [`DECADES`] below its maximum; else linear from the row's minimum (dark) to
/// its maximum, which shows the ranking inside the row.
fn heat<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, x_desc: &str, cells: &[Vec<f64>], log: bool) -> Result<()> {
    let cols = cells.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let rows = cells.len().max(1);
    let mut chart = framed(area, title, 50)
        .build_cartesian_2d(0..cols, 0..rows)
        .drawn()?;
    chart.configure_mesh().disable_mesh().x_desc(x_desc).y_desc("layer").label_style((FONT, 13)).light_line_style(WHITE).draw().drawn()?;
    for (l, row) in cells.iter().enumerate() {
        let max = row.iter().copied().fold(f64::MIN, f64::max).max(1e-30);
        let min = row.iter().copied().fold(f64::MAX, f64::min);
        let level = |v: f64| {
            if log { 1.0 + (v / max).max(1e-30).log10() / DECADES } else { (v - min) / (max - min).max(1e-30) }
        };
        chart
            .draw_series(
                row.iter().enumerate().map(|(c, v)| Rectangle::new([(c, l), (c + 1, l + 1)], ViridisRGB::get_color(level(*v).clamp(0.0, 1.0)).filled())),
            )
            .drawn()?;
    }
    Ok(())
}
