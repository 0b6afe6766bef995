//! Builds the training graphs of `models/xception` for a few configurations and writes their
//! bytes under the directory given as the first argument (for byte-identity checks).

use std::path::{Path, PathBuf};

use xfer_autodiff::{HeadSpec, Loss, Trainable, TrainingGraphBuilder};
use xfer_runtime::ModelManifest;

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("output directory"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/xception");
    let manifest = ModelManifest::read(&dir).expect("manifest");
    let path = manifest.training_onnx_path(&dir).expect("training graph");
    let forward = xfer_onnx::read_model(&path).expect("train.onnx");
    let configs: Vec<(&str, HeadSpec, Trainable, Loss, bool)> = vec![
        (
            "head",
            HeadSpec::Dense {
                units: 1,
                dropout: 0.0,
            },
            Trainable::Head,
            Loss::BinaryCrossEntropyWithLogits,
            true,
        ),
        (
            "from_block13",
            HeadSpec::Dense {
                units: 1,
                dropout: 0.2,
            },
            Trainable::From("block13_sepconv1".to_owned()),
            Loss::BinaryCrossEntropyWithLogits,
            true,
        ),
        (
            "all_softmax",
            HeadSpec::Dense {
                units: 3,
                dropout: 0.5,
            },
            Trainable::All,
            Loss::SoftmaxCrossEntropy,
            true,
        ),
        (
            "all_unfolded",
            HeadSpec::Dense {
                units: 1,
                dropout: 0.0,
            },
            Trainable::All,
            Loss::BinaryCrossEntropyWithLogits,
            false,
        ),
    ];
    for (name, head, trainable, loss, fold) in configs {
        let tg = TrainingGraphBuilder::new(forward.clone())
            .features(&manifest.output)
            .head(head)
            .trainable(trainable)
            .loss(loss)
            .example_shape(&[3, 150, 150])
            .seed(7)
            .fold_batch_norm(fold)
            .build()
            .expect("training graphs");
        let d = out.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("training.onnx"),
            xfer_onnx::write_model_bytes(&tg.training),
        )
        .expect("write");
        std::fs::write(d.join("eval.onnx"), xfer_onnx::write_model_bytes(&tg.eval)).expect("write");
        std::fs::write(
            d.join("graph.json"),
            serde_json::to_string_pretty(&tg.spec).expect("json"),
        )
        .expect("write");
        let params: Vec<u8> = tg
            .params
            .iter()
            .flat_map(|p| {
                p.name
                    .bytes()
                    .chain(p.shape.iter().flat_map(|s| s.to_le_bytes()))
                    .chain(p.data.iter().flat_map(|v| v.to_le_bytes()))
                    .collect::<Vec<u8>>()
            })
            .collect();
        std::fs::write(d.join("params.bin"), params).expect("write");
        println!("{name}: {} params", tg.params.len());
    }
}
