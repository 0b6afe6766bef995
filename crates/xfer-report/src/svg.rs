//! Learning curves as inline SVG: loss and accuracy per epoch, train and validation,
//! the start of phase 2 and the exported epoch marked.

use std::fmt::Write;

use xfer_finetune::EpochRecord;

const TRAIN: &str = "#1f77b4";
const VAL: &str = "#ff7f0e";
const BOUNDARY: &str = "#969696";
const EXPORTED: &str = "#2ca02c";
const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// Accessor of one plotted value of a record.
type Getter = fn(&EpochRecord) -> f64;

/// One panel: title, y range top and the train/validation values.
struct Panel {
    title: &'static str,
    y_max: f64,
    series: [(Getter, &'static str, &'static str); 2],
}

/// Two panels side by side (loss, accuracy) for `records`; `exported` is the global epoch
/// `model.onnx` holds.
pub fn curves_svg(records: &[EpochRecord], exported: Option<usize>) -> String {
    let loss_max = xfer_finetune::loss_axis_top(records);
    let panels = [
        Panel {
            title: "loss",
            y_max: loss_max,
            series: [
                (|r| r.train_loss, TRAIN, "train"),
                (|r| r.val_loss, VAL, "validation"),
            ],
        },
        Panel {
            title: "accuracy",
            y_max: 1.0,
            series: [
                (|r| r.train_accuracy, TRAIN, "train"),
                (|r| r.val_accuracy, VAL, "validation"),
            ],
        },
    ];
    let mut svg = format!(
        r#"<svg class="curves" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
        w = PANEL_W * 2.0,
        h = PANEL_H
    );
    for (i, panel) in panels.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<g transform="translate({},0)">"#,
            PANEL_W * i as f64
        );
        panel_svg(&mut svg, panel, records, exported);
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

/// Maps epochs and values to the panel's pixels.
struct Scale {
    last_epoch: f64,
    y_max: f64,
}

impl Scale {
    fn x(&self, epoch: f64) -> f64 {
        LEFT + (epoch - 0.5) / self.last_epoch * (PANEL_W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (1.0 - (v / self.y_max).clamp(0.0, 1.0)) * (PANEL_H - TOP - BOTTOM)
    }
}

fn panel_svg(svg: &mut String, panel: &Panel, records: &[EpochRecord], exported: Option<usize>) {
    let last = records.iter().map(|r| r.global_epoch).max().unwrap_or(1);
    let s = Scale {
        last_epoch: last.max(1) as f64,
        y_max: panel.y_max,
    };
    axes(svg, panel, &s, last);
    let boundary = records
        .iter()
        .find(|r| r.phase == 2)
        .filter(|_| records.iter().any(|r| r.phase == 1));
    if let Some(r) = boundary {
        let x = s.x(r.global_epoch as f64 - 0.5);
        let _ = write!(
            svg,
            r#"<line class="phase-boundary" x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="{BOUNDARY}" stroke-width="2" stroke-dasharray="6 4"/><text x="{:.1}" y="{}" fill="{BOUNDARY}">phase 2 →</text>"#,
            TOP,
            PANEL_H - BOTTOM,
            x + 4.0,
            TOP + 12.0
        );
    }
    if let Some(e) = exported.and_then(|e| records.iter().find(|r| r.global_epoch == e)) {
        let x = s.x(e.global_epoch as f64);
        let y = s.y((panel.series[1].0)(e));
        let _ = write!(
            svg,
            r#"<g class="exported"><line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="{EXPORTED}" stroke-width="1.5"/><circle cx="{x:.1}" cy="{y:.1}" r="7" fill="none" stroke="{EXPORTED}" stroke-width="2.5"/><text x="{:.1}" y="{}" fill="{EXPORTED}" text-anchor="middle">exported (epoch {})</text></g>"#,
            TOP,
            PANEL_H - BOTTOM,
            x,
            TOP - 4.0,
            e.global_epoch
        );
    }
    for (k, (get, color, name)) in panel.series.iter().enumerate() {
        series(svg, records, &s, *get, color);
        let ly = PANEL_H - BOTTOM - 30.0 + 14.0 * k as f64;
        let lx = PANEL_W - RIGHT - 100.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2.5"/><text x="{}" y="{}">{name}</text>"#,
            lx + 18.0,
            lx + 22.0,
            ly + 4.0,
            y = ly
        );
    }
}

/// Frame, title, ticks and axis descriptions.
fn axes(svg: &mut String, panel: &Panel, s: &Scale, last: usize) {
    let (x0, x1) = (LEFT, PANEL_W - RIGHT);
    let (y0, y1) = (TOP, PANEL_H - BOTTOM);
    let _ = write!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#333"/><text x="{}" y="16" text-anchor="middle" font-size="14" font-weight="bold">{}</text><text x="{}" y="{}" text-anchor="middle">epoch</text><text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
        x1 - x0,
        y1 - y0,
        (x0 + x1) / 2.0,
        panel.title,
        (x0 + x1) / 2.0,
        PANEL_H - 6.0,
        (y0 + y1) / 2.0,
        panel.title
    );
    let step = last.div_ceil(10).max(1);
    for e in (1..=last).filter(|e| (e - 1) % step == 0) {
        let x = s.x(e as f64);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{e}</text>"##,
            y1 + 4.0,
            y1 + 16.0
        );
    }
    for k in 0..=4 {
        let v = s.y_max * f64::from(k) / 4.0;
        let y = s.y(v);
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            x0 - 4.0,
            y + 4.0
        );
    }
}

/// A line through the finite values with a dot at each.
fn series(svg: &mut String, records: &[EpochRecord], s: &Scale, get: Getter, color: &str) {
    let points: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.global_epoch as f64, get(r)))
        .filter(|(_, v)| v.is_finite())
        .map(|(e, v)| (s.x(e), s.y(v)))
        .collect();
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
        path.join(" ")
    );
    for (x, y) in points {
        let _ = write!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
        );
    }
}
