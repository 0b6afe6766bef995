//! Every node of the graphs xfer runs has a CUDA kernel in ONNX Runtime 1.31.1, so nothing
//! falls back to the CPU under `--device cuda`: the Xception inference graph, the exported
//! models (backbone + logistic head, fine-tuned backbone + Dense head) and the training and
//! eval graphs for `--trainable all`, `head` and `from:block13_sepconv1`. Checked on the CPU
//! against the CUDA execution provider's kernel table, vendored in
//! `tests/data/cuda_kernels_ort_1.31.txt`: each node's op, domain, opset and input element
//! types must match a registered kernel. Needs `just setup` (models/xception).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use xfer_autodiff::{HeadSpec, Loss, Trainable, TrainingGraphBuilder};
use xfer_onnx::{AttributeProto, DataType, ModelProto, NodeProto, type_proto};
use xfer_runtime::ModelManifest;

const TABLE: &str = include_str!("data/cuda_kernels_ort_1.31.txt");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir() -> PathBuf {
    let dir = root().join("models/xception");
    assert!(
        dir.join("model.json").is_file(),
        "{} is missing: run `just setup`",
        dir.display()
    );
    dir
}

/// ONNX element type names as OperatorKernels.md writes them (`tensor(float)` -> `float`).
fn type_name(t: i32) -> String {
    match DataType::try_from(t) {
        Ok(DataType::Float) => "float",
        Ok(DataType::Double) => "double",
        Ok(DataType::Float16) => "float16",
        Ok(DataType::Bfloat16) => "bfloat16",
        Ok(DataType::Int8) => "int8",
        Ok(DataType::Int16) => "int16",
        Ok(DataType::Int32) => "int32",
        Ok(DataType::Int64) => "int64",
        Ok(DataType::Uint8) => "uint8",
        Ok(DataType::Uint16) => "uint16",
        Ok(DataType::Uint32) => "uint32",
        Ok(DataType::Uint64) => "uint64",
        Ok(DataType::Bool) => "bool",
        Ok(DataType::String) => "string",
        _ => return format!("type{t}"),
    }
    .to_owned()
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// The element type of every value of `model` (graph inputs, initializers, node outputs),
/// propagated in node order by the ONNX type rules of the ops xfer emits.
fn value_types(model: &ModelProto) -> HashMap<String, i32> {
    let graph = model.graph.as_ref().expect("graph");
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in graph.input.iter().chain(&graph.value_info) {
        if let Some(xfer_onnx::TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..
        }) = &v.r#type
        {
            types.insert(v.name.clone(), t.elem_type);
        }
    }
    for t in &graph.initializer {
        types.insert(t.name.clone(), t.data_type);
    }
    for n in &graph.node {
        let input = |i: usize| n.input.get(i).and_then(|name| types.get(name)).copied();
        let int64 = DataType::Int64 as i32;
        let boolean = DataType::Bool as i32;
        let out: Vec<Option<i32>> = match n.op_type.as_str() {
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => vec![Some(int64)],
            "Cast" => vec![attr(n, "to").map(|a| a.i as i32)],
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And"
            | "Or" | "Xor" | "IsNaN" | "IsInf" => vec![Some(boolean)],
            "Constant" => vec![constant_type(n)],
            "ConstantOfShape" => vec![Some(
                attr(n, "value")
                    .and_then(|a| a.t.as_ref())
                    .map_or(DataType::Float as i32, |t| t.data_type),
            )],
            "Where" => vec![input(1)],
            "Dropout" => vec![input(0), Some(boolean)],
            "MaxPool" => vec![input(0), Some(int64)],
            _ => vec![input(0); n.output.len().max(1)],
        };
        for (name, t) in n.output.iter().zip(out) {
            if let Some(t) = t {
                types.insert(name.clone(), t);
            }
        }
    }
    types
}

fn constant_type(n: &NodeProto) -> Option<i32> {
    let a = n.attribute.first()?;
    Some(match a.name.as_str() {
        "value" => a.t.as_ref()?.data_type,
        "value_float" | "value_floats" => DataType::Float as i32,
        "value_int" | "value_ints" => DataType::Int64 as i32,
        _ => return None,
    })
}

/// The signature of every node of `model`.
fn node_signatures(model: &ModelProto) -> Vec<Signature> {
    let types = value_types(model);
    let opset = |domain: &str| {
        model
            .opset_import
            .iter()
            .find(|o| o.domain == domain || (domain.is_empty() && o.domain == "ai.onnx"))
            .map_or(0, |o| o.version)
    };
    let names = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    String::new()
                } else {
                    types.get(v).map_or("?".to_owned(), |t| type_name(*t))
                }
            })
            .collect()
    };
    let graph = model.graph.as_ref().expect("graph");
    graph
        .node
        .iter()
        .map(|n| Signature {
            op: n.op_type.clone(),
            domain: if n.domain.is_empty() {
                "ai.onnx".to_owned()
            } else {
                n.domain.clone()
            },
            opset: opset(&n.domain),
            inputs: names(&n.input),
            outputs: names(&n.output),
        })
        .collect()
}

