//! End-to-end fine-tuning of a tiny CNN (2 × Conv + BatchNorm + ReLU, global
//! average pooling) that the tests build, on a small synthetic PNG dataset that
//! the tests write, through the real ONNX Runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ndarray::{Array4, ArrayD, IxDyn};
use xfer_autodiff::{CpuKernelChoice, HeadSpec, Loss, Parameter, Trainable, TrainingGraphBuilder};
use xfer_finetune::{
    Checkpoint, Error, Event, ExportChoice, ExportInfo, FinetuneConfig, MetricsLog, Outcome,
    RunOptions, TEST_PREDICTIONS, checkpoint_parameters, export_model, finetune, trained_forward,
};
use xfer_onnx::{Dim, GraphBuilder, ModelProto, TensorProto, attr};
use xfer_runtime::{InputTensor, Model, ModelManifest, ModelSource, SessionOptions};

const SIDE: u32 = 12;
const PER_CLASS: usize = 16;

/// A deterministic pseudo-random stream for fixtures.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Two classes told apart by colour: `blue` images are blue-ish, `red` ones red-ish, with noise.
fn write_dataset(root: &Path) {
    write_dataset_coloured(root, [(70.0, 170.0), (170.0, 70.0)]);
}

/// The two classes with red and blue means `colours` (equal means: only noise tells them apart).
fn write_dataset_coloured(root: &Path, colours: [(f32, f32); 2]) {
    let mut rng = Lcg(7);
    for (class, (r, b)) in ["blue", "red"].into_iter().zip(colours) {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..PER_CLASS {
            let img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
                let stripe = if (x + y) % 4 < 2 { 20.0 } else { -20.0 };
                let noise = |rng: &mut Lcg| (rng.next() - 0.5) * 80.0;
                let px = |v: f32| v.clamp(0.0, 255.0) as u8;
                image::Rgb([
                    px(r + stripe + noise(&mut rng)),
                    px(110.0 + noise(&mut rng)),
                    px(b - stripe + noise(&mut rng)),
                ])
            });
            img.save(dir.join(format!("{i:03}.png"))).expect("save png");
        }
    }
}

fn values(rng: &mut Lcg, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next() - 0.5) * 2.0 * scale).collect()
}

/// pixels → x/127.5 − 1 → Conv(4, 3×3) → BN → ReLU → Conv(4, 3×3, stride 2) → BN → ReLU → GAP → Flatten.
fn tiny_forward() -> ModelProto {
    let mut rng = Lcg(11);
    let mut g = GraphBuilder::new("tiny_cnn");
    g.input(
        "pixels",
        &[
            Dim::from("batch"),
            Dim::Fixed(3),
            Dim::Fixed(SIDE as i64),
            Dim::Fixed(SIDE as i64),
        ],
    );
    let scale = g.constant_f32("pre.scale", &[], &[1.0 / 127.5]);
    let offset = g.constant_f32("pre.offset", &[], &[-1.0]);
    let x = g.op("Mul", &["pixels", &scale], vec![], "scaled");
    let mut x = g.op("Add", &[&x, &offset], vec![], "preprocessed");
    for (layer, (cin, stride)) in [(1, (3i64, 1i64)), (2, (4, 2))] {
        let conv = format!("block{layer}_conv");
        let bn = format!("block{layer}_bn");
        // Small random kernels plus a designed part, so that the frozen features
        // already tell the classes apart: block 1's filters 0 and 1 compare red
        // with blue, block 2 passes its input through at the centre tap.
        let mut kernel = values(&mut rng, (4 * cin * 9) as usize, 0.1);
        for o in 0..4usize {
            for i in 0..cin as usize {
                for t in 0..9usize {
                    let w = &mut kernel[(o * cin as usize + i) * 9 + t];
                    *w += match (layer, o, i) {
                        (1, 0, 0) | (1, 1, 2) => 0.15,
                        (1, 0, 2) | (1, 1, 0) => -0.15,
                        (2, o, i) if o == i && t == 4 => 1.0,
                        _ => 0.0,
                    };
                }
            }
        }
        let k = g.initializer(TensorProto::from_f32(
            format!("{conv}.kernel"),
            &[4, cin, 3, 3],
            &kernel,
        ));
        let bias = g.initializer(TensorProto::from_f32(
            format!("{conv}.bias"),
            &[4],
            &values(&mut rng, 4, 0.1),
        ));
        let c = g.op(
            "Conv",
            &[&x, &k, &bias],
            vec![
                attr::ints("pads", &[1, 1, 1, 1]),
                attr::ints("strides", &[stride, stride]),
            ],
            &conv,
        );
        let gamma: Vec<f32> = values(&mut rng, 4, 0.2).iter().map(|v| 1.0 + v).collect();
        let var: Vec<f32> = values(&mut rng, 4, 0.5).iter().map(|v| 1.0 + v).collect();
        let gamma = g.initializer(TensorProto::from_f32(format!("{bn}.gamma"), &[4], &gamma));
        let beta = g.initializer(TensorProto::from_f32(
            format!("{bn}.beta"),
            &[4],
            &values(&mut rng, 4, 0.1),
        ));
        let mean = g.initializer(TensorProto::from_f32(
            format!("{bn}.moving_mean"),
            &[4],
            &values(&mut rng, 4, 0.3),
        ));
        let var = g.initializer(TensorProto::from_f32(
            format!("{bn}.moving_variance"),
            &[4],
            &var,
        ));
        let n = g.op(
            "BatchNormalization",
            &[&c, &gamma, &beta, &mean, &var],
            vec![attr::float("epsilon", 1e-3)],
            &bn,
        );
        x = g.op("Relu", &[&n], vec![], &format!("block{layer}_relu"));
    }
    let pooled = g.op("GlobalAveragePool", &[&x], vec![], "pooled");
    g.node_named(
        "Flatten",
        &[&pooled],
        &["features"],
        vec![attr::int("axis", 1)],
    );
    g.output("features", &[Dim::from("batch"), Dim::Fixed(4)]);
    g.build_model()
}

