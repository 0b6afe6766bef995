//! Reading a model and writing it back loses no field of `onnx.proto3`:
//! functions, sparse initializers, metadata, value_info, training info,
//! non-tensor types, quantization annotations, node overloads.

use xfer_onnx::{
    AttributeProto, AttributeType, DataType, Dim, FunctionProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, SparseTensorProto, StringStringEntryProto, TensorAnnotation, TensorProto,
    TrainingInfoProto, TypeProto, ValueInfoProto, read_model, read_model_bytes, tensor_proto,
    type_proto, write_model, write_model_bytes,
};

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: domain.to_owned(),
        version,
    }
}

fn float_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dims: Vec<Dim> = dims.iter().map(|&d| Dim::Fixed(d)).collect();
    ValueInfoProto::tensor(name, DataType::Float, &dims)
}

fn float_type(dims: &[i64]) -> TypeProto {
    float_info("t", dims).r#type.unwrap_or_default()
}

/// A custom-domain function `Scale(x) = x * alpha`, with a default attribute.
fn scale_function() -> FunctionProto {
    FunctionProto {
        name: "Scale".to_owned(),
        domain: "xfer.test".to_owned(),
        overload: "v1".to_owned(),
        input: vec!["x".to_owned()],
        output: vec!["y".to_owned()],
        attribute: vec!["beta".to_owned()],
        attribute_proto: vec![AttributeProto {
            name: "alpha".to_owned(),
            r#type: AttributeType::Float as i32,
            f: 2.0,
            ..Default::default()
        }],
        node: vec![
            NodeProto {
                output: vec!["a".to_owned()],
                op_type: "Constant".to_owned(),
                attribute: vec![AttributeProto {
                    name: "value_float".to_owned(),
                    ref_attr_name: "alpha".to_owned(),
                    r#type: AttributeType::Float as i32,
                    ..Default::default()
                }],
                ..Default::default()
            },
            NodeProto {
                input: vec!["x".to_owned(), "a".to_owned()],
                output: vec!["y".to_owned()],
                op_type: "Mul".to_owned(),
                metadata_props: vec![entry("origin", "function body")],
                ..Default::default()
            },
        ],
        opset_import: vec![opset("", 17)],
        value_info: vec![ValueInfoProto {
            name: "a".to_owned(),
            r#type: Some(float_type(&[])),
            ..Default::default()
        }],
        metadata_props: vec![entry("author", "roundtrip test")],
        doc_string: "y = x * alpha".to_owned(),
    }
}

/// A 2×3 sparse initializer with two non-zero values (COO indices).
fn sparse_initializer() -> SparseTensorProto {
    SparseTensorProto {
        values: Some(TensorProto {
            name: "sparse_w".to_owned(),
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![1.5, -2.5],
            ..Default::default()
        }),
        indices: Some(TensorProto {
            name: "sparse_w_indices".to_owned(),
            dims: vec![2],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1, 5],
            ..Default::default()
        }),
        dims: vec![2, 3],
    }
}

