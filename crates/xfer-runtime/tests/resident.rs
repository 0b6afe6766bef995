//! Device-resident tensors and I/O bindings on the real ONNX Runtime (CPU provider): a tensor
//! bound as an output is written in place, the same tensor bound as an input is read where it
//! is, and only host-bound outputs come back.

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{Dim, GraphBuilder};
use xfer_runtime::{InputTensor, Model, OutputTensor, SessionOptions};

/// `y = x * a + b` and `s = ReduceSum(y)` over a fixed [2, 3] shape.
fn axpb() -> Vec<u8> {
    let mut g = GraphBuilder::new("axpb");
    let dims = [Dim::Fixed(2), Dim::Fixed(3)];
    g.input("x", &dims);
    g.input("a", &[]);
    g.input("b", &dims);
    let ax = g.op("Mul", &["x", "a"], vec![], "ax");
    g.node_named("Add", &[&ax, "b"], &["y"], vec![]);
    g.node_named("ReduceSum", &["y"], &["s"], vec![]);
    g.output("y", &dims);
    g.output("s", &[Dim::Fixed(1), Dim::Fixed(1)]);
    xfer_onnx::write_model_bytes(&g.build_model())
}

#[test]
fn bound_tensors_stay_in_place_between_runs_and_only_host_outputs_return() {
    let mut model =
        Model::from_bytes(&axpb(), "axpb", &SessionOptions::default()).expect("session");
    let memory = model.device_memory().expect("memory");
    let x0 = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [0.5f32, -0.5, 0.25, -0.25, 0.125, -0.125];
    // Two buffers swapped each run: y of one run is x of the next.
    let mut buffers = [
        memory.upload(&[2, 3], &x0).expect("upload x"),
        memory.zeros(&[2, 3]).expect("zeros"),
    ];
    let b_dev = memory.upload(&[2, 3], &b).expect("upload b");
    assert_eq!(b_dev.download().expect("download"), b);
    let a = ArrayD::from_shape_vec(IxDyn(&[]), vec![2.0f32]).expect("scalar");
    let mut expected = x0.to_vec();
    for run in 0..3 {
        let (first, second) = buffers.split_at_mut(1);
        let (input, output) = if run % 2 == 0 {
            (&first[0], &mut second[0])
        } else {
            (&second[0], &mut first[0])
        };
        let mut binding = model.binding().expect("binding");
        binding.input("x", input).expect("bind x");
        binding
            .input_host("a", &InputTensor::F32(a.view()))
            .expect("bind a");
        binding.input("b", &b_dev).expect("bind b");
        binding.output("y", output).expect("bind y");
        binding.output_host("s").expect("bind s");
        let outputs = model.run_bound(&binding).expect("run");
        for (e, bi) in expected.iter_mut().zip(&b) {
            *e = *e * 2.0 + bi;
        }
        // Only `s` came back; `y` was written into the bound buffer.
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].0, "s");
        let OutputTensor::F32(s) = &outputs[0].1 else {
            panic!("s is not float32");
        };
        let sum: f32 = expected.iter().sum();
        assert!((s.iter().sum::<f32>() - sum).abs() < 1e-4, "run {run}: {s}");
        assert_eq!(output.download().expect("download y"), expected);
        assert_eq!(output.shape(), &[2, 3]);
    }
}

#[test]
fn a_mismatched_upload_or_binding_is_a_clear_error() {
    let model = Model::from_bytes(&axpb(), "axpb", &SessionOptions::default()).expect("session");
    let memory = model.device_memory().expect("memory");
    let err = memory.upload(&[2, 3], &[1.0; 5]).expect_err("must fail");
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    let t = memory.zeros(&[2, 3]).expect("zeros");
    let mut binding = model.binding().expect("binding");
    let err = binding.input("nope", &t).expect_err("unknown input");
    assert!(err.to_string().contains("nope"), "{err}");
}
