//! End-to-end tests of the head: training on synthetic embeddings, persistence,
//! ONNX export run in the real ONNX Runtime, fingerprint refusal.

#![allow(clippy::needless_range_loop)] // index loops mirror the formulas they check

use ndarray::{Array2, ArrayD, Axis, s};
use xfer_head::{
    ClassWeight, ExportOptions, Head, Split, Standardizer, TrainOptions, merge, train,
};
use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{Model, SessionOptions};

const FINGERPRINT: &str = "aaaa0000";

/// Deterministic pseudo-random numbers (xorshift64*), normal via Box–Muller.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// `per_class` rows per class around well separated centres (offset and scale
/// deliberately far from 0/1, so standardisation matters).
fn blobs(classes: usize, per_class: usize, dim: usize, seed: u64) -> (Array2<f32>, Vec<i32>) {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..dim).map(|_| 6.0 * rng.normal()).collect())
        .collect();
    let mut x = Array2::<f32>::zeros((classes * per_class, dim));
    let mut y = Vec::new();
    for c in 0..classes {
        for i in 0..per_class {
            let r = c * per_class + i;
            for j in 0..dim {
                x[[r, j]] = (100.0 + 10.0 * (centres[c][j] + rng.normal())) as f32;
            }
            y.push(c as i32);
        }
    }
    (x, y)
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|c| format!("class{c}")).collect()
}

fn ort_probabilities(model_bytes: &[u8], input: &str, x: ArrayD<f32>) -> ArrayD<f32> {
    let mut model =
        Model::from_bytes(model_bytes, "test", &SessionOptions::default()).expect("ORT session");
    model.run_single(input, x.view()).expect("ORT run")
}