/// A training algorithm: one step that writes `w_new` back into `w`.
fn training_info() -> TrainingInfoProto {
    TrainingInfoProto {
        initialization: Some(GraphProto {
            name: "init".to_owned(),
            node: vec![NodeProto {
                output: vec!["w_init".to_owned()],
                op_type: "RandomNormal".to_owned(),
                attribute: vec![AttributeProto {
                    name: "shape".to_owned(),
                    r#type: AttributeType::Ints as i32,
                    ints: vec![2, 3],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            output: vec![float_info("w_init", &[2, 3])],
            ..Default::default()
        }),
        algorithm: Some(GraphProto {
            name: "step".to_owned(),
            node: vec![NodeProto {
                input: vec!["w".to_owned()],
                output: vec!["w_new".to_owned()],
                op_type: "Identity".to_owned(),
                ..Default::default()
            }],
            output: vec![float_info("w_new", &[2, 3])],
            ..Default::default()
        }),
        initialization_binding: vec![entry("w", "w_init")],
        update_binding: vec![entry("w", "w_new")],
    }
}

/// The main graph: a call of the custom function, a sparse initializer, a
/// non-tensor `value_info` and a quantization annotation.
fn main_graph() -> GraphProto {
    let sequence_of_floats = TypeProto {
        value: Some(type_proto::Value::SequenceType(Box::new(
            type_proto::Sequence {
                elem_type: Some(Box::new(float_type(&[3]))),
            },
        ))),
        denotation: "LIST".to_owned(),
    };
    GraphProto {
        name: "main".to_owned(),
        node: vec![NodeProto {
            input: vec!["x".to_owned()],
            output: vec!["y".to_owned()],
            name: "scale".to_owned(),
            op_type: "Scale".to_owned(),
            domain: "xfer.test".to_owned(),
            overload: "v1".to_owned(),
            attribute: vec![AttributeProto {
                name: "alpha".to_owned(),
                r#type: AttributeType::Float as i32,
                f: 3.0,
                ..Default::default()
            }],
            ..Default::default()
        }],
        initializer: vec![TensorProto {
            name: "w".to_owned(),
            dims: vec![2, 3],
            data_type: DataType::Float as i32,
            raw_data: vec![0; 24],
            metadata_props: vec![entry("trainable", "true")],
            ..Default::default()
        }],
        sparse_initializer: vec![sparse_initializer()],
        input: vec![float_info("x", &[2, 3])],
        output: vec![float_info("y", &[2, 3])],
        value_info: vec![ValueInfoProto {
            name: "history".to_owned(),
            r#type: Some(sequence_of_floats),
            doc_string: "not a tensor".to_owned(),
            metadata_props: vec![entry("kind", "sequence")],
        }],
        quantization_annotation: vec![TensorAnnotation {
            tensor_name: "w".to_owned(),
            quant_parameter_tensor_names: vec![entry("SCALE_TENSOR", "w_scale")],
        }],
        metadata_props: vec![entry("graph", "main")],
        ..Default::default()
    }
}

fn full_model() -> ModelProto {
    ModelProto {
        ir_version: xfer_onnx::IR_VERSION,
        opset_import: vec![opset("", xfer_onnx::DEFAULT_OPSET), opset("xfer.test", 1)],
        producer_name: "roundtrip".to_owned(),
        producer_version: "1".to_owned(),
        domain: "xfer.test".to_owned(),
        model_version: 3,
        doc_string: "every field".to_owned(),
        graph: Some(main_graph()),
        metadata_props: vec![entry("license", "MIT"), entry("author", "xfer")],
        training_info: vec![training_info()],
        functions: vec![scale_function()],
    }
}

#[test]
fn every_field_survives_decode_and_encode() {
    let model = full_model();
    let bytes = write_model_bytes(&model);
    let decoded = read_model_bytes(&bytes).expect("decode");
    assert_eq!(decoded, model);
    assert_eq!(write_model_bytes(&decoded), bytes);
}

#[test]
fn every_field_survives_a_file_read_and_rewrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original.onnx");
    let rewritten = dir.path().join("rewritten.onnx");
    let model = full_model();
    write_model(&model, &original).expect("write original");

    let read_back = read_model(&original).expect("read original");
    assert_eq!(read_back, model);
    write_model(&read_back, &rewritten).expect("write rewritten");

    let original_bytes = std::fs::read(&original).expect("read original bytes");
    let rewritten_bytes = std::fs::read(&rewritten).expect("read rewritten bytes");
    assert_eq!(rewritten_bytes, original_bytes);
    assert_eq!(read_model(&rewritten).expect("read rewritten"), model);

    let graph = read_back.graph.expect("graph");
    assert_eq!(read_back.functions.len(), 1);
    assert_eq!(read_back.training_info.len(), 1);
    assert_eq!(graph.sparse_initializer, vec![sparse_initializer()]);
    assert_eq!(
        graph.sparse_initializer[0]
            .values
            .as_ref()
            .map(|v| v.data_type),
        Some(tensor_proto::DataType::Float as i32)
    );
}
