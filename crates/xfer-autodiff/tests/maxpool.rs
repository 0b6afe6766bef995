//! MaxPool's gradient (the vjp graph's Indices + ScatterElements backward) against a direct loop
//! in f64 that routes each output's gradient to the FIRST maximum of its window in row-major
//! order, pads never winning (ONNX Runtime's Indices semantics). Inputs are small integers with
//! many ties (constant regions, repeated values, all-negative maps next to the pads) and the
//! cotangent is integer-valued, so every sum is exact: the check is equality.

mod common;

use common::{Rng, run, session, unshaped_float_output};
use ndarray::{ArrayD, IxDyn};
use xfer_autodiff::vjp_model;
use xfer_onnx::{AttributeProto, Dim, GraphBuilder, ModelProto, attr};
use xfer_runtime::SessionOptions;

/// A MaxPool window.
struct Pool {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    /// `[top, left, bottom, right]` as ONNX Runtime applies them.
    pads: [usize; 4],
    attrs: Vec<AttributeProto>,
}

impl Pool {
    fn new(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4]) -> Self {
        let as_i64 = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        Pool {
            kernel,
            strides,
            dilations: [1, 1],
            pads,
            attrs: vec![
                attr::ints("kernel_shape", &as_i64(&kernel)),
                attr::ints("strides", &as_i64(&strides)),
                attr::ints("pads", &as_i64(&pads)),
            ],
        }
    }

    fn with(mut self, a: AttributeProto) -> Self {
        if a.name == "dilations" {
            self.dilations = [a.ints[0] as usize, a.ints[1] as usize];
        }
        self.attrs.retain(|o| o.name != a.name);
        self.attrs.push(a);
        self
    }

    /// SAME_UPPER instead of explicit pads (the pads the test's loop uses stay as given).
    fn same_upper(mut self) -> Self {
        self.attrs.retain(|o| o.name != "pads");
        self.attrs.push(attr::string("auto_pad", "SAME_UPPER"));
        self
    }

    /// The forward model `y = MaxPool(x)`.
    fn model(&self, x: &[usize]) -> ModelProto {
        let mut g = GraphBuilder::new("maxpool");
        let dims: Vec<Dim> = x.iter().map(|&d| Dim::Fixed(d as i64)).collect();
        g.input("x", &dims);
        g.node_named("MaxPool", &["x"], &["y"], self.attrs.clone());
        let mut graph = g.build();
        graph.output = vec![unshaped_float_output("y")];
        ModelProto::with_graph(graph, 17)
    }

    /// The direct loop: `(y, dx)` for input `x` and output gradient `g`, in f64.
    fn reference(&self, x: &ArrayD<f32>, g: &ArrayD<f32>) -> (ArrayD<f64>, ArrayD<f64>) {
        let (s, k, d, p) = (self.strides, self.kernel, self.dilations, self.pads);
        let (h, w) = (x.shape()[2] as i64, x.shape()[3] as i64);
        let mut y = ArrayD::<f64>::zeros(g.raw_dim());
        let mut dx = ArrayD::<f64>::zeros(x.raw_dim());
        for ((n, c, oh, ow), &go) in indexed(g) {
            let mut best: Option<(f32, usize, usize)> = None;
            for i in 0..k[0] {
                for j in 0..k[1] {
                    let r = (oh * s[0] + i * d[0]) as i64 - p[0] as i64;
                    let q = (ow * s[1] + j * d[1]) as i64 - p[1] as i64;
                    if r < 0 || q < 0 || r >= h || q >= w {
                        continue;
                    }
                    let v = x[[n, c, r as usize, q as usize]];
                    if best.is_none_or(|(b, _, _)| v > b) {
                        best = Some((v, r as usize, q as usize));
                    }
                }
            }
            let (v, r, q) = best.expect("every window holds an input cell");
            y[[n, c, oh, ow]] = f64::from(v);
            dx[[n, c, r, q]] += f64::from(go);
        }
        (y, dx)
    }

    /// Runs the vjp graph of `y = MaxPool(x)` on `x` and checks `y` and `dx` against the loop.
    fn check(&self, x: ArrayD<f32>) {
        let forward = self.model(x.shape());
        let vjp =
            vjp_model(&forward, "y", &["x"], None, &SessionOptions::default()).expect("vjp graph");
        let y = run(&mut session(&forward), &[("x", &x)], &[])["y"].clone();
        let g = ArrayD::from_shape_fn(y.raw_dim(), |i| {
            ((i[0] * 131 + i[1] * 31 + i[2] * 7 + i[3] * 3) % 11) as f32 - 5.0
        });
        let out = run(&mut session(&vjp), &[("x", &x), ("y_grad", &g)], &[]);
        let (y_ref, dx_ref) = self.reference(&x, &g);
        assert_eq!(y.shape(), y_ref.shape(), "y shape");
        assert_eq!(y.mapv(f64::from), y_ref, "y");
        assert_eq!(out["y"].mapv(f64::from), y_ref, "the vjp graph's y");
        assert_eq!(out["x_grad"].mapv(f64::from), dx_ref, "dx");
    }
}

