//! The exact-growth CPU arena keeps a run's memory for the next run, and
//! `run_releasing_memory` hands it back (issue 15). Its own test binary: it reads this
//! process's resident memory, which other tests running beside it would disturb.

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{Model, SessionOptions};

/// Values in the model's one large intermediate (256 MB of float32).
const BIG: i64 = 64 << 20;

/// `y = sum(expand(x, [BIG]) * 2)`: a 256 MB intermediate whose pages are all written.
fn big_intermediate_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("big");
    g.input("x", &[Dim::Fixed(1)]);
    let shape = g.constant_i64("shape", &[1], &[BIG]);
    let two = g.constant_f32("two", &[1], &[2.0]);
    let big = g.op("Expand", &["x", &shape], vec![], "big");
    let doubled = g.op("Mul", &[&big, &two], vec![], "doubled");
    g.node_named(
        "ReduceSum",
        &[&doubled],
        &["y"],
        vec![attr::int("keepdims", 0)],
    );
    g.output("y", &[]);
    xfer_onnx::write_model_bytes(&g.build_model())
}

/// This process's resident memory in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn exact_arena_keeps_memory_until_a_releasing_run() {
    let options = SessionOptions::default().low_memory();
    let mut model = Model::from_bytes(&big_intermediate_model(), "big", &options).expect("session");
    let x = ArrayD::from_elem(IxDyn(&[1]), 0.5f32);
    let expected = 0.5 * 2.0 * BIG as f64;
    let before = rss();
    let y = model.run(&[("x", x.view().into())]).expect("run");
    let y = f64::from(y[0].1.clone().into_f32().expect("f32").sum());
    assert!(
        (y - expected).abs() / expected < 1e-3,
        "sum {y} vs {expected}"
    );
    let kept = rss();
    let y = model
        .run_releasing_memory(&[("x", x.view().into())])
        .expect("releasing run");
    let y = f64::from(y[0].1.clone().into_f32().expect("f32").sum());
    assert!(
        (y - expected).abs() / expected < 1e-3,
        "sum {y} vs {expected}"
    );
    let released = rss();
    let mb = |b: u64| b as f64 / 1e6;
    // The arena keeps at least one 256 MB buffer after a plain run ...
    assert!(
        kept > before + 200_000_000,
        "after a plain run: {:.0} MB, before: {:.0} MB",
        mb(kept),
        mb(before)
    );
    // ... and a releasing run hands it back.
    assert!(
        released + 200_000_000 < kept,
        "after a releasing run: {:.0} MB, after a plain one: {:.0} MB",
        mb(released),
        mb(kept)
    );
}
