//! The run folder's files on their own: config, metrics log, curves.

use xfer_finetune::{EpochRecord, FinetuneConfig, MetricsLog, draw_curves};

#[test]
fn config_defaults_are_the_guides_schedule() {
    let c = FinetuneConfig::default();
    assert_eq!((c.phase1.epochs, c.phase1.learning_rate), (20, 1e-3));
    assert_eq!((c.phase2.epochs, c.phase2.learning_rate), (10, 1e-5));
    assert_eq!(c.batch_size, 32);
    assert_eq!(c.dropout, 0.2);
    assert!(c.augmentation.flip);
    assert_eq!(c.augmentation.rotation, 0.1);
    assert_eq!(c.augmentation.fill, "reflect");
    c.validate().expect("defaults are valid");
}

#[test]
fn a_partial_toml_file_keeps_the_other_defaults_and_round_trips() {
    let text = "seed = 9\nbatch_size = 16\n[phase2]\nepochs = 3\nlearning_rate = 2e-5\n[augmentation]\nrotation = 0.05\n";
    let c = FinetuneConfig::from_toml_str(text, None).expect("parse");
    assert_eq!((c.seed, c.batch_size, c.phase2.epochs), (9, 16, 3));
    assert_eq!(c.phase2.learning_rate, 2e-5);
    assert_eq!(c.phase1.epochs, 20, "phase1 keeps its default");
    assert!(c.augmentation.flip, "flip keeps its default");
    assert_eq!(c.augmentation.rotation, 0.05);

    let dir = tempfile::tempdir().expect("tempdir");
    c.save(dir.path()).expect("save");
    let back = FinetuneConfig::read(&dir.path().join("config.toml")).expect("read");
    assert_eq!(back, c);
}

#[test]
fn bad_configs_say_which_key_is_wrong() {
    let err = FinetuneConfig::from_toml_str("batch_sise = 3\n", None).expect_err("unknown key");
    assert!(err.to_string().contains("batch_sise"), "{err}");
    type Mutation = fn(&mut FinetuneConfig);
    let cases: [(&str, Mutation); 5] = [
        ("batch_size", |c| c.batch_size = 0),
        ("phase1.learning_rate", |c| {
            c.phase1.learning_rate = f32::NAN
        }),
        ("dropout", |c| c.dropout = 1.0),
        ("augmentation.fill", |c| {
            c.augmentation.fill = "wrap".to_owned()
        }),
        ("nothing to train", |c| {
            c.phase1.epochs = 0;
            c.phase2.epochs = 0;
        }),
    ];
    for (needle, mutate) in cases {
        let mut c = FinetuneConfig::default();
        mutate(&mut c);
        let err = c.validate().expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let saved = FinetuneConfig::default();
    let mut now = saved.clone();
    now.phase2.epochs = 12; // more epochs: fine
    now.check_resumable_from(&saved, true)
        .expect("more epochs may be added");
    now.seed = 1;
    let err = now
        .check_resumable_from(&saved, true)
        .expect_err("seed changed");
    assert!(err.to_string().contains("`seed`"), "{err}");
}

/// Issue 18 item 12: a refused resume prints settings as flags, not Rust debug structs.
#[test]
fn a_refused_resume_prints_settings_as_flags() {
    let saved = FinetuneConfig::default();
    let mut now = saved.clone();
    now.splits.val = "train[40%:60%]".to_owned();
    let err = now
        .check_resumable_from(&saved, true)
        .expect_err("splits changed");
    let text = err.to_string();
    assert!(
        text.contains("--val train[40%:60%]") && !text.contains("SplitConfig"),
        "{text}"
    );
    let mut now = saved.clone();
    now.unfreeze_from = Some("block14_sepconv1".to_owned());
    let text = now
        .check_resumable_from(&saved, true)
        .expect_err("layer changed")
        .to_string();
    assert!(
        text.contains("`block14_sepconv1`") && !text.contains("Some("),
        "{text}"
    );
}

/// Issue 18 item 12: `--resume --data ./ds/c40` is the same folder as `ds/c40`.
#[test]
fn a_resume_compares_canonical_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("ds/c40")).expect("mkdir");
    let saved = FinetuneConfig {
        data: dir.path().join("ds/c40"),
        ..FinetuneConfig::default()
    };
    let now = FinetuneConfig {
        data: dir.path().join("ds/./c40/"),
        ..saved.clone()
    };
    now.check_resumable_from(&saved, true)
        .expect("the same folder, written differently");
}

fn record(global_epoch: usize, phase: u8, loss: f64) -> EpochRecord {
    EpochRecord {
        phase,
        epoch: global_epoch,
        global_epoch,
        step: global_epoch as u64 * 10,
        learning_rate: 1e-3,
        train_loss: loss,
        train_accuracy: 0.5 + 0.05 * global_epoch as f64,
        val_loss: loss * 1.1,
        val_accuracy: 0.5,
        images_per_second: 100.0,
        train_seconds: 1.0,
        seconds: 1.5,
        skipped_train: Vec::new(),
        skipped_val: Vec::new(),
    }
}

