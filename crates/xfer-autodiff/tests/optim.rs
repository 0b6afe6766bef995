//! Adam and SGD against hand-written float64 references of the textbook/Keras rules, state
//! export/import, and parameter files.

use xfer_autodiff::{Adam, Optimizer, Parameter, Sgd, load_params, save_params};

fn params() -> Vec<Parameter> {
    vec![
        Parameter {
            name: "a.kernel".to_owned(),
            shape: vec![2, 3],
            data: vec![0.5, -1.0, 2.0, 0.0, 3.0, -0.25],
        },
        Parameter {
            name: "a.bias".to_owned(),
            shape: vec![2],
            data: vec![0.1, -0.2],
        },
    ]
}

fn grads(step: usize) -> Vec<Vec<f32>> {
    let s = step as f32;
    vec![
        vec![0.3 - 0.1 * s, -0.7, 1.5 * s, 1e-4, -2.0 + s, 0.0],
        vec![0.05 * s, -0.4],
    ]
}

/// Adam in float64, textbook form: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// lr_t = lr sqrt(1-b2^t)/(1-b1^t); p -= lr_t m / (sqrt(v) + eps).
fn adam_reference(steps: usize, lr: f64) -> Vec<Vec<f64>> {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-7f64);
    let mut p: Vec<Vec<f64>> = params()
        .iter()
        .map(|p| p.data.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v = m.clone();
    for t in 1..=steps {
        let g = grads(t - 1);
        let lr_t = lr * (1.0 - b2.powi(t as i32)).sqrt() / (1.0 - b1.powi(t as i32));
        for k in 0..p.len() {
            for i in 0..p[k].len() {
                let gi = f64::from(g[k][i]);
                m[k][i] = b1 * m[k][i] + (1.0 - b1) * gi;
                v[k][i] = b2 * v[k][i] + (1.0 - b2) * gi * gi;
                p[k][i] -= lr_t * m[k][i] / (v[k][i].sqrt() + eps);
            }
        }
    }
    p
}

#[test]
fn adam_matches_the_float64_reference() {
    let mut p = params();
    let mut adam = Adam::new(1e-2);
    for t in 0..5 {
        let g = grads(t);
        let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        adam.step(&mut p, &refs).expect("step");
    }
    assert_eq!(adam.iterations(), 5);
    let want = adam_reference(5, 1e-2);
    for (k, pk) in p.iter().enumerate() {
        for (i, &got) in pk.data.iter().enumerate() {
            let w = want[k][i];
            assert!(
                (f64::from(got) - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{}[{i}]: {got} vs {w}",
                pk.name
            );
        }
    }
    // First step moves each coordinate by about lr * sign(g) (bias correction), except zero gradients.
    let mut q = params();
    let g = grads(0);
    let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
    Adam::new(1e-3).step(&mut q, &refs).expect("step");
    assert!((q[0].data[1] - (-1.0 + 1e-3)).abs() < 1e-6);
    assert_eq!(q[0].data[5], -0.25);
}

#[test]
fn adam_state_round_trips_through_named_tensors_and_a_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p = params();
    let mut adam = Adam::new(1e-2);
    for t in 0..3 {
        let g = grads(t);
        let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        adam.step(&mut p, &refs).expect("step");
    }
    let path = dir.path().join("opt.safetensors");
    save_params(&path, &adam.state(), None).expect("save");
    let state = load_params(&path).expect("load");
    assert!(state.iter().any(|t| t.name == "a.kernel.adam_m"));
    let mut resumed = Adam::new(1e-2);
    resumed.load_state(&p, &state).expect("load state");
    let mut p2 = p.clone();
    let g = grads(3);
    let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
    adam.step(&mut p, &refs).expect("step");
    resumed.step(&mut p2, &refs).expect("step");
    assert_eq!(p, p2, "resumed optimizer takes the identical step");
    assert_eq!(resumed.iterations(), 4);
}

#[test]
fn sgd_momentum_and_nesterov_match_the_float64_reference() {
    for nesterov in [false, true] {
        let (lr, mom) = (0.1f64, 0.9f64);
        let mut p = params();
        let mut sgd = Sgd::new(lr as f32, mom as f32);
        sgd.nesterov = nesterov;
        let mut want: Vec<Vec<f64>> = p
            .iter()
            .map(|p| p.data.iter().map(|&v| f64::from(v)).collect())
            .collect();
        let mut m: Vec<Vec<f64>> = want.iter().map(|v| vec![0.0; v.len()]).collect();
        for t in 0..4 {
            let g = grads(t);
            let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            sgd.step(&mut p, &refs).expect("step");
            for k in 0..want.len() {
                for i in 0..want[k].len() {
                    let gi = f64::from(g[k][i]);
                    m[k][i] = mom * m[k][i] - lr * gi;
                    want[k][i] += if nesterov {
                        mom * m[k][i] - lr * gi
                    } else {
                        m[k][i]
                    };
                }
            }
        }
        for (k, pk) in p.iter().enumerate() {
            for (i, &got) in pk.data.iter().enumerate() {
                let w = want[k][i];
                assert!(
                    (f64::from(got) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{}[{i}]: {got} vs {w}",
                    pk.name
                );
            }
        }
    }
}

#[test]
fn plain_sgd_and_mismatched_gradients() {
    let mut p = params();
    let g = grads(1);
    let refs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
    Sgd::new(0.5, 0.0).step(&mut p, &refs).expect("step");
    assert!((p[0].data[0] - (0.5 - 0.5 * 0.2)).abs() < 1e-7);
    let short = [&g[0][..], &g[1][..1]];
    let err = Adam::new(1e-3)
        .step(&mut p, &short)
        .expect_err("length mismatch");
    assert!(err.to_string().contains("a.bias"), "{err}");
}

#[test]
fn missing_parameter_file_is_a_clear_error() {
    let err =
        load_params(std::path::Path::new("/nonexistent/params.safetensors")).expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/params.safetensors"),
        "{err}"
    );
}
