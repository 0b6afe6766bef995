//! The report page: one HTML string with its style, SVG charts and embedded thumbnails.

use std::fmt::Write;
use std::io::Cursor;
use std::path::Path;

use base64::Engine;
use xfer_head::Metrics;

use crate::run::{RunKind, RunReport};
use crate::svg::curves_svg;

/// Longest side of a misclassified image's thumbnail, in pixels.
const THUMBNAIL: u32 = 128;

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 26px; } h2 { margin-top: 40px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h3 { margin-top: 24px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
table.confusion td { width: 64px; height: 40px; text-align: center; font-weight: bold; }
.misses { display: flex; flex-wrap: wrap; gap: 10px; }
figure.miss { margin: 0; width: 140px; font-size: 12px; border: 1px solid #ddd; padding: 4px; background: #fafafa; }
figure.miss img { display: block; max-width: 128px; max-height: 128px; margin: 0 auto; }
figure.miss .missing { width: 128px; height: 96px; background: #ddd; display: flex; align-items: center; justify-content: center; }
figcaption { margin-top: 4px; line-height: 1.3; overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #666; font-size: 13px; }
"#;

/// Records script errors in the page itself (`data-errors` on `<body>`), for browser tests.
const SCRIPT: &str = r#"
window.xferErrors = [];
window.addEventListener("error", function (e) { window.xferErrors.push(String(e.message)); });
window.addEventListener("load", function () {
  document.body.setAttribute("data-errors", String(window.xferErrors.length));
  document.body.setAttribute("data-thumbnails", String(document.querySelectorAll("figure.miss").length));
});
"#;

/// The whole page for `runs`.
pub fn render(runs: &[RunReport]) -> String {
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>xfer report</title>\
         <style>{STYLE}</style><script>{SCRIPT}</script></head><body data-errors=\"pending\">\
         <h1>xfer report</h1>"
    );
    if runs.len() > 1 {
        comparison(&mut page, runs);
    }
    for run in runs {
        run_section(&mut page, run);
    }
    page.push_str("</body></html>\n");
    page
}

/// The side-by-side table: workflow, test accuracy, log loss and time of every run.
fn comparison(page: &mut String, runs: &[RunReport]) {
    page.push_str(
        "<h2>Runs side by side</h2><table class=\"comparison\"><thead><tr><th>run</th><th>workflow</th>\
         <th>test accuracy</th><th>test log loss</th><th>test errors</th><th>training time</th></tr></thead><tbody>",
    );
    for run in runs {
        let (acc, loss) = run
            .test
            .as_ref()
            .map_or(("–".to_owned(), "–".to_owned()), |m| {
                (format!("{:.4}", m.accuracy), format!("{:.4}", m.log_loss))
            });
        let errors = run.test_errors().map_or("–".to_owned(), |e| e.to_string());
        let time = run.seconds.map_or("–".to_owned(), format_seconds);
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{acc}</td><td>{loss}</td><td>{errors}</td><td>{time}</td></tr>",
            escape(&run.name),
            run.kind.describe()
        );
    }
    page.push_str(
        "</tbody></table><p class=\"note\">Training time: the epochs of a fine-tuning run; the \
         L2 search's fits of a head-only run (embedding extraction not included).</p>",
    );
}

/// One run: summary, curves, confusion matrix, per-class figures, misclassified images, config.
fn run_section(page: &mut String, run: &RunReport) {
    let _ = write!(
        page,
        "<section class=\"run\"><h2>{} <small>({})</small></h2>",
        escape(&run.name),
        run.kind.describe()
    );
    curves(page, run);
    match &run.test {
        Some(m) => {
            summary_table(page, m);
            confusion(page, m);
            per_class(page, m);
            misclassified(page, run);
        }
        None => page.push_str("<p class=\"note\">No test metrics in this run's metrics.json.</p>"),
    }
    let what = match run.kind {
        RunKind::FineTuned => "config.toml",
        RunKind::HeadOnly => "hyper-parameters (head.json)",
    };
    let _ = write!(
        page,
        "<h3>Configuration: {what}</h3><pre>{}</pre></section>",
        escape(&run.config)
    );
}

fn curves(page: &mut String, run: &RunReport) {
    if run.epochs.is_empty() {
        if run.kind == RunKind::HeadOnly {
            page.push_str(
                "<p class=\"note\">A head-only run trains a logistic head with L-BFGS: no epochs, no learning curves.</p>",
            );
        }
        return;
    }
    page.push_str("<h3>Learning curves</h3>");
    if let Some(e) = &run.exported {
        let _ = write!(
            page,
            "<p>model.onnx holds epoch {} (phase {}, validation loss {:.4}; <code>--export {}</code>).</p>",
            e.global_epoch, e.phase, e.val_loss, e.choice
        );
    }
    page.push_str(&curves_svg(
        &run.epochs,
        run.exported.as_ref().map(|e| e.global_epoch),
    ));
}

fn summary_table(page: &mut String, m: &Metrics) {
    let auc = m.roc_auc.map_or("–".to_owned(), |a| format!("{a:.4}"));
    let _ = write!(
        page,
        "<h3>Test split</h3><table class=\"summary\"><thead><tr><th>rows</th><th>accuracy</th>\
         <th>balanced accuracy</th><th>log loss</th><th>ROC AUC</th></tr></thead><tbody><tr>\
         <td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{auc}</td></tr></tbody></table>",
        m.rows, m.accuracy, m.balanced_accuracy, m.log_loss
    );
}

/// The confusion matrix, each cell shaded by its share of the true class's rows.
fn confusion(page: &mut String, m: &Metrics) {
    let names: Vec<&str> = m.per_class.iter().map(|c| c.class.as_str()).collect();
    page.push_str(
        "<h3>Confusion matrix</h3><table class=\"confusion\"><thead><tr><th>true \\ predicted</th>",
    );
    for n in &names {
        let _ = write!(page, "<th>{}</th>", escape(n));
    }
    page.push_str("</tr></thead><tbody>");
    for (i, row) in m.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        let _ = write!(
            page,
            "<tr><th>{}</th>",
            escape(names.get(i).copied().unwrap_or("?"))
        );
        for (j, &count) in row.iter().enumerate() {
            let share = count as f64 / total.max(1) as f64;
            // right answers in blue, wrong ones in red; darker = larger share
            let (r, g, b) = if i == j {
                (31, 119, 180)
            } else {
                (214, 39, 40)
            };
            let text = if share > 0.55 { "#fff" } else { "#222" };
            let _ = write!(
                page,
                "<td style=\"background: rgba({r},{g},{b},{:.3}); color: {text}\" title=\"{:.1}% of true {}\">{count}</td>",
                0.08 + 0.92 * share,
                share * 100.0,
                escape(names.get(i).copied().unwrap_or("?"))
            );
        }
        page.push_str("</tr>");
    }
    page.push_str("</tbody></table>");
}

fn per_class(page: &mut String, m: &Metrics) {
    page.push_str(
        "<h3>Per class</h3><table class=\"per-class\"><thead><tr><th>class</th><th>precision</th>\
         <th>recall</th><th>F1</th><th>support</th></tr></thead><tbody>",
    );
    for c in &m.per_class {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            escape(&c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    page.push_str("</tbody></table>");
}

/// The misclassified test images, worst first, as embedded thumbnails.
fn misclassified(page: &mut String, run: &RunReport) {
    let wrong = run.misclassified();
    let _ = write!(page, "<h3>Misclassified test images ({})</h3>", wrong.len());
    if run.predictions.is_empty() {
        page.push_str(
            "<p class=\"note\">This run wrote no predictions.jsonl (runs of older xfer versions).</p>",
        );
        return;
    }
    if wrong.is_empty() {
        page.push_str("<p class=\"note\">None.</p>");
        return;
    }
    page.push_str("<p class=\"note\">Worst first: lowest probability of the true class.</p><div class=\"misses\">");
    for p in wrong {
        let image = run
            .image_path(&p.id)
            .and_then(|path| thumbnail_uri(&path))
            .map_or_else(
                || "<div class=\"missing\">image not found</div>".to_owned(),
                |uri| format!("<img src=\"{uri}\" alt=\"{}\">", escape(&p.id)),
            );
        let _ = write!(
            page,
            "<figure class=\"miss\">{image}<figcaption><b>true {}</b>: p = {:.3}<br>predicted {}: p = {:.3}<br><span class=\"note\">{}</span></figcaption></figure>",
            escape(&p.label),
            run.true_probability(p),
            escape(&p.predicted),
            run.probability_of(p, &p.predicted),
            escape(&p.id)
        );
    }
    page.push_str("</div>");
}

/// A JPEG thumbnail of the image at `path` as a data URI; `None` when it cannot be read.
fn thumbnail_uri(path: &Path) -> Option<String> {
    let img = image::open(path)
        .ok()?
        .thumbnail(THUMBNAIL, THUMBNAIL)
        .to_rgb8();
    let mut bytes = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&img)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes.into_inner())
    ))
}

fn format_seconds(s: f64) -> String {
    if s >= 60.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