/// `((n, c, h, w), value)` of a 4-D array.
fn indexed(a: &ArrayD<f32>) -> impl Iterator<Item = ((usize, usize, usize, usize), &f32)> {
    a.indexed_iter().map(|(i, v)| ((i[0], i[1], i[2], i[3]), v))
}

/// Small integers in `lo..=hi` (many ties), with a constant 4x4 block at the top left of every
/// map.
fn ties(rng: &mut Rng, shape: &[usize], lo: i64, hi: i64) -> ArrayD<f32> {
    let span = (hi - lo + 1) as u64;
    ArrayD::from_shape_fn(IxDyn(shape), |i| {
        if i[2] < 4 && i[3] < 4 {
            lo as f32
        } else {
            (lo + (rng.next_u64() % span) as i64) as f32
        }
    })
}

#[test]
fn xception_pools_3x3_stride2_same_upper_with_ties() {
    // 8 -> 4 (pad bottom/right 1), 9 -> 5 (pad 1 on every side), as Xception's 72->36, 9->5.
    let mut rng = Rng(31);
    for (hw, lo, hi) in [(8usize, 0, 2), (9, -3, -1), (7, 0, 1)] {
        let total = (hw.div_ceil(2) - 1) * 2 + 3 - hw;
        let (begin, end) = (total / 2, total - total / 2);
        let pool = Pool::new([3, 3], [2, 2], [begin, begin, end, end]).same_upper();
        pool.check(ties(&mut rng, &[2, 3, hw, hw], lo, hi));
    }
}

#[test]
fn stride1_explicit_pads_negative_values_next_to_the_pads() {
    // All values negative: a zero pad would win every border window; pads must never win.
    let mut rng = Rng(32);
    Pool::new([3, 3], [1, 1], [1, 1, 1, 1]).check(ties(&mut rng, &[2, 2, 5, 6], -3, -1));
}

#[test]
fn a_constant_map_routes_every_window_to_its_first_cell() {
    let x = ArrayD::from_elem(IxDyn(&[1, 2, 7, 7]), 1.5f32);
    Pool::new([3, 3], [2, 2], [1, 1, 1, 1]).check(x);
}

#[test]
fn non_overlapping_and_uncovered_rows() {
    // 2x2/2 on 7x7 (no pads): the last row and column are in no window (zero gradient).
    let mut rng = Rng(33);
    Pool::new([2, 2], [2, 2], [0, 0, 0, 0]).check(ties(&mut rng, &[2, 2, 7, 7], 0, 3));
    Pool::new([2, 2], [2, 2], [0, 0, 0, 0]).check(ties(&mut rng, &[1, 3, 6, 6], 0, 1));
}

#[test]
fn ceil_mode_dilation_asymmetric_windows_and_a_window_smaller_than_its_stride() {
    let mut rng = Rng(34);
    // ceil_mode: 8 -> 4 with the last window past the input's end.
    Pool::new([3, 3], [2, 2], [0, 0, 0, 0])
        .with(attr::int("ceil_mode", 1))
        .check(ties(&mut rng, &[1, 2, 8, 8], 0, 2));
    Pool::new([2, 2], [1, 1], [0, 0, 0, 0])
        .with(attr::ints("dilations", &[2, 2]))
        .check(ties(&mut rng, &[2, 2, 7, 6], 0, 2));
    Pool::new([2, 3], [1, 2], [0, 1, 1, 0]).check(ties(&mut rng, &[2, 2, 6, 7], -1, 1));
    // 1x1 window, stride 2: three of the four residue planes get no tap.
    Pool::new([1, 1], [2, 2], [0, 0, 0, 0]).check(ties(&mut rng, &[1, 2, 5, 5], 0, 3));
}
