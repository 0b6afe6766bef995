//! `curves.png` / `curves.svg`: loss and accuracy per epoch, both phases, the
//! phase boundary marked.
//!
//! plotters is built without a font rasteriser (its `ttf` feature needs the
//! system's fontconfig), so the PNG carries no text: left panel loss, right
//! panel accuracy; blue = train, orange = validation; the grey vertical line is
//! the start of phase 2. `curves.svg` is the same chart with titles, axis
//! labels and a legend (SVG text needs no rasteriser).

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::{EpochRecord, Error, Result};

/// File name of the text-free PNG chart.
pub const CURVES_PNG: &str = "curves.png";
/// File name of the labelled SVG chart.
pub const CURVES_SVG: &str = "curves.svg";

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const BOUNDARY: RGBColor = RGBColor(150, 150, 150);
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 400;

/// Draws `run_dir/curves.png` and `run_dir/curves.svg` from the records so far
/// (each written to a temporary name, then renamed).
pub fn draw_curves(run_dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let png = run_dir.join(CURVES_PNG);
    let plot_err = |path: &Path| {
        let path = path.display().to_string();
        move |e: String| Error::Plot { path, reason: e }
    };
    // The bitmap encoder writes to a path chosen by extension: draw into a
    // temporary `.png` beside the target, then rename it over the target.
    std::fs::create_dir_all(run_dir).map_err(|source| Error::Io {
        op: "creating",
        path: run_dir.display().to_string(),
        source,
    })?;
    let tmp = run_dir.join(format!(".{CURVES_PNG}.{}.tmp.png", std::process::id()));
    let drawn = (|| {
        let root = BitMapBackend::new(&tmp, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, records, false)?;
        root.present().map_err(|e| e.to_string())
    })();
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(plot_err(&png)(e));
    }
    std::fs::rename(&tmp, &png).map_err(|source| Error::Io {
        op: "renaming into",
        path: png.display().to_string(),
        source,
    })?;

    let svg_path = run_dir.join(CURVES_SVG);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, records, true).map_err(plot_err(&svg_path))?;
        root.present()
            .map_err(|e| plot_err(&svg_path)(e.to_string()))?;
    }
    crate::fsutil::write_atomic(&svg_path, svg.as_bytes())
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

/// What both panels share: the epoch range, the phase boundary, text or not.
struct Axes {
    last_epoch: f64,
    boundary: Option<f64>,
    labels: bool,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    records: &[EpochRecord],
    labels: bool,
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
        labels,
    };
    let loss_max = records
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
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
    builder.margin(12);
    if axes.labels {
        builder
            .caption(panel.title, ("sans-serif", 18))
            .x_label_area_size(36)
            .y_label_area_size(48);
    }
    let mut chart = builder
        .build_cartesian_2d(0.5f64..axes.last_epoch + 0.5, 0.0f64..panel.y_max)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if axes.labels {
        mesh.x_desc("epoch").y_desc(panel.title);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    if !axes.labels {
        draw_frame(&mut chart, axes.last_epoch, panel.y_max)?;
    }
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
        draw_line(
            &mut chart,
            records,
            getter,
            color,
            axes.labels.then_some(name),
        )?;
    }
    if axes.labels {
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Without text the mesh draws nothing: a frame, quarter lines and epoch ticks instead.
fn draw_frame<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    last_epoch: f64,
    y_max: f64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (x0, x1) = (0.5, last_epoch + 0.5);
    for k in 1..4 {
        let y = y_max * f64::from(k) / 4.0;
        chart
            .draw_series(LineSeries::new([(x0, y), (x1, y)], RGBColor(225, 225, 225)))
            .map_err(err)?;
    }
    let tick = y_max * 0.02;
    let ticks = (1..=last_epoch as usize)
        .map(|e| PathElement::new([(e as f64, 0.0), (e as f64, tick)], BLACK));
    chart.draw_series(ticks).map_err(err)?;
    chart
        .draw_series([Rectangle::new(
            [(x0, 0.0), (x1, y_max)],
            BLACK.stroke_width(1),
        )])
        .map_err(err)?;
    Ok(())
}

/// One series: a line through the finite values with a dot at each, in the legend as `label`.
fn draw_line<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    records: &[EpochRecord],
    getter: Getter,
    color: RGBColor,
    label: Option<&str>,
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
    if let Some(label) = label {
        line.label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    Ok(())
}