#[test]
fn metrics_log_appends_and_a_resume_drops_epochs_after_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = MetricsLog::create(dir.path()).expect("create");
    for e in 1..=4 {
        log.append(record(e, if e <= 2 { 1 } else { 2 }, 1.0 / e as f64))
            .expect("append");
    }
    let on_disk = MetricsLog::read(log.path()).expect("read");
    assert_eq!(on_disk, log.records());
    let resumed = MetricsLog::resume(dir.path(), 3).expect("resume");
    assert_eq!(resumed.records().len(), 3);
    assert_eq!(MetricsLog::read(resumed.path()).expect("read").len(), 3);
    std::fs::write(resumed.path(), "{not json\n").expect("write");
    let err = MetricsLog::read(resumed.path()).expect_err("broken");
    assert!(err.to_string().contains("line 1"), "{err}");
}

/// Issue 18 item 11: a run killed while appending leaves a half-written last line; a
/// resume drops it (the checkpoint decides where to restart) instead of refusing.
#[test]
fn a_resume_drops_a_half_written_last_line_of_the_metrics_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = MetricsLog::create(dir.path()).expect("create");
    for e in 1..=2 {
        log.append(record(e, 1, 1.0 / e as f64)).expect("append");
    }
    let full = std::fs::read_to_string(log.path()).expect("read log");
    let torn = to_line_prefix(&full);
    std::fs::write(log.path(), format!("{full}{torn}")).expect("write torn line");
    let resumed = MetricsLog::resume(dir.path(), 3).expect("resume past a torn line");
    assert_eq!(resumed.records().len(), 2);
    assert_eq!(MetricsLog::read(resumed.path()).expect("read").len(), 2);
    // A broken line that is not the unfinished last one is still an error.
    std::fs::write(log.path(), format!("{torn}\n{full}")).expect("write broken line");
    let err = MetricsLog::resume(dir.path(), 3).expect_err("broken middle line");
    assert!(err.to_string().contains("line 1"), "{err}");
}

/// The first half of the first line of `text`.
fn to_line_prefix(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(line.chars().count() / 2).collect()
}

#[test]
fn curves_are_a_png_and_a_labelled_svg_with_the_phase_boundary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<EpochRecord> = (1..=5)
        .map(|e| record(e, if e <= 3 { 1 } else { 2 }, 1.0 / e as f64))
        .collect();
    draw_curves(dir.path(), &records).expect("draw");
    let png = std::fs::read(dir.path().join("curves.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("curves.svg")).expect("svg");
    for label in ["loss", "accuracy", "epoch", "train", "validation"] {
        assert!(svg.contains(label), "svg lacks `{label}`");
    }
    // The boundary is a grey line at x = 3.5 in both panels: it is drawn in rgb(150,150,150).
    assert!(svg.contains("#969696"), "no phase boundary line in the svg");
    // A single epoch (no boundary) draws too, and nothing is left behind.
    draw_curves(dir.path(), &records[..1]).expect("draw one");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains(".tmp")),
        "temporary files left: {names:?}"
    );
}

/// Dark pixels (every channel below 120: text, not the white background, the light grid or
/// the coloured curves) in the rectangle `x0..x1` × `y0..y1` of an RGB image.
fn dark_pixels(img: &image::RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
    (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 120))
        .count()
}

/// curves.png has rendered text (issue 17, defect 7): the loss panel's title above the plot,
/// its rotated y description at the left edge and the accuracy panel's "epoch" below it are
/// not background.
#[test]
fn curves_png_has_rendered_title_axis_labels_and_legend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<EpochRecord> = (1..=5)
        .map(|e| record(e, if e <= 3 { 1 } else { 2 }, 1.0 / e as f64))
        .collect();
    draw_curves(dir.path(), &records).expect("draw");
    let img = image::open(dir.path().join("curves.png"))
        .expect("png")
        .to_rgb8();
    assert_eq!(img.dimensions(), (1000, 400));
    if let Some(keep) = std::env::var_os("XFER_KEEP_CURVES") {
        std::fs::copy(dir.path().join("curves.png"), keep).expect("keep curves.png");
    }
    // title "loss", centred over the left panel (500 px wide), in the 12 px margin's band below
    let title = dark_pixels(&img, (200, 300), (12, 36));
    // y description "loss", rotated, at the left edge of the left panel
    let y_desc = dark_pixels(&img, (14, 32), (120, 280));
    // x description "epoch" under the right panel
    let x_desc = dark_pixels(&img, (700, 820), (376, 398));
    assert!(
        title > 20 && y_desc > 20 && x_desc > 20,
        "text regions are background: title {title}, y label {y_desc}, x label {x_desc} dark pixels"
    );
    // the legend ("train", "validation") sits in a box at the middle of each panel's right side
    let legend =
        dark_pixels(&img, (380, 490), (120, 280)) + dark_pixels(&img, (880, 990), (120, 280));
    assert!(legend > 40, "no legend text: {legend} dark pixels");
}