fn max_abs_diff(a: &Array2<f64>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

#[test]
fn separable_binary_reaches_100_percent_and_onnx_matches() {
    let (x, y) = blobs(2, 60, 16, 7);
    let (xv, yv) = blobs(2, 20, 16, 7); // same centres (same seed) → fresh rows of the same classes
    let train_split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let val_split = Split {
        name: "val",
        features: xv.slice(s![.., ..]),
        labels: &yv,
    };
    let head = train(
        &train_split,
        Some(&val_split),
        &names(2),
        FINGERPRINT,
        &TrainOptions::default(),
    )
    .expect("train");
    assert_eq!(head.kind, xfer_head::HeadKind::Binary);
    assert_eq!(head.hyper_parameters.l2_source, "validation");
    assert_eq!(
        head.hyper_parameters.l2_grid.len(),
        TrainOptions::default().l2_grid.len()
    );
    let m = head.evaluate(x.view(), &y, FINGERPRINT).expect("evaluate");
    assert_eq!(m.accuracy, 1.0);
    assert_eq!(m.roc_auc, Some(1.0));
    let mv = head
        .evaluate(xv.view(), &yv, FINGERPRINT)
        .expect("evaluate val");
    assert_eq!(mv.accuracy, 1.0);

    // head.onnx in the real ONNX Runtime gives the Rust head's probabilities.
    let dir = tempfile::tempdir().expect("tempdir");
    head.save(dir.path()).expect("save");
    let bytes = std::fs::read(dir.path().join(xfer_head::HEAD_ONNX)).expect("head.onnx");
    let rust = head.probabilities(xv.view()).expect("probabilities");
    let onnx = ort_probabilities(&bytes, xfer_head::FEATURES_INPUT, xv.clone().into_dyn());
    let diff = max_abs_diff(&rust, &onnx);
    assert!(diff <= 1e-5, "max abs diff {diff}");
}

#[test]
fn multinomial_four_classes() {
    let (x, y) = blobs(4, 40, 12, 11);
    let (xt, yt) = blobs(4, 15, 12, 11);
    let options = TrainOptions {
        l2: Some(1.0),
        ..TrainOptions::default()
    };
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let head = train(&split, None, &names(4), FINGERPRINT, &options).expect("train");
    assert_eq!(head.kind, xfer_head::HeadKind::Multinomial);
    assert_eq!(head.weights.len(), 4);
    assert_eq!(head.hyper_parameters.l2_source, "given");
    let probs = head.probabilities(xt.view()).expect("probabilities");
    for row in probs.axis_iter(Axis(0)) {
        assert!((row.sum() - 1.0).abs() < 1e-12);
    }
    let m = head
        .evaluate(xt.view(), &yt, FINGERPRINT)
        .expect("evaluate");
    assert_eq!(m.accuracy, 1.0, "{m:?}");
    assert_eq!(m.confusion.len(), 4);
    assert_eq!(m.roc_auc, None);

    let model = head.to_onnx();
    let onnx = ort_probabilities(
        &xfer_onnx::write_model_bytes(&model),
        "features",
        xt.clone().into_dyn(),
    );
    let diff = max_abs_diff(&probs, &onnx);
    assert!(diff <= 1e-5, "max abs diff {diff}");
}

/// At the optimum of `Σ logloss + alpha/2·‖w‖²` the gradient vanishes:
/// `Xᵀ(p − y) + alpha·w = 0` and `Σ(p − y) = 0` (intercept not penalised).
/// Checked independently of linfa on the standardised design matrix.
#[test]
fn binary_head_solves_the_stated_objective() {
    // overlapping classes, so the optimum is finite and well conditioned
    let mut rng = Rng(3);
    let n = 200;
    let d = 5;
    let mut x = Array2::<f32>::zeros((n, d));
    let mut y = Vec::new();
    for i in 0..n {
        let label = i % 2;
        for j in 0..d {
            x[[i, j]] = (rng.normal() + if label == 1 { 0.5 * j as f64 } else { 0.0 }) as f32;
        }
        y.push(label as i32);
    }
    let alpha = 2.0;
    let options = TrainOptions {
        l2: Some(alpha),
        gradient_tolerance: 1e-8,
        ..TrainOptions::default()
    };
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let head = train(&split, None, &names(2), FINGERPRINT, &options).expect("train");
    let p = head.probabilities(x.view()).expect("probabilities");
    let std = head.standardizer.as_ref().expect("standardised by default");
    let mut grad = vec![0f64; d];
    let mut grad_b = 0f64;
    let mut z = vec![0f64; d];
    for i in 0..n {
        std.apply_row(x.row(i), &mut z);
        let r = p[[i, 1]] - f64::from(y[i]);
        grad_b += r;
        for j in 0..d {
            grad[j] += r * z[j];
        }
    }
    for j in 0..d {
        grad[j] += alpha * f64::from(head.weights[1][j]);
    }
    let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(norm < 1e-3, "gradient norm {norm} ({grad:?})");
    assert!(grad_b.abs() < 1e-3, "intercept gradient {grad_b}");
    // the weights are not zero: there was something to learn
    assert!(head.weights[1].iter().map(|w| w.abs()).sum::<f32>() > 0.5);
}

/// Class weights are row replication: weights [1, 2] equal training on data
/// where every class-1 row appears twice.
#[test]
fn class_weights_equal_replicated_rows() {
    let mut rng = Rng(5);
    let n = 120;
    let d = 4;
    let mut x = Array2::<f32>::zeros((n, d));
    let mut y = Vec::new();
    for i in 0..n {
        let label = usize::from(i % 3 == 0);
        for j in 0..d {
            x[[i, j]] = (rng.normal() + label as f64 * 0.8) as f32;
        }
        y.push(label as i32);
    }
    let base = TrainOptions {
        l2: Some(1.0),
        standardize: false,
        gradient_tolerance: 1e-9,
        ..TrainOptions::default()
    };
    let weighted = TrainOptions {
        class_weight: ClassWeight::Given(vec![1.0, 2.0]),
        ..base.clone()
    };
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let a = train(&split, None, &names(2), FINGERPRINT, &weighted).expect("weighted");
    assert_eq!(a.hyper_parameters.effective_class_weights, vec![1.0, 2.0]);

    let ones: Vec<usize> = (0..n).filter(|&i| y[i] == 1).collect();
    let mut xr = Array2::<f32>::zeros((n + ones.len(), d));
    xr.slice_mut(s![..n, ..]).assign(&x);
    let mut yr = y.clone();
    for (k, &i) in ones.iter().enumerate() {
        xr.row_mut(n + k).assign(&x.row(i));
        yr.push(1);
    }
    let split_r = Split {
        name: "train",
        features: xr.view(),
        labels: &yr,
    };
    let b = train(&split_r, None, &names(2), FINGERPRINT, &base).expect("replicated");
    for (wa, wb) in a.weights[1].iter().zip(&b.weights[1]) {
        assert!((wa - wb).abs() < 1e-4, "{wa} vs {wb}");
    }
    assert!((a.bias[1] - b.bias[1]).abs() < 1e-4);
    // and weighting changed the head compared to no weighting
    let c = train(&split, None, &names(2), FINGERPRINT, &base).expect("unweighted");
    assert!(
        (a.bias[1] - c.bias[1]).abs() > 0.1,
        "{} vs {}",
        a.bias[1],
        c.bias[1]
    );
}

#[test]
fn standardisation_round_trip() {
    // mean and population standard deviation worked by hand:
    // column 0: [1, 3] → mean 2, sd 1; column 1: [10, 10] → mean 10, sd 0 → scale 1
    let x = ndarray::array![[1.0f32, 10.0], [3.0, 10.0]];
    let s = Standardizer::fit(x.view());
    assert_eq!(s.mean, vec![2.0, 10.0]);
    assert_eq!(s.scale, vec![1.0, 1.0]);
    let mut out = [0f64; 2];
    s.apply_row(x.row(1), &mut out);
    assert_eq!(out, [1.0, 0.0]);

    let (x, y) = blobs(3, 20, 6, 21);
    let options = TrainOptions {
        l2: Some(0.5),
        ..TrainOptions::default()
    };
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let head = train(&split, None, &names(3), FINGERPRINT, &options).expect("train");
    let std = head.standardizer.as_ref().expect("standardizer");
    assert!((std.mean[0] - x.column(0).mean().expect("mean")).abs() < 1e-3);
    let dir = tempfile::tempdir().expect("tempdir");
    head.save(dir.path()).expect("save");
    let loaded = Head::load(dir.path()).expect("load");
    assert_eq!(loaded, head);
    assert_eq!(
        loaded.probabilities(x.view()).expect("p"),
        head.probabilities(x.view()).expect("p")
    );
    // the saved head.onnx applies the same standardisation
    let bytes = std::fs::read(dir.path().join("head.onnx")).expect("head.onnx");
    let onnx = ort_probabilities(&bytes, "features", x.clone().into_dyn());
    assert!(max_abs_diff(&head.probabilities(x.view()).expect("p"), &onnx) <= 1e-5);
    // no temporary files left behind
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn corrupt_head_json_is_a_clear_error() {
    let (x, y) = blobs(2, 10, 3, 2);
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let options = TrainOptions {
        l2: Some(1.0),
        ..TrainOptions::default()
    };
    let mut head = train(&split, None, &names(2), FINGERPRINT, &options).expect("train");
    head.bias.pop();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("head.json"),
        serde_json::to_string(&head).expect("json"),
    )
    .expect("write");
    let err = Head::load(dir.path()).expect_err("inconsistent head");
    assert!(err.to_string().contains("biases"), "{err}");
    let err = Head::load(&dir.path().join("nothing")).expect_err("missing");
    assert!(err.to_string().contains("train-head"), "{err}");
}

#[test]
fn embeddings_of_another_model_are_refused() {
    let (x, y) = blobs(2, 10, 3, 9);
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let options = TrainOptions {
        l2: Some(1.0),
        ..TrainOptions::default()
    };
    let head = train(&split, None, &names(2), FINGERPRINT, &options).expect("train");
    let err = head
        .evaluate(x.view(), &y, "bbbb1111")
        .expect_err("other fingerprint");
    let msg = err.to_string();
    assert!(matches!(err, xfer_head::Error::FingerprintMismatch { .. }));
    assert!(
        msg.contains("aaaa0000") && msg.contains("bbbb1111"),
        "{msg}"
    );
    assert!(head.check_fingerprint(FINGERPRINT).is_ok());
}

#[test]
fn bad_training_data_is_refused_with_a_message() {
    let (x, mut y) = blobs(2, 10, 3, 4);
    y.iter_mut().for_each(|l| *l = 0);
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let err = train(
        &split,
        None,
        &names(2),
        FINGERPRINT,
        &TrainOptions::default(),
    )
    .expect_err("one class");
    assert!(err.to_string().contains("class1"), "{err}");
    let (x, y) = blobs(2, 10, 3, 4);
    let split = Split {
        name: "train",
        features: x.view(),
        labels: &y,
    };
    let err = train(
        &split,
        None,
        &names(2),
        FINGERPRINT,
        &TrainOptions::default(),
    )
    .expect_err("no val");
    assert!(err.to_string().contains("--l2"), "{err}");
}

/// A tiny backbone (GlobalAveragePool + Flatten) merged with a head gives,
/// in ONNX Runtime, the head's probabilities of the per-channel means.
#[test]
fn export_merges_backbone_and_head() {
    let (c, h, w) = (3usize, 4usize, 5usize);
    let mut g = GraphBuilder::new("tiny");
    g.input(
        "pixels",
        &[
            Dim::from("batch"),
            Dim::Fixed(c as i64),
            Dim::Fixed(h as i64),
            Dim::Fixed(w as i64),
        ],
    );
    let scale = g.constant_f32("scale", &[], &[1.0 / 255.0]);
    let x = g.op("Mul", &["pixels", &scale], vec![], "scaled");
    let pooled = g.op("GlobalAveragePool", &[&x], vec![], "pooled");
    g.node_named(
        "Flatten",
        &[&pooled],
        &["features"],
        vec![attr::int("axis", 1)],
    );
    // a value called like a head value, to check the prefixes keep them apart
    g.output("features", &[Dim::from("batch"), Dim::Fixed(c as i64)]);
    let backbone = g.build_model();

    let mut rng = Rng(13);
    let n = 12;
    let pixels = ndarray::Array4::<f32>::from_shape_fn((n, c, h, w), |(i, ch, _, _)| {
        ((i % 2) as f64 * 60.0 + ch as f64 * 20.0 + 40.0 * rng.uniform()) as f32
    });
    let feats = pixels
        .mean_axis(Axis(3))
        .expect("w")
        .mean_axis(Axis(2))
        .expect("h")
        / 255.0;
    let labels: Vec<i32> = (0..n).map(|i| (i % 2) as i32).collect();
    let split = Split {
        name: "train",
        features: feats.view(),
        labels: &labels,
    };
    let options = TrainOptions {
        l2: Some(0.1),
        ..TrainOptions::default()
    };
    let classes = vec!["cat".to_owned(), "dog".to_owned()];
    let head = train(&split, None, &classes, FINGERPRINT, &options).expect("train");

    let export = ExportOptions {
        input: "pixels".to_owned(),
        features_output: "features".to_owned(),
        image_size: [h as u32, w as u32],
        value_range: [0.0, 255.0],
        backbone_name: "tiny".to_owned(),
    };
    let merged = merge(&backbone, &head, &export).expect("merge");
    assert_eq!(merged.metadata("classes"), Some(r#"["cat","dog"]"#));
    assert_eq!(merged.metadata("image_size"), Some("[4,5]"));
    assert_eq!(merged.metadata("input"), Some("pixels"));
    let graph = merged.graph.as_ref().expect("graph");
    assert_eq!(graph.output.len(), 1);
    assert_eq!(graph.output[0].name, "probabilities");
    assert!(graph.initializer.iter().any(|t| t.name == "backbone/scale"));
    assert!(graph.initializer.iter().any(|t| t.name == "head/weights"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.onnx");
    xfer_onnx::write_model(&merged, &path).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    let onnx = ort_probabilities(&bytes, "pixels", pixels.into_dyn());
    let rust = head.probabilities(feats.view()).expect("probabilities");
    let diff = max_abs_diff(&rust, &onnx);
    assert!(diff <= 1e-5, "max abs diff {diff}");

    let err = merge(
        &backbone,
        &head,
        &ExportOptions {
            features_output: "nope".to_owned(),
            ..export
        },
    )
    .expect_err("missing output");
    assert!(err.to_string().contains("nope"), "{err}");
}

/// Warm starts along the grid reach the same optimum as a fit from zero.
#[test]
fn grid_choice_equals_a_fit_from_zero_at_that_strength() {
    let mut rng = Rng(17);
    let (n, d) = (240, 6);
    let mut x = Array2::<f32>::zeros((n, d));
    let mut y = Vec::new();
    for i in 0..n {
        let label = i % 3;
        for j in 0..d {
            x[[i, j]] = (rng.normal() + if j % 3 == label { 1.0 } else { 0.0 }) as f32;
        }
        y.push(label as i32);
    }
    let (xt, yt) = (x.slice(s![..n / 2, ..]), &y[..n / 2]);
    let (xv, yv) = (x.slice(s![n / 2.., ..]), &y[n / 2..]);
    let train_split = Split {
        name: "train",
        features: xt,
        labels: yt,
    };
    let val_split = Split {
        name: "val",
        features: xv,
        labels: yv,
    };
    let grid = TrainOptions {
        gradient_tolerance: 1e-9,
        ..TrainOptions::default()
    };
    let chosen = train(
        &train_split,
        Some(&val_split),
        &names(3),
        FINGERPRINT,
        &grid,
    )
    .expect("grid");
    assert!(chosen.hyper_parameters.solver.contains("warm-started"));
    let direct = TrainOptions {
        l2: Some(chosen.hyper_parameters.l2),
        ..grid.clone()
    };
    let fresh = train(&train_split, None, &names(3), FINGERPRINT, &direct).expect("direct");
    assert!(fresh.hyper_parameters.solver.contains("from zero"));
    let a = chosen.probabilities(xv).expect("p");
    let b = fresh.probabilities(xv).expect("p");
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "max probability difference {diff}");
}