/// Writes `dir/{model.onnx, train.onnx, model.json}`.
fn write_model(dir: &Path, forward: ModelProto) -> ModelProto {
    std::fs::create_dir_all(dir).expect("mkdir");
    xfer_onnx::write_model(&forward, &dir.join("model.onnx")).expect("write");
    xfer_onnx::write_model(&forward, &dir.join("train.onnx")).expect("write");
    let bytes = std::fs::read(dir.join("model.onnx")).expect("read");
    ModelManifest {
        name: "tiny".to_owned(),
        onnx: "model.onnx".to_owned(),
        training_onnx: Some("train.onnx".to_owned()),
        input: "pixels".to_owned(),
        layout: "NCHW".to_owned(),
        channel_order: "RGB".to_owned(),
        value_range: [0.0, 255.0],
        image_size: [SIDE, SIDE],
        preprocessing: "x/127.5 - 1".to_owned(),
        output: "features".to_owned(),
        feature_dim: 4,
        classes: None,
        source: ModelSource {
            package: "test".to_owned(),
            file: "tiny".to_owned(),
            sha256: String::new(),
        },
        fingerprint: xfer_runtime::fingerprint(&bytes),
        xfer_version: "test".to_owned(),
    }
    .write(dir)
    .expect("manifest");
    forward
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    forward: ModelProto,
}

fn fixture() -> Fixture {
    fixture_of(tiny_forward())
}

/// [`tiny_forward`] with a depthwise 3x3 conv (4 channels, a graph input when trained) between
/// block 2 and the pooling, whose training graph [`CpuKernelChoice::Nchwc`] rewrites.
fn tiny_forward_with_depthwise() -> ModelProto {
    let mut forward = tiny_forward();
    let graph = forward.graph.as_mut().expect("graph");
    let mut rng = Lcg(5);
    let mut kernel = values(&mut rng, 36, 0.1);
    for c in 0..4 {
        kernel[c * 9 + 4] += 1.0;
    }
    graph.initializer.push(TensorProto::from_f32(
        "block3_dw.depthwise_kernel",
        &[4, 1, 3, 3],
        &kernel,
    ));
    let pool = graph
        .node
        .iter()
        .position(|n| n.op_type == "GlobalAveragePool")
        .expect("pooling");
    let input = graph.node[pool].input[0].clone();
    graph.node[pool].input[0] = "block3_dw".to_owned();
    let mut dw = graph.node[pool].clone();
    dw.name = "block3_dw".to_owned();
    dw.op_type = "Conv".to_owned();
    dw.input = vec![input, "block3_dw.depthwise_kernel".to_owned()];
    dw.output = vec!["block3_dw".to_owned()];
    dw.attribute = vec![attr::int("group", 4), attr::ints("pads", &[1, 1, 1, 1])];
    graph.node.insert(pool, dw);
    forward
}

fn fixture_of(forward: ModelProto) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    write_dataset(&root.join("data"));
    let forward = write_model(&root.join("model"), forward);
    Fixture {
        _dir: dir,
        root,
        forward,
    }
}

fn config(f: &Fixture, phase1: usize, phase2: usize) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        data: f.root.join("data"),
        model: f.root.join("model"),
        seed: 3,
        batch_size: 8,
        ..FinetuneConfig::default()
    };
    c.phase1.epochs = phase1;
    c.phase1.learning_rate = 0.05;
    c.phase2.epochs = phase2;
    c.phase2.learning_rate = 0.01;
    c.splits.train = "train[:50%]".to_owned();
    c.splits.val = "train[50%:75%]".to_owned();
    c.splits.test = "train[75%:]".to_owned();
    c
}

fn options(run: &Path) -> RunOptions {
    let mut o = RunOptions::new(run);
    o.session = SessionOptions {
        intra_threads: Some(1),
        ..SessionOptions::default()
    };
    o.loader_threads = Some(1);
    o
}

