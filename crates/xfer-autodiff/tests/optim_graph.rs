//! The optimizers' update graphs ([`GraphOptimizer::update_graph`]) run in ONNX Runtime (CPU
//! provider) against the Rust optimizers ([`Optimizer::step`]) over several steps, on
//! parameters of Xception's real shapes: parameters and every slot agree to 1e-6
//! (absolute below 1, relative above), and the state the graph leaves loads back into the
//! Rust optimizer as the very state it would have.

use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::{Adam, GraphOptimizer, Parameter, Sgd, state_tensors};
use xfer_runtime::{InputTensor, Model, OutputTensor, SessionOptions};

const TOLERANCE: f64 = 1e-6;
const STEPS: usize = 6;

/// Shapes of Xception parameters: entry conv and its BatchNorm, a separable conv (depthwise,
/// pointwise), the exit BatchNorm, and the head.
fn xception_params() -> Vec<Parameter> {
    let shapes: [(&str, &[usize]); 7] = [
        ("block1_conv1.kernel", &[32, 3, 3, 3]),
        ("block1_conv1_bn.gamma", &[32]),
        ("block2_sepconv1.depthwise_kernel", &[64, 1, 3, 3]),
        ("block2_sepconv1.pointwise_kernel", &[128, 64, 1, 1]),
        ("block14_sepconv2_bn.beta", &[2048]),
        ("head.kernel", &[2048, 1]),
        ("head.bias", &[1]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            Parameter {
                name: (*name).to_owned(),
                shape: shape.to_vec(),
                data: (0..n)
                    .map(|i| ((i as f32 * 0.731 + k as f32).sin()) * 0.2)
                    .collect(),
            }
        })
        .collect()
}

/// Gradients of step `t`: mixed scales (1e-6 .. 10), signs, and exact zeros.
fn gradients(params: &[Parameter], t: usize) -> Vec<Vec<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let scale = 10f32.powi((k as i32 % 4) * 2 - 5);
            (0..p.data.len())
                .map(|i| {
                    if (i + t).is_multiple_of(11) {
                        0.0
                    } else {
                        (i as f32 * 0.37 + t as f32 * 1.3 + k as f32).cos() * scale
                    }
                })
                .collect()
        })
        .collect()
}

/// Largest absolute and relative difference, and whether each element is within tolerance.
#[derive(Default, Debug)]
struct Diff {
    abs: f64,
    rel: f64,
    within: bool,
}

fn compare(diff: &mut Diff, reference: &[f32], got: &[f32]) {
    assert_eq!(reference.len(), got.len());
    for (&r, &g) in reference.iter().zip(got) {
        let d = (f64::from(r) - f64::from(g)).abs();
        diff.abs = diff.abs.max(d);
        diff.rel = diff.rel.max(d / f64::from(r.abs()).max(f64::MIN_POSITIVE));
        if d > TOLERANCE * f64::from(r.abs()).max(1.0) {
            diff.within = false;
        }
    }
}

/// Runs `STEPS` steps of `reference` (Rust) and of `graph_opt`'s update graph (ONNX Runtime)
/// from the same parameters, the learning rate changed half way; returns the differences.
fn check<O: GraphOptimizer + Clone>(mut reference: O) -> Diff {
    let mut graph_opt = reference.clone();
    let mut rust_params = xception_params();
    let graph = graph_opt.update_graph(&rust_params);
    let bytes = xfer_onnx::write_model_bytes(&graph.model);
    let mut session =
        Model::from_bytes(&bytes, "update graph", &SessionOptions::default()).expect("session");
    let slot_names = graph_opt.slot_names();
    let mut params: Vec<Vec<f32>> = rust_params.iter().map(|p| p.data.clone()).collect();
    let mut slots: Vec<Vec<Vec<f32>>> = rust_params
        .iter()
        .map(|p| vec![vec![0.0; p.data.len()]; slot_names.len()])
        .collect();
    let mut diff = Diff {
        within: true,
        ..Diff::default()
    };
    for t in 0..STEPS {
        if t == STEPS / 2 {
            reference.set_learning_rate(3e-3);
            graph_opt.set_learning_rate(3e-3);
        }
        let grads = gradients(&rust_params, t);
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        reference.step(&mut rust_params, &refs).expect("rust step");
        let outputs = run_update(
            &mut session,
            &graph_opt,
            &rust_params,
            &params,
            &grads,
            &slots,
        );
        graph_opt.count_step();
        for (i, names) in graph.params.iter().enumerate() {
            params[i] = output(&outputs, &names.param_next);
            for (k, (_, next)) in names.slots.iter().enumerate() {
                slots[i][k] = output(&outputs, next);
            }
        }
        for (p, got) in rust_params.iter().zip(&params) {
            compare(&mut diff, &p.data, got);
        }
        let state = reference.state();
        for (i, p) in rust_params.iter().enumerate() {
            for (k, slot) in slot_names.iter().enumerate() {
                let key = format!("{}.{slot}", p.name);
                let r = state.iter().find(|s| s.name == key).expect("slot in state");
                compare(&mut diff, &r.data, &slots[i][k]);
            }
        }
    }
    // The graph's state, loaded into a Rust optimizer, is the reference's state.
    let named = state_tensors(&graph_opt, &rust_params, slots);
    graph_opt
        .load_state(&rust_params, &named)
        .expect("load state");
    let (a, b) = (reference.state(), graph_opt.state());
    assert_eq!(a.len(), b.len());
    assert_eq!(a[0], b[0], "step count");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        compare(&mut diff, &x.data, &y.data);
    }
    diff
}

