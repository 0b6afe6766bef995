use std::collections::HashMap;

use xfer_onnx::{GraphBuilder, NodeProto};

use super::*;
use crate::Error;

/// A node named `<op>_node` (lowercase op).
pub(crate) fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: format!("{}_node", op.to_ascii_lowercase()),
        op_type: op.to_owned(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

#[test]
fn the_rule_table_is_sorted_without_repeats() {
    assert!(RULES.windows(2).all(|w| w[0].0 < w[1].0));
    for (op, _) in RULES {
        assert!(rule(op).is_some(), "{op} is found");
    }
    assert!(rule("Einsum").is_none());
}

#[test]
fn supported_ops_are_the_differentiable_rules() {
    assert_eq!(
        SUPPORTED_OPS,
        [
            "Add",
            "AveragePool",
            "BatchNormalization",
            "Clip",
            "Concat",
            "Conv",
            "Div",
            "Dropout",
            "Flatten",
            "Gemm",
            "GlobalAveragePool",
            "Identity",
            "LogSoftmax",
            "MatMul",
            "MaxPool",
            "Mul",
            "ReduceMean",
            "Relu",
            "Reshape",
            "Sigmoid",
            "Softmax",
            "Sub",
            "Tanh",
            "Transpose",
        ]
    );
    assert_eq!(crate::SUPPORTED_OPS, SUPPORTED_OPS);
}

#[test]
fn flow_of_constant_partial_and_unknown_ops() {
    assert_eq!(flow("Shape"), None);
    assert_eq!(flow("Equal"), None);
    assert_eq!(flow("MaxPool"), Some((Inputs::First, Outputs::First)));
    assert_eq!(flow("Dropout"), Some((Inputs::First, Outputs::First)));
    assert_eq!(
        flow("BatchNormalization"),
        Some((Inputs::Leading(3), Outputs::All))
    );
    let (inputs, _) = flow("BatchNormalization").expect("differentiable");
    assert!(inputs.contains(2) && !inputs.contains(3));
    assert_eq!(flow("Einsum"), Some((Inputs::All, Outputs::All)));
    assert_eq!(Outputs::First.count(2), 1);
    assert_eq!(Outputs::All.count(2), 2);
}

fn emit() -> Emit {
    let shapes: HashMap<String, Vec<i64>> = [("a", vec![2, 3]), ("y", vec![2, 4])]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s))
        .collect();
    Emit::new(GraphBuilder::new("t"), shapes)
}

#[test]
fn a_node_missing_an_input_is_a_typed_error_naming_node_and_op() {
    // Gemm with only A: before the rule table this indexed `node.input[1]` and panicked.
    let gemm = node("Gemm", &["a"], &["y"]);
    let err = vjp(&mut emit(), &gemm, &[Some("g".to_owned())], &[true]).expect_err("malformed");
    match &err {
        Error::MalformedNode {
            node,
            op_type,
            expected,
        } => {
            assert_eq!(node, "gemm_node");
            assert_eq!(op_type, "Gemm");
            assert_eq!(expected, "input 1");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("gemm_node"), "{err}");
}

#[test]
fn a_node_missing_its_output_is_a_typed_error() {
    let conv = node("Conv", &["a", "w"], &[]);
    let err =
        vjp(&mut emit(), &conv, &[Some("g".to_owned())], &[true, true]).expect_err("malformed");
    assert!(
        matches!(&err, Error::MalformedNode { op_type, expected, .. } if op_type == "Conv" && expected == "output 0"),
        "{err:?}"
    );
}