fn run_to_end(config: &FinetuneConfig, options: &RunOptions) -> xfer_finetune::Summary {
    match finetune(config, options, &mut |_| {}).expect("finetune") {
        Outcome::Finished(s) => s,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

fn initializers(model: &ModelProto) -> BTreeMap<String, Vec<f32>> {
    model
        .graph
        .as_ref()
        .expect("graph")
        .initializer
        .iter()
        .filter_map(|t| t.to_f32().ok().map(|v| (t.name.clone(), v)))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn phase1_lowers_the_loss_and_trains_only_the_head() {
    let f = fixture();
    let run = f.root.join("run");
    let summary = run_to_end(&config(&f, 5, 0), &options(&run));
    let records = MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.phase == 1));
    let (first, last) = (&records[0], &records[4]);
    assert!(
        last.train_loss < first.train_loss && last.val_loss < first.val_loss,
        "loss did not decrease: {:?}",
        records
            .iter()
            .map(|r| (r.train_loss, r.val_loss))
            .collect::<Vec<_>>()
    );
    // The summary holds what the log holds (JSON may differ in the last bit of a float).
    assert_eq!(summary.epochs.len(), records.len());
    for (a, b) in summary.epochs.iter().zip(&records) {
        assert_eq!((a.phase, a.epoch, a.step), (b.phase, b.epoch, b.step));
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-12
                && (a.val_accuracy - b.val_accuracy).abs() < 1e-12
        );
    }
    assert!(
        last.val_accuracy > 0.9,
        "validation accuracy {}",
        last.val_accuracy
    );

    // Only the head is in the checkpoint; every backbone initializer is bit-identical.
    let ckpt = Checkpoint::load(&Checkpoint::last_path(&run)).expect("checkpoint");
    let params = checkpoint_parameters(&ckpt);
    assert_eq!(
        params.keys().cloned().collect::<Vec<_>>(),
        vec!["head.bias", "head.kernel"]
    );
    assert_eq!(ckpt.state.phase, 1);
    assert_eq!(ckpt.state.epochs_done, 5);
    let trained = trained_forward(&f.forward, &params).expect("trained forward");
    let (before, after) = (initializers(&f.forward), initializers(&trained));
    assert_eq!(before.len(), after.len());
    for (name, v) in &before {
        assert_eq!(bits(v), bits(&after[name]), "{name} changed in phase 1");
    }
    // Run files.
    for file in [
        "config.toml",
        "curves.png",
        "curves.svg",
        "model.onnx",
        "metrics.json",
        "checkpoints/best.safetensors",
        "checkpoints/last.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let png = std::fs::read(run.join("curves.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(run.join("curves.svg")).expect("svg");
    assert!(
        svg.contains("accuracy") && svg.contains("epoch"),
        "svg lacks labels"
    );
    let test = summary.test.expect("test metrics");
    assert_eq!(test.rows, 8);
}

#[test]
fn phase2_trains_the_backbone_but_never_the_batchnorm_statistics() {
    let f = fixture();
    let run = f.root.join("run");
    run_to_end(&config(&f, 2, 2), &options(&run));
    let records = MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(
        records
            .iter()
            .map(|r| (r.phase, r.epoch, r.global_epoch))
            .collect::<Vec<_>>(),
        vec![(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4)]
    );
    let ckpt = Checkpoint::load(&Checkpoint::last_path(&run)).expect("checkpoint");
    let params = checkpoint_parameters(&ckpt);
    assert!(params.contains_key("block1_conv.kernel") && params.contains_key("block2_bn.gamma"));
    assert!(
        !params.keys().any(|k| k.contains("moving")),
        "statistics were trained: {:?}",
        params.keys()
    );
    let trained = trained_forward(&f.forward, &params).expect("trained forward");
    let (before, after) = (initializers(&f.forward), initializers(&trained));
    let mut changed = Vec::new();
    for (name, v) in &before {
        if name.contains("moving") {
            assert_eq!(bits(v), bits(&after[name]), "{name} changed in phase 2");
        } else if bits(v) != bits(&after[name]) {
            changed.push(name.clone());
        }
    }
    for name in [
        "block1_conv.kernel",
        "block2_conv.kernel",
        "block1_bn.gamma",
        "block2_bn.beta",
    ] {
        assert!(
            changed.iter().any(|c| c == name),
            "{name} did not train in phase 2; changed: {changed:?}"
        );
    }
}

#[test]
fn an_interrupted_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    resumed_run_ends_bit_identical(&fixture(), CpuKernelChoice::default());
}

/// With ONNX Runtime's NCHWc kernels for the depthwise conv (where this CPU has them).
#[test]
fn a_resumed_run_with_nchwc_depthwise_kernels_ends_bit_identical() {
    let block = xfer_autodiff::nchwc_block(&SessionOptions::default()).expect("probe");
    if block.is_none() && !cfg!(target_arch = "x86_64") {
        return; // no NCHWc kernels on this architecture
    }
    assert!(block.is_some(), "an x86-64 CPU has an NCHWc block");
    resumed_run_ends_bit_identical(
        &fixture_of(tiny_forward_with_depthwise()),
        CpuKernelChoice::Nchwc,
    );
}

/// A run stopped mid-phase-2 under NCHWc kernels resumes under portable ones (the checkpoint
/// does not depend on the kernels) and ends where a portable run does, up to float rounding.
#[test]
fn a_run_stopped_with_nchwc_kernels_resumes_with_portable_ones() {
    if xfer_autodiff::nchwc_block(&SessionOptions::default())
        .expect("probe")
        .is_none()
    {
        return; // checked by a_resumed_run_with_nchwc_depthwise_kernels_ends_bit_identical
    }
    let f = fixture_of(tiny_forward_with_depthwise());
    let cfg = config(&f, 1, 2);
    let portable = f.root.join("portable");
    let mut opts = options(&portable);
    opts.cpu_kernels = CpuKernelChoice::Portable;
    run_to_end(&cfg, &opts);

    let mixed = f.root.join("mixed");
    let mut opts = options(&mixed);
    opts.cpu_kernels = CpuKernelChoice::Nchwc;
    let stop = opts.stop.clone();
    let mut steps = 0usize;
    let outcome = finetune(&cfg, &opts, &mut |e| {
        if let Event::Step { .. } = e {
            steps += 1;
            if steps == 3 {
                stop.store(true, Ordering::SeqCst);
            }
        }
    })
    .expect("finetune");
    assert!(
        matches!(outcome, Outcome::Interrupted { phase: 2, .. }),
        "{outcome:?}"
    );
    opts.resume = true;
    opts.stop.store(false, Ordering::SeqCst);
    opts.cpu_kernels = CpuKernelChoice::Portable;
    let mut resumed_steps = 0usize;
    let outcome = finetune(&cfg, &opts, &mut |e| {
        if let Event::Step { .. } = e {
            resumed_steps += 1;
        }
    })
    .expect("finetune");
    assert!(matches!(outcome, Outcome::Finished(_)), "{outcome:?}");
    // 1 + 2 epochs of 2 steps: the resume continues after the 3 steps done.
    assert_eq!(resumed_steps, 3);

    let a = Checkpoint::load(&Checkpoint::last_path(&portable)).expect("a");
    let b = Checkpoint::load(&Checkpoint::last_path(&mixed)).expect("b");
    assert!(b.tensors.contains_key("param.block3_dw.depthwise_kernel"));
    let (abs, rel, _) = checkpoint_difference(&a, &b);
    assert!(
        abs <= 1e-4,
        "parameters differ by {abs:.2e} (relative {rel:.2e})"
    );
}

