//! `curves.png` / `curves.svg`: loss and accuracy per epoch, both phases, the
//! phase boundary marked (the grey vertical line), with titles, axis labels and
//! a legend (blue = train, orange = validation).
//!
//! The PNG's text is rasterised by plotters' `ab_glyph` feature with DejaVu Sans,
//! bundled in `fonts/` (its licence beside it), so no system font or fontconfig
//! is needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::{EpochRecord, Error, Result};

/// File name of the PNG chart.
pub const CURVES_PNG: &str = "curves.png";
/// File name of the labelled SVG chart.
pub const CURVES_SVG: &str = "curves.svg";

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const BOUNDARY: RGBColor = RGBColor(150, 150, 150);
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 400;

/// DejaVu Sans (Bitstream Vera licence and public domain: `fonts/LICENSE-DejaVu`).
const FONT_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
/// The font family the charts name; [`register_font`] maps it to [`FONT_TTF`].
const FONT_FAMILY: &str = "sans-serif";

/// Registers the bundled font with plotters as [`FONT_FAMILY`] (once per process).
fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Plot {
            path: "fonts/DejaVuSans.ttf".to_owned(),
            reason: "the bundled font could not be read".to_owned(),
        })
    }
}

/// Draws `run_dir/curves.png` and `run_dir/curves.svg` from the records so far
/// (each written to a temporary name, then renamed).
pub fn draw_curves(run_dir: &Path, records: &[EpochRecord]) -> Result<()> {
    register_font()?;
    let png = run_dir.join(CURVES_PNG);
    let plot_err = |path: &Path| {
        let path = path.display().to_string();
        move |e: String| Error::Plot { path, reason: e }
    };
    // The bitmap encoder writes to a path chosen by extension: draw into the
    // temporary `.png` of an atomic file beside the target, then commit it.
    let png_file = xfer_fs::AtomicFile::create_with_suffix(&png, ".png")?;
    let root = BitMapBackend::new(png_file.temp_path(), (WIDTH, HEIGHT)).into_drawing_area();
    draw(&root, records).map_err(plot_err(&png))?;
    root.present().map_err(|e| plot_err(&png)(e.to_string()))?;
    drop(root);
    png_file.commit()?;

    let svg_path = run_dir.join(CURVES_SVG);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, records).map_err(plot_err(&svg_path))?;
        root.present()
            .map_err(|e| plot_err(&svg_path)(e.to_string()))?;
    }
    Ok(xfer_fs::write_atomic(&svg_path, svg.as_bytes())?)
}

/// The top of a loss axis for `records`: 5 % above the largest finite train or validation loss.
pub fn loss_axis_top(records: &[EpochRecord]) -> f64 {
    records
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05
}

/// Accessor of one plotted value of a record.
type Getter = fn(&EpochRecord) -> f64;

/// The chart of one panel: epochs on x, the panel's value on y.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel: its title (also the y axis description), y range top and train/validation values.
struct Panel {
    title: &'static str,
    y_max: f64,
    getters: [Getter; 2],
}

/// What both panels share: the epoch range and the phase boundary.
struct Axes {
    last_epoch: f64,
    boundary: Option<f64>,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    records: &[EpochRecord],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let axes = Axes {
        last_epoch: records
            .iter()
            .map(|r| r.global_epoch)
            .max()
            .unwrap_or(1)
            .max(2) as f64,
        boundary: records
            .iter()
            .find(|r| r.phase == 2)
            .map(|r| r.global_epoch as f64 - 0.5)
            .filter(|_| records.iter().any(|r| r.phase == 1)),
    };
    let loss_max = loss_axis_top(records);
    let panels = [
        Panel {
            title: "loss",
            y_max: loss_max,
            getters: [|r| r.train_loss, |r| r.val_loss],
        },
        Panel {
            title: "accuracy",
            y_max: 1.0,
            getters: [|r| r.train_accuracy, |r| r.val_accuracy],
        },
    ];
    for (area, panel) in root.split_evenly((1, 2)).iter().zip(&panels) {
        draw_panel(area, panel, &axes, records)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    axes: &Axes,
    records: &[EpochRecord],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .caption(panel.title, (FONT_FAMILY, 18))
        .x_label_area_size(36)
        .y_label_area_size(48);
    let mut chart = builder
        .build_cartesian_2d(0.5f64..axes.last_epoch + 0.5, 0.0f64..panel.y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.title)
        .label_style((FONT_FAMILY, 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    if let Some(x) = axes.boundary {
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, panel.y_max)],
                BOUNDARY.stroke_width(2),
            ))
            .map_err(err)?;
    }
    for (getter, color, name) in [
        (panel.getters[0], TRAIN, "train"),
        (panel.getters[1], VAL, "validation"),
    ] {
        draw_line(&mut chart, records, getter, color, name)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 13))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One series: a line through the finite values with a dot at each, in the legend as `label`.
fn draw_line<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    records: &[EpochRecord],
    getter: Getter,
    color: RGBColor,
    label: &str,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let points: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.global_epoch as f64, getter(r)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    let line = chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(err)?;
    line.label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    Ok(())
}
