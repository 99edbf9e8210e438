//! Bar charts as PNG: one panel per measurement, bars labelled with their
//! values, drawn with plotters and the DejaVu Sans font embedded in the
//! binary (no system fonts needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// One bar: its label under it, its value, its colour.
pub struct Bar {
    /// Shown under the bar.
    pub label: String,
    /// Its height.
    pub value: f64,
    /// Its colour.
    pub color: RGBColor,
}

/// One panel of bars sharing a y axis.
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// The y axis's description.
    pub unit: String,
    /// The bars, left to right.
    pub bars: Vec<Bar>,
    /// A horizontal line to compare against (a target), if any.
    pub line: Option<f64>,
}

/// Draws `panels` in a grid of `columns` into the PNG file at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel], columns: usize) -> anyhow::Result<()> {
    // Registering the same font twice is harmless.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded font does not load"))?;
    let rows = panels.len().div_ceil(columns);
    let size = (500 * columns as u32, 60 + 420 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 26)).map_err(plot_error)?;
    for (panel, area) in panels.iter().zip(root.split_evenly((rows, columns))) {
        draw_panel(&area, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> anyhow::Result<()> {
    let n = panel.bars.len() as f64;
    let top = panel
        .bars
        .iter()
        .map(|b| b.value)
        .chain(panel.line)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.18;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(panel.unit.as_str())
        .y_label_formatter(&|v| human(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            let x = i as f64;
            Rectangle::new([(x + 0.15, 0.0), (x + 0.85, bar.value)], bar.color.filled())
        }))
        .map_err(plot_error)?;
    let centred =
        ("sans-serif", 15)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            Text::new(
                human(bar.value),
                (i as f64 + 0.5, bar.value),
                centred.clone(),
            )
        }))
        .map_err(plot_error)?;
    let under = centred.pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Top,
    ));
    chart
        .draw_series(
            panel
                .bars
                .iter()
                .enumerate()
                .map(|(i, bar)| Text::new(bar.label.clone(), (i as f64 + 0.5, 0.0), under.clone())),
        )
        .map_err(plot_error)?;
    if let Some(line) = panel.line {
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(0.0, line), (n, line)],
                BLACK.stroke_width(2),
            )))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// 1234567 → "1.23 M", 45678 → "46 k", 2345 → "2.3 k", 0.84 → "0.84".
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2}")
    }
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}