fn run_update(
    session: &mut Model,
    opt: &dyn GraphOptimizer,
    shapes: &[Parameter],
    params: &[Vec<f32>],
    grads: &[Vec<f32>],
    slots: &[Vec<Vec<f32>>],
) -> Vec<(String, OutputTensor)> {
    let array = |shape: &[usize], v: &[f32]| {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape")
    };
    let mut owned: Vec<(String, ArrayD<f32>)> = Vec::new();
    for (name, value) in opt.update_scalars() {
        owned.push((name, array(&[], &[value])));
    }
    for (i, p) in shapes.iter().enumerate() {
        owned.push((p.name.clone(), array(&p.shape, &params[i])));
        owned.push((format!("{}_grad", p.name), array(&p.shape, &grads[i])));
        for (k, slot) in opt.slot_names().iter().enumerate() {
            owned.push((format!("{}.{slot}", p.name), array(&p.shape, &slots[i][k])));
        }
    }
    let feeds: Vec<(&str, InputTensor<'_>)> = owned
        .iter()
        .map(|(n, a)| (n.as_str(), InputTensor::F32(a.view())))
        .collect();
    session.run(&feeds).expect("update run")
}

fn output(outputs: &[(String, OutputTensor)], name: &str) -> Vec<f32> {
    let (_, t) = outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    t.clone()
        .into_f32()
        .expect("float")
        .iter()
        .copied()
        .collect()
}

#[test]
fn adam_update_graph_matches_the_rust_adam() {
    let diff = check(Adam::new(1e-2));
    println!(
        "adam: max abs diff {:.3e}, max rel diff {:.3e}",
        diff.abs, diff.rel
    );
    assert!(diff.within, "{diff:?}");
}

#[test]
fn sgd_update_graphs_match_the_rust_sgd() {
    let mut nesterov = Sgd::new(1e-2, 0.9);
    nesterov.nesterov = true;
    for (name, opt) in [
        ("plain", Sgd::new(1e-2, 0.0)),
        ("momentum", Sgd::new(1e-2, 0.9)),
        ("nesterov", nesterov),
    ] {
        let diff = check(opt);
        println!(
            "sgd {name}: max abs diff {:.3e}, max rel diff {:.3e}",
            diff.abs, diff.rel
        );
        assert!(diff.within, "sgd {name}: {diff:?}");
    }
}

#[test]
fn the_update_graph_names_every_parameter_slot_and_scalar() {
    let params = xception_params();
    let graph = Adam::new(1e-3).update_graph(&params);
    assert_eq!(graph.scalars, vec!["adam.alpha"]);
    assert_eq!(graph.params.len(), params.len());
    let names = &graph.params[0];
    assert_eq!(names.param, "block1_conv1.kernel");
    assert_eq!(names.grad, "block1_conv1.kernel_grad");
    assert_eq!(names.param_next, "block1_conv1.kernel.next");
    assert_eq!(
        names.slots,
        vec![
            (
                "block1_conv1.kernel.adam_m".to_owned(),
                "block1_conv1.kernel.adam_m.next".to_owned()
            ),
            (
                "block1_conv1.kernel.adam_v".to_owned(),
                "block1_conv1.kernel.adam_v.next".to_owned()
            ),
        ]
    );
    // Only standard ONNX operators.
    let g = graph.model.graph.as_ref().expect("graph");
    for node in &g.node {
        assert!(
            node.domain.is_empty(),
            "{} in domain {}",
            node.op_type,
            node.domain
        );
        assert!(
            ["Sub", "Mul", "Add", "Div", "Sqrt", "Identity"].contains(&node.op_type.as_str()),
            "{}",
            node.op_type
        );
    }
}