/// One kernel row of the vendored table.
#[derive(Debug)]
struct KernelRow {
    op: String,
    since: i64,
    until: i64,
    inputs: Vec<String>,
    outputs: Vec<String>,
    constraints: HashMap<String, Vec<String>>,
}

fn kernel_table() -> Vec<KernelRow> {
    TABLE
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 5, "bad row: {line}");
            let (ins, outs) = f[3].split_once(" -> ").expect("`inputs -> outputs`");
            let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
            KernelRow {
                op: f[0].to_owned(),
                since: f[1].parse().expect("since"),
                until: if f[2] == "*" {
                    i64::MAX
                } else {
                    f[2].parse().expect("until")
                },
                inputs: list(ins),
                outputs: list(outs),
                constraints: f[4]
                    .split(';')
                    .map(|c| {
                        let (var, types) = c.split_once('=').expect("VAR=types");
                        (var.to_owned(), list(types))
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Whether `types` (a node's input or output element types, "" for a left-out optional
/// input) fit `binding` (the row's list; a trailing `T...` repeats).
fn fits(row: &KernelRow, binding: &[String], types: &[String]) -> bool {
    types.iter().enumerate().all(|(i, t)| {
        let Some(b) = binding
            .get(i)
            .or_else(|| binding.last().filter(|b| b.ends_with("...")))
        else {
            return false;
        };
        let b = b.trim_end_matches("...");
        t.is_empty()
            || b == "*"
            || b == t
            || row
                .constraints
                .get(b)
                .is_some_and(|allowed| allowed.contains(t))
    })
}

/// A node as the kernel lookup sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Signature {
    op: String,
    domain: String,
    opset: i64,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Why `s` has no CUDA kernel, or `None` when a row of the table takes it.
fn missing_kernel(table: &[KernelRow], s: &Signature) -> Option<String> {
    if s.domain != "ai.onnx" {
        return Some(format!("domain {} has no CUDA kernels here", s.domain));
    }
    let rows: Vec<&KernelRow> = table
        .iter()
        .filter(|r| r.op == s.op && r.since <= s.opset && s.opset <= r.until)
        .collect();
    if rows.is_empty() {
        return Some(format!(
            "no CUDA kernel for {} at opset {} in the vendored table",
            s.op, s.opset
        ));
    }
    let ok = rows
        .iter()
        .any(|r| fits(r, &r.inputs, &s.inputs) && fits(r, &r.outputs, &s.outputs));
    (!ok).then(|| {
        format!(
            "the CUDA kernels of {} (opset {}) do not take inputs {:?} / outputs {:?}",
            s.op, s.opset, s.inputs, s.outputs
        )
    })
}

fn training_graphs(trainable: &str, loss: Loss, units: usize) -> xfer_autodiff::TrainingGraphs {
    let dir = model_dir();
    let manifest = ModelManifest::read(&dir).expect("manifest");
    let source = manifest.training_onnx_path(&dir).expect("a training graph");
    let forward = xfer_onnx::read_model(&source).expect("train.onnx");
    let [h, w] = manifest.image_size;
    TrainingGraphBuilder::new(forward)
        .features(&manifest.output)
        .head(HeadSpec::Dense {
            units,
            dropout: 0.2,
        })
        .trainable(trainable.parse::<Trainable>().expect("trainable"))
        .loss(loss)
        .example_shape(&[3, i64::from(h), i64::from(w)])
        .build()
        .expect("training graph")
}

/// `xfer export`'s model: the backbone and a logistic head (standardised features).
fn head_export(manifest: &ModelManifest, backbone: &ModelProto) -> ModelProto {
    let d = manifest.feature_dim;
    let head: xfer_head::Head = serde_json::from_value(serde_json::json!({
        "format": 1, "kind": "binary", "classes": ["cat", "dog"], "feature_dim": d,
        "fingerprint": manifest.fingerprint,
        "weights": [vec![0.0f32; d], vec![0.01f32; d]], "bias": [0.0, 0.1],
        "standardizer": {"mean": vec![0.5f32; d], "scale": vec![2.0f32; d]},
        "hyper_parameters": {
            "l2": 1.0, "l2_source": "given", "l2_grid": [], "standardize": true,
            "class_weight": "none", "effective_class_weights": [1.0, 1.0],
            "max_iterations": 100, "gradient_tolerance": 1e-4, "train_rows": 2,
            "train_split": "train", "val_split": null, "solver": "test"
        },
        "xfer_version": "0.1.0"
    }))
    .expect("head.json");
    let options = xfer_head::ExportOptions {
        input: manifest.input.clone(),
        features_output: manifest.output.clone(),
        image_size: manifest.image_size,
        value_range: manifest.value_range,
        backbone_name: manifest.name.clone(),
    };
    xfer_head::merge(backbone, &head, &options).expect("merge")
}

/// `xfer finetune`'s export: the trained backbone (BatchNorm folded) and the Dense head.
fn finetune_export(manifest: &ModelManifest, tg: &xfer_autodiff::TrainingGraphs) -> ModelProto {
    let dir = model_dir();
    let source = manifest.training_onnx_path(&dir).expect("a training graph");
    let forward = xfer_onnx::read_model(&source).expect("train.onnx");
    let params = tg
        .params
        .iter()
        .map(|p| (p.name.clone(), p.clone()))
        .collect();
    let info = xfer_finetune::ExportInfo {
        input: manifest.input.clone(),
        features: manifest.output.clone(),
        classes: vec!["cat".into(), "dog".into()],
        image_size: manifest.image_size,
        value_range: manifest.value_range,
        backbone_name: manifest.name.clone(),
        fingerprint: manifest.fingerprint.clone(),
    };
    xfer_finetune::export_model(&forward, &params, &info).expect("export")
}

/// Every graph xfer runs, by name.
fn graphs() -> Vec<(String, ModelProto)> {
    let dir = model_dir();
    let manifest = ModelManifest::read(&dir).expect("manifest");
    let model = xfer_onnx::read_model(&manifest.onnx_path(&dir)).expect("model.onnx");
    let mut graphs = vec![
        (
            "export (logistic head)".to_owned(),
            head_export(&manifest, &model),
        ),
        ("model.onnx".to_owned(), model),
    ];
    for t in ["all", "head", "from:block13_sepconv1"] {
        let tg = training_graphs(t, Loss::BinaryCrossEntropyWithLogits, 1);
        if t == "head" {
            graphs.push((
                "export (finetune)".to_owned(),
                finetune_export(&manifest, &tg),
            ));
        }
        graphs.push((format!("training.onnx ({t})"), tg.training));
        graphs.push((format!("eval.onnx ({t})"), tg.eval));
    }
    let softmax = training_graphs("from:block13_sepconv1", Loss::SoftmaxCrossEntropy, 3);
    graphs.push((
        "training.onnx (from:block13_sepconv1, softmax, 3 classes)".to_owned(),
        softmax.training,
    ));
    graphs
}

#[test]
fn every_node_of_every_graph_has_a_cuda_kernel() {
    let table = kernel_table();
    let mut fallbacks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ops: BTreeSet<String> = BTreeSet::new();
    for (name, model) in graphs() {
        let signatures = node_signatures(&model);
        assert!(!signatures.is_empty(), "{name} has no nodes");
        println!("{name}: {} nodes", signatures.len());
        for s in signatures {
            assert!(
                !s.inputs.iter().chain(&s.outputs).any(|t| t == "?"),
                "{name}: the element types of {s:?} could not be worked out"
            );
            ops.insert(s.op.clone());
            if let Some(why) = missing_kernel(&table, &s) {
                fallbacks.entry(why).or_default().insert(name.clone());
            }
        }
    }
    println!("ops: {}", ops.into_iter().collect::<Vec<_>>().join(", "));
    let report: Vec<String> = fallbacks
        .iter()
        .map(|(why, graphs)| {
            format!(
                "{why} (in {})",
                graphs.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "nodes that would run on the CPU under --device cuda:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_kernel_lookup_rejects_what_cuda_lacks() {
    let table = kernel_table();
    let sig = |op: &str, opset: i64, inputs: &[&str], outputs: &[&str]| Signature {
        op: op.to_owned(),
        domain: "ai.onnx".to_owned(),
        opset,
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        outputs: outputs.iter().map(|s| (*s).to_owned()).collect(),
    };
    // Taken: float Conv with an optional bias left out, int64 Reshape, variadic Concat.
    assert_eq!(
        missing_kernel(
            &table,
            &sig("Conv", 17, &["float", "float", ""], &["float"])
        ),
        None
    );
    assert_eq!(
        missing_kernel(&table, &sig("Reshape", 17, &["int64", "int64"], &["int64"])),
        None
    );
    assert_eq!(
        missing_kernel(&table, &sig("Concat", 17, &["float"; 9], &["float"])),
        None
    );
    // Not taken: int64 Relu, a reshape whose shape is int32, an int64 Softplus, an op absent.
    assert!(missing_kernel(&table, &sig("Relu", 17, &["int64"], &["int64"])).is_some());
    assert!(missing_kernel(&table, &sig("Reshape", 17, &["float", "int32"], &["float"])).is_some());
    assert!(missing_kernel(&table, &sig("Softplus", 17, &["int64"], &["int64"])).is_some());
    assert!(
        missing_kernel(
            &table,
            &sig("Col2Im", 18, &["float", "int64", "int64"], &["float"])
        )
        .is_some()
    );
    // Opset ranges: ReduceSum took axes as an attribute up to 12, as an input from 13.
    assert!(
        missing_kernel(
            &table,
            &sig("ReduceSum", 12, &["float", "int64"], &["float"])
        )
        .is_some()
    );
    assert_eq!(
        missing_kernel(
            &table,
            &sig("ReduceSum", 13, &["float", "int64"], &["float"])
        ),
        None
    );
}