/// A run interrupted twice and resumed ends with the same bits as one straight run.
fn resumed_run_ends_bit_identical(f: &Fixture, kernels: CpuKernelChoice) {
    let cfg = config(f, 2, 2);
    let straight = f.root.join("straight");
    let mut straight_opts = options(&straight);
    straight_opts.cpu_kernels = kernels;
    run_to_end(&cfg, &straight_opts);

    // Interrupt twice: mid-epoch in phase 1, then mid-epoch in phase 2.
    let resumed = f.root.join("resumed");
    let mut opts = options(&resumed);
    opts.cpu_kernels = kernels;
    for (stop_after, resume) in [(3usize, false), (4, true)] {
        opts.resume = resume;
        opts.stop.store(false, Ordering::SeqCst);
        let stop = opts.stop.clone();
        let mut steps = 0usize;
        let outcome = finetune(&cfg, &opts, &mut |e| {
            if let Event::Step { .. } = e {
                steps += 1;
                if steps == stop_after {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .expect("finetune");
        let Outcome::Interrupted { step_in_epoch, .. } = outcome else {
            panic!("expected an interruption, got {outcome:?}");
        };
        assert!(step_in_epoch > 0, "the interruption should fall mid-epoch");
    }
    opts.resume = true;
    opts.stop.store(false, Ordering::SeqCst);
    run_to_end(&cfg, &opts);

    let a = Checkpoint::load(&Checkpoint::last_path(&straight)).expect("a");
    let b = Checkpoint::load(&Checkpoint::last_path(&resumed)).expect("b");
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        assert_eq!(
            ta.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            tb.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name} differs after resume"
        );
    }
    assert_eq!(a.state.global_step, b.state.global_step);
    let la = MetricsLog::read(&straight.join("metrics.jsonl")).expect("log a");
    let lb = MetricsLog::read(&resumed.join("metrics.jsonl")).expect("log b");
    assert_eq!(la.len(), lb.len());
    for (ra, rb) in la.iter().zip(&lb) {
        assert_eq!(
            (ra.train_loss, ra.val_loss, ra.train_accuracy),
            (rb.train_loss, rb.val_loss, rb.train_accuracy)
        );
    }
    // A fresh run in a used folder is refused.
    let err = finetune(&cfg, &options(&straight), &mut |_| {}).expect_err("must refuse");
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn a_one_epoch_run_keeps_no_image_cache() {
    // One epoch reads every image once: a cache would only hold memory (issue 15).
    let f = fixture();
    for (phase1, phase2) in [(1, 0), (0, 1)] {
        let run = f.root.join(format!("one-{phase1}-{phase2}"));
        let summary = run_to_end(&config(&f, phase1, phase2), &options(&run));
        assert!(summary.train_cache.is_none() && summary.val_cache.is_none());
        assert_eq!(summary.epochs.len(), 1);
    }
    // Two epochs keep it (the test below checks what it serves).
    let run = f.root.join("two");
    let summary = run_to_end(&config(&f, 1, 1), &options(&run));
    assert!(summary.train_cache.is_some() && summary.val_cache.is_some());
}

#[test]
fn the_image_cache_serves_later_epochs_and_changes_no_result() {
    let f = fixture();
    let cfg = config(&f, 2, 1);
    let cached_run = f.root.join("cached");
    let cached = run_to_end(&cfg, &options(&cached_run));
    let plain_run = f.root.join("plain");
    let mut plain_options = options(&plain_run);
    plain_options.cache_bytes = 0;
    let plain = run_to_end(&cfg, &plain_options);
    assert!(plain.train_cache.is_none() && plain.val_cache.is_none());

    // Training examples: read in epoch 1, served from memory in the 2 later epochs (phase
    // 2 included); validation likewise (3 validations). Nothing was refused for lack of room.
    let (train, val) = (PER_CLASS as u64, PER_CLASS as u64 / 2);
    let t = cached.train_cache.expect("train cache stats");
    assert_eq!((t.hits, t.misses, t.not_cached), (2 * train, train, 0));
    assert_eq!(t.entries as u64, train);
    assert_eq!(t.bytes, train * 3 * u64::from(SIDE * SIDE) * 4);
    let v = cached.val_cache.expect("val cache stats");
    assert_eq!((v.hits, v.misses, v.entries as u64), (2 * val, val, val));
    assert_eq!(
        t.capacity_bytes + v.capacity_bytes,
        xfer_finetune::DEFAULT_CACHE_BYTES
    );

    let a = Checkpoint::load(&Checkpoint::last_path(&cached_run)).expect("a");
    let b = Checkpoint::load(&Checkpoint::last_path(&plain_run)).expect("b");
    for (name, ta) in &a.tensors {
        assert_eq!(
            ta.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.tensors[name]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "{name} differs with the image cache"
        );
    }
    for (ra, rb) in cached.epochs.iter().zip(&plain.epochs) {
        assert_eq!(
            (
                ra.train_loss,
                ra.val_loss,
                ra.train_accuracy,
                ra.val_accuracy
            ),
            (
                rb.train_loss,
                rb.val_loss,
                rb.train_accuracy,
                rb.val_accuracy
            )
        );
    }
    assert_eq!(cached.epochs.len(), 3);
    assert_eq!(
        cached.test.as_ref().map(|m| m.accuracy),
        plain.test.as_ref().map(|m| m.accuracy)
    );
}

#[test]
fn training_and_augmentation_are_seeded() {
    let f = fixture();
    let params_of = |name: &str, seed: u64, augment: bool| {
        let mut cfg = config(&f, 1, 0);
        cfg.seed = seed;
        if !augment {
            cfg.augmentation.flip = false;
            cfg.augmentation.rotation = 0.0;
        }
        let run = f.root.join(name);
        run_to_end(&cfg, &options(&run));
        let ckpt = Checkpoint::load(&Checkpoint::last_path(&run)).expect("ckpt");
        bits(&checkpoint_parameters(&ckpt)["head.kernel"].data)
    };
    let a = params_of("a", 5, true);
    assert_eq!(a, params_of("b", 5, true), "same seed, different result");
    assert_ne!(
        a,
        params_of("c", 6, true),
        "another seed gave the same result"
    );
    assert_ne!(a, params_of("d", 5, false), "augmentation changed nothing");
}

#[test]
fn the_exported_model_matches_the_eval_graph() {
    let f = fixture();
    let run = f.root.join("run");
    let summary = run_to_end(&config(&f, 1, 1), &options(&run));
    let params =
        checkpoint_parameters(&Checkpoint::load(&Checkpoint::last_path(&run)).expect("ckpt"));
    let graphs = TrainingGraphBuilder::new(f.forward.clone())
        .features("features")
        .head(HeadSpec::Dense {
            units: 1,
            dropout: 0.2,
        })
        .trainable(Trainable::All)
        .loss(Loss::BinaryCrossEntropyWithLogits)
        .example_shape(&[3, SIDE as i64, SIDE as i64])
        .build()
        .expect("graphs");
    let trained: Vec<Parameter> = graphs
        .params
        .iter()
        .map(|p| params[&p.name].clone())
        .collect();
    let eval = graphs.eval_with(&trained).expect("eval");
    let session = SessionOptions::default();
    let mut eval = Model::from_bytes(&xfer_onnx::write_model_bytes(&eval), "eval", &session)
        .expect("eval session");
    let mut exported = Model::load(&summary.model, &session).expect("exported session");
    let exported_proto = xfer_onnx::read_model(&summary.model).expect("read");
    let ops: Vec<&str> = exported_proto
        .graph
        .as_ref()
        .expect("g")
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert!(
        !ops.contains(&"BatchNormalization"),
        "BatchNorm not folded: {ops:?}"
    );

    let mut rng = Lcg(99);
    let pixels =
        Array4::from_shape_fn((5, 3, SIDE as usize, SIDE as usize), |_| rng.next() * 255.0);
    let logits = eval
        .run_single("pixels", pixels.view().into_dyn())
        .expect("eval run");
    let probs = exported
        .run(&[("pixels", InputTensor::F32(pixels.view().into_dyn()))])
        .expect("run");
    let probs: ArrayD<f32> = probs
        .into_iter()
        .next()
        .and_then(|(_, t)| t.into_f32())
        .expect("probs");
    assert_eq!(probs.shape(), &[5, 2]);
    for i in 0..5 {
        let p = 1.0 / (1.0 + (-f64::from(logits[IxDyn(&[i, 0])])).exp());
        let got = f64::from(probs[IxDyn(&[i, 1])]);
        assert!(
            (p - got).abs() <= 1e-5,
            "image {i}: eval {p}, exported {got}"
        );
        assert!((f64::from(probs[IxDyn(&[i, 0])]) + got - 1.0).abs() <= 1e-6);
    }
}

#[test]
fn a_diverging_loss_stops_the_run_naming_epoch_and_step() {
    let f = fixture();
    let run = f.root.join("run");
    let mut cfg = config(&f, 2, 0);
    cfg.phase1.learning_rate = 3e38;
    let err = finetune(&cfg, &options(&run), &mut |_| {}).expect_err("must diverge");
    assert!(
        matches!(
            err,
            Error::NonFinite {
                phase: 1,
                epoch: 1,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("epoch 1") && text.contains("batch"), "{text}");
    assert!(
        !Checkpoint::last_path(&run).exists(),
        "a diverged state was checkpointed"
    );
}

#[test]
fn init_head_starts_phase1_from_a_head_of_train_head() {
    let f = fixture();
    let manifest = ModelManifest::read(&f.root.join("model")).expect("manifest");
    let head_dir = f.root.join("head");
    std::fs::create_dir_all(&head_dir).expect("mkdir");
    let head = serde_json::json!({
        "format": 1, "kind": "binary", "classes": ["blue", "red"], "feature_dim": 4,
        "fingerprint": manifest.fingerprint,
        "weights": [[0.0, 0.0, 0.0, 0.0], [0.8, -0.6, 0.3, -0.2]], "bias": [0.0, 0.15],
        "standardizer": {"mean": [0.5, 0.4, 0.3, 0.2], "scale": [0.7, 0.6, 0.5, 2.0]},
        "hyper_parameters": {"l2": 1.0, "l2_source": "given", "l2_grid": [], "standardize": true,
            "class_weight": "none", "effective_class_weights": [1.0, 1.0], "max_iterations": 10,
            "gradient_tolerance": 0.0001, "train_rows": 1, "train_split": "train", "val_split": null,
            "solver": "test"},
        "xfer_version": "test"
    });
    std::fs::write(head_dir.join("head.json"), head.to_string()).expect("write head");

    // A negligible learning rate: the exported model must compute the given head.
    let run = f.root.join("run");
    let mut cfg = config(&f, 1, 0);
    cfg.phase1.learning_rate = 1e-12;
    cfg.init_head = Some(head_dir.clone());
    let summary = run_to_end(&cfg, &options(&run));
    let head = xfer_head::Head::load(&head_dir).expect("head");
    let mut rng = Lcg(5);
    let pixels =
        Array4::from_shape_fn((4, 3, SIDE as usize, SIDE as usize), |_| rng.next() * 255.0);
    let session = SessionOptions::default();
    let mut forward = Model::from_bytes(
        &xfer_onnx::write_model_bytes(&f.forward),
        "forward",
        &session,
    )
    .expect("forward");
    let features = forward
        .run_single("pixels", pixels.view().into_dyn())
        .expect("features");
    let features = features.into_shape_with_order((4, 4)).expect("[4, 4]");
    let expected = head
        .probabilities(features.view())
        .expect("head probabilities");
    let mut exported = Model::load(&summary.model, &session).expect("exported");
    let got = exported
        .run_single("pixels", pixels.view().into_dyn())
        .expect("run");
    for i in 0..4 {
        let (e, g) = (expected[[i, 1]], f64::from(got[IxDyn(&[i, 1])]));
        assert!(
            (e - g).abs() < 1e-5,
            "image {i}: head {e}, fine-tuned export {g}"
        );
    }

    // A head of another model is refused, naming both fingerprints.
    let mut other = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(head_dir.join("head.json")).expect("read"),
    )
    .expect("json");
    other["fingerprint"] = serde_json::Value::from("0123");
    std::fs::write(head_dir.join("head.json"), other.to_string()).expect("write");
    let err = finetune(&cfg, &options(&f.root.join("run2")), &mut |_| {}).expect_err("fingerprint");
    assert!(err.to_string().contains("0123"), "{err}");
}

/// `model.onnx` of the fine-tuned tiny CNN as [`export_model`] writes it for `params`.
fn exported_bytes(f: &Fixture, params: &BTreeMap<String, Parameter>) -> Vec<u8> {
    let manifest = ModelManifest::read(&f.root.join("model")).expect("manifest");
    let info = ExportInfo {
        input: manifest.input.clone(),
        features: manifest.output.clone(),
        classes: vec!["blue".to_owned(), "red".to_owned()],
        image_size: [SIDE, SIDE],
        value_range: manifest.value_range,
        backbone_name: manifest.name.clone(),
        fingerprint: manifest.fingerprint.clone(),
    };
    xfer_onnx::write_model_bytes(&export_model(&f.forward, params, &info).expect("export"))
}

/// Classes of equal colour (the labels are noise) and a high learning rate: the head
/// overfits the training images, so that an earlier epoch has the lowest validation loss.
fn overfitting_run() -> (Fixture, FinetuneConfig) {
    let f = fixture();
    let data = f.root.join("noise");
    write_dataset_coloured(&data, [(120.0, 120.0), (120.0, 120.0)]);
    let mut c = config(&f, 4, 1);
    c.data = data;
    c.phase1.learning_rate = 0.2;
    c.phase2.learning_rate = 0.05;
    (f, c)
}

/// `--export best` (the default) exports the epoch with the lowest validation loss in
/// metrics.jsonl and says so in metrics.json; `--export last` the last (issue 17, defect 4).
#[test]
fn export_best_holds_the_epoch_with_the_lowest_validation_loss() {
    let (f, cfg) = overfitting_run();
    let run = f.root.join("best");
    assert_eq!(cfg.export, ExportChoice::Best, "best is the default");
    let summary = run_to_end(&cfg, &options(&run));
    let records = MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics");
    let lowest = records
        .iter()
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
        .expect("epochs");
    let last = records.last().expect("epochs");
    assert_ne!(
        lowest.global_epoch,
        last.global_epoch,
        "the fixture must make an earlier epoch the best: {:?}",
        records.iter().map(|r| r.val_loss).collect::<Vec<_>>()
    );
    assert_eq!(summary.exported.global_epoch, lowest.global_epoch);
    assert_eq!(summary.exported.phase, lowest.phase);
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("metrics.json")).expect("metrics.json"),
    )
    .expect("json");
    assert_eq!(metrics["exported"]["global_epoch"], lowest.global_epoch);
    assert_eq!(metrics["exported"]["choice"], "best");
    assert_eq!(metrics["test"]["rows"], 8);
    // model.onnx is the best checkpoint's model, not the last one's.
    let best = Checkpoint::load(&Checkpoint::best_path(&run)).expect("best");
    assert_eq!(
        best.state.global_epochs_done(cfg.phase1.epochs),
        lowest.global_epoch
    );
    let model = std::fs::read(&summary.model).expect("model.onnx");
    assert!(model == exported_bytes(&f, &checkpoint_parameters(&best)));
    let last_ckpt = Checkpoint::load(&Checkpoint::last_path(&run)).expect("last");
    assert!(model != exported_bytes(&f, &checkpoint_parameters(&last_ckpt)));
    // one prediction line per test image
    let predictions = std::fs::read_to_string(run.join(TEST_PREDICTIONS)).expect("predictions");
    assert_eq!(predictions.lines().count(), 8);

    let run_last = f.root.join("last");
    let mut cfg_last = cfg.clone();
    cfg_last.export = ExportChoice::Last;
    let summary = run_to_end(&cfg_last, &options(&run_last));
    assert_eq!(summary.exported.global_epoch, last.global_epoch);
    let last_ckpt = Checkpoint::load(&Checkpoint::last_path(&run_last)).expect("last");
    assert!(
        std::fs::read(&summary.model).expect("model.onnx")
            == exported_bytes(&f, &checkpoint_parameters(&last_ckpt))
    );
}

/// While the last epoch is the best, `best` is a hard link to `last` (one write, not two);
/// once a later epoch is worse, `best` keeps the best epoch's file (issue 17, defect 5).
#[test]
fn best_is_a_hard_link_to_last_while_the_last_epoch_is_the_best() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let inode = |p: PathBuf| std::fs::metadata(p).expect("metadata").ino();
    let run = f.root.join("improving");
    run_to_end(&config(&f, 3, 0), &options(&run));
    let records = MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics");
    assert!(records.windows(2).all(|w| w[1].val_loss < w[0].val_loss));
    assert_eq!(
        inode(Checkpoint::best_path(&run)),
        inode(Checkpoint::last_path(&run))
    );

    let (f, cfg) = overfitting_run();
    let run = f.root.join("overfitting");
    let summary = run_to_end(&cfg, &options(&run));
    assert_ne!(
        inode(Checkpoint::best_path(&run)),
        inode(Checkpoint::last_path(&run))
    );
    let best = Checkpoint::load(&Checkpoint::best_path(&run)).expect("best");
    assert_eq!(
        best.state.global_epochs_done(cfg.phase1.epochs),
        summary.exported.global_epoch
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Checkpoint::best_path(&run).with_extension("json")).expect("json"),
    )
    .expect("state json");
    assert_eq!(json["epochs_done"], best.state.epochs_done);
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Validation builds one ONNX Runtime session per phase, not one per epoch (issue 17,
/// defect 6), and a resumed run builds one for each phase it still trains.
#[test]
fn validation_builds_one_session_per_phase() {
    let f = fixture();
    let run = f.root.join("run");
    let summary = run_to_end(&config(&f, 3, 2), &options(&run));
    assert_eq!(summary.epochs.len(), 5);
    assert_eq!(summary.eval_sessions, 2);
    let run = f.root.join("phase1-only");
    let summary = run_to_end(&config(&f, 4, 0), &options(&run));
    assert_eq!(summary.eval_sessions, 1);
}

/// Runs `config` and sets the stop flag after `stop_after` optimizer steps (0: never);
/// returns the outcome and the number of steps taken.
fn run_counting_steps(
    config: &FinetuneConfig,
    options: &RunOptions,
    stop_after: usize,
) -> (xfer_finetune::Result<Outcome>, usize) {
    options.stop.store(false, Ordering::SeqCst);
    let stop = options.stop.clone();
    let mut steps = 0usize;
    let outcome = finetune(config, options, &mut |e| {
        if let Event::Step { .. } = e {
            steps += 1;
            if steps == stop_after {
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    (outcome, steps)
}

/// Issue 18 item 3: an unknown `--unfreeze-from` layer is refused before phase 1 trains,
/// naming the closest layers; a run stopped in phase 1 resumes with a corrected name,
/// while a run that is in phase 2 keeps its layer.
#[test]
fn an_unknown_unfreeze_layer_is_refused_before_training_and_a_resume_may_correct_it() {
    let f = fixture();
    let run = f.root.join("run");
    let mut cfg = config(&f, 2, 2);
    cfg.unfreeze_from = Some("block2_cnv".to_owned());
    let (outcome, steps) = run_counting_steps(&cfg, &options(&run), 0);
    let err = outcome.expect_err("unknown layer");
    assert_eq!(steps, 0, "trained before refusing: {err}");
    let text = err.to_string();
    assert!(
        text.contains("block2_cnv") && text.contains("block2_conv"),
        "{text}"
    );

    // Stopped in phase 1 with one name, resumed with another: accepted.
    cfg.unfreeze_from = Some("block2_conv".to_owned());
    let mut opts = options(&run);
    let (outcome, _) = run_counting_steps(&cfg, &opts, 1);
    assert!(
        matches!(outcome, Ok(Outcome::Interrupted { .. })),
        "{outcome:?}"
    );
    cfg.unfreeze_from = Some("block1_conv".to_owned());
    opts.resume = true;
    let (outcome, _) = run_counting_steps(&cfg, &opts, 5);
    assert!(
        matches!(outcome, Ok(Outcome::Interrupted { .. })),
        "{outcome:?}"
    );
    // Now in phase 2 (2 steps per epoch): the layer may no longer change.
    cfg.unfreeze_from = Some("block2_conv".to_owned());
    let (outcome, _) = run_counting_steps(&cfg, &opts, 0);
    let err = outcome.expect_err("phase 2 started");
    assert!(err.to_string().contains("unfreeze_from"), "{err}");
    cfg.unfreeze_from = Some("block1_conv".to_owned());
    opts.stop.store(false, Ordering::SeqCst);
    run_to_end(&cfg, &opts);
}

/// Issue 18 item 11: a truncated `last.safetensors` falls back to `best.safetensors` (with
/// the epochs after it redone), or says that neither can be read.
#[test]
fn a_truncated_last_checkpoint_falls_back_to_best() {
    let f = fixture();
    let run = f.root.join("run");
    let cfg = config(&f, 3, 0);
    let mut opts = options(&run);
    // 2 steps per epoch: stop inside epoch 3.
    let (outcome, _) = run_counting_steps(&cfg, &opts, 5);
    assert!(
        matches!(outcome, Ok(Outcome::Interrupted { .. })),
        "{outcome:?}"
    );
    let last = Checkpoint::last_path(&run);
    let bytes = std::fs::read(&last).expect("read last");
    std::fs::write(&last, &bytes[..bytes.len() / 2]).expect("truncate last");
    opts.resume = true;
    opts.stop.store(false, Ordering::SeqCst);
    let summary = run_to_end(&cfg, &opts);
    assert_eq!(summary.epochs.len(), 3);
    assert_eq!(
        MetricsLog::read(&run.join("metrics.jsonl"))
            .expect("log")
            .len(),
        3
    );

    let bytes = std::fs::read(&last).expect("read last");
    std::fs::write(&last, &bytes[..bytes.len() / 2]).expect("truncate last");
    std::fs::remove_file(Checkpoint::best_path(&run)).expect("remove best");
    let (outcome, _) = run_counting_steps(&cfg, &opts, 0);
    let err = outcome.expect_err("no checkpoint to resume from");
    assert!(err.to_string().contains("best.safetensors"), "{err}");
}

/// Issue 18 item 7: unreadable images are counted per split and named in the summary,
/// metrics.json and metrics.jsonl, so "trained on 28 of 31" is visible.
#[test]
fn unreadable_images_are_counted_per_split_and_named() {
    let f = fixture();
    let broken = [
        "blue/zz_broken.png",
        "red/zz_broken.png",
        "red/zz_empty.png",
    ];
    for id in &broken[..2] {
        std::fs::write(f.root.join("data").join(id), b"not a png").expect("write broken");
    }
    std::fs::write(f.root.join("data").join(broken[2]), b"").expect("write empty");
    let run = f.root.join("run");
    let summary = run_to_end(&config(&f, 2, 0), &options(&run));
    let skipped = &summary.skipped;
    let mut named: Vec<&str> = [&skipped.train, &skipped.val, &skipped.test]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    named.sort_unstable();
    assert_eq!(named, broken, "{skipped:?}");
    let records = MetricsLog::read(&run.join("metrics.jsonl")).expect("metrics");
    for r in &records {
        assert_eq!(r.skipped_train, skipped.train, "{r:?}");
        assert_eq!(r.skipped_val, skipped.val, "{r:?}");
    }
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("metrics.json")).expect("metrics.json"),
    )
    .expect("json");
    let in_json: usize = ["train", "val", "test"]
        .iter()
        .map(|s| metrics["skipped"][s].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(in_json, 3, "{metrics}");
}

/// Runs `cfg` into `opts.run_dir`, stopped after each count of `stops` steps and resumed, then
/// to the end; returns whether each phase kept its training state on the device.
fn run_with_stops(cfg: &FinetuneConfig, opts: &mut RunOptions, stops: &[usize]) -> Vec<bool> {
    let mut on_device = Vec::new();
    let mut record = |e: &Event<'_>| {
        if let Event::PhaseStarted {
            state_on_device, ..
        } = e
        {
            on_device.push(*state_on_device);
        }
    };
    for (i, &stop_after) in stops.iter().enumerate() {
        opts.resume = i > 0;
        opts.stop.store(false, Ordering::SeqCst);
        let stop = opts.stop.clone();
        let mut steps = 0usize;
        let outcome = finetune(cfg, opts, &mut |e| {
            record(&e);
            if let Event::Step { .. } = e {
                steps += 1;
                if steps == stop_after {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .expect("finetune");
        let Outcome::Interrupted { step_in_epoch, .. } = outcome else {
            panic!("expected an interruption, got {outcome:?}");
        };
        assert!(step_in_epoch > 0, "the interruption should fall mid-epoch");
    }
    opts.resume = !stops.is_empty();
    opts.stop.store(false, Ordering::SeqCst);
    finetune(cfg, opts, &mut |e| record(&e)).expect("finetune");
    on_device
}

/// Largest absolute and relative differences between the tensors of two checkpoints (same
/// names asserted), and whether every value agrees to 1e-6 (absolute below 1, relative above).
fn checkpoint_difference(a: &Checkpoint, b: &Checkpoint) -> (f64, f64, bool) {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    let (mut abs, mut rel, mut within) = (0f64, 0f64, true);
    for (name, ta) in &a.tensors {
        for (&x, &y) in ta.iter().zip(b.tensors[name].iter()) {
            let d = (f64::from(x) - f64::from(y)).abs();
            abs = abs.max(d);
            rel = rel.max(d / f64::from(x.abs()).max(f64::MIN_POSITIVE));
            within &= d <= 1e-6 * f64::from(x.abs()).max(1.0);
        }
    }
    (abs, rel, within)
}

#[test]
fn the_device_resident_loop_matches_the_host_loop_and_resumes_from_its_checkpoints() {
    use xfer_finetune::Residence;
    let f = fixture();
    let cfg = config(&f, 2, 2);
    let host_dir = f.root.join("host");
    let mut host = options(&host_dir);
    host.residence = Residence::Host;
    assert_eq!(run_with_stops(&cfg, &mut host, &[]), vec![false, false]);
    // `auto` on the CPU provider is the host loop.
    let auto_dir = f.root.join("auto");
    assert_eq!(
        run_with_stops(&cfg, &mut options(&auto_dir), &[]),
        vec![false, false]
    );

    // The device loop (forced on the CPU provider), interrupted mid-epoch in each phase and
    // resumed from its checkpoints.
    let device_dir = f.root.join("device");
    let mut device = options(&device_dir);
    device.residence = Residence::Device;
    let phases = run_with_stops(&cfg, &mut device, &[3, 4]);
    assert!(
        !phases.is_empty() && phases.iter().all(|d| *d),
        "the device loop did not run: {phases:?}"
    );

    let a = Checkpoint::load(&Checkpoint::last_path(&host_dir)).expect("host checkpoint");
    let b = Checkpoint::load(&Checkpoint::last_path(&device_dir)).expect("device checkpoint");
    assert!(
        a.tensors.keys().any(|k| k.ends_with(".adam_v")),
        "no moments"
    );
    assert_eq!(a.state.global_step, b.state.global_step);
    assert_eq!(a.state.optimizer_step, b.state.optimizer_step);
    let (abs, rel, within) = checkpoint_difference(&a, &b);
    println!(
        "device loop vs host loop after {} steps: parameters and Adam moments max abs diff {abs:.3e}, max rel diff {rel:.3e}",
        a.state.global_step
    );
    assert!(within, "max abs {abs}, max rel {rel}");
    let la = MetricsLog::read(&host_dir.join("metrics.jsonl")).expect("log a");
    let lb = MetricsLog::read(&device_dir.join("metrics.jsonl")).expect("log b");
    assert_eq!(la.len(), lb.len());
    for (ra, rb) in la.iter().zip(&lb) {
        assert!(
            (ra.train_loss - rb.train_loss).abs() <= 1e-6
                && (ra.val_loss - rb.val_loss).abs() <= 1e-6,
            "epoch {}: host {} / {}, device {} / {}",
            ra.global_epoch,
            ra.train_loss,
            ra.val_loss,
            rb.train_loss,
            rb.val_loss
        );
    }
}

/// Issue 18 item 12: Ctrl-C at an epoch boundary reports the next epoch with 0 batches done
/// (the finished epoch is logged and saved), not the finished one as if it had not started.
#[test]
fn a_stop_at_an_epoch_boundary_names_the_next_epoch() {
    let f = fixture();
    let run = f.root.join("run");
    let cfg = config(&f, 3, 0);
    // 2 steps per epoch: the 4th step ends epoch 2.
    let (outcome, _) = run_counting_steps(&cfg, &options(&run), 4);
    let Ok(Outcome::Interrupted {
        phase,
        epoch,
        step_in_epoch,
        ..
    }) = outcome
    else {
        panic!("expected an interruption, got {outcome:?}");
    };
    assert_eq!((phase, epoch, step_in_epoch), (1, 3, 0));
    let log = MetricsLog::read(&run.join("metrics.jsonl")).expect("log");
    assert_eq!(log.len(), 2, "epochs 1 and 2 are done");
}
