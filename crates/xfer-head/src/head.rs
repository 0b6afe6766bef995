//! A trained head: its parameters, `head.json` / `head.onnx`, and inference.

use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use xfer_onnx::{Dim, GraphBuilder, ModelProto, attr};

use crate::metrics::Metrics;
use crate::standardize::Standardizer;
use crate::train::{ClassWeight, GridPoint};
use crate::{Error, Result};
use xfer_fs::{read_json, write_json};

/// File name of the head parameters inside a run folder.
pub const HEAD_JSON: &str = "head.json";
/// File name of the head as an ONNX graph (embeddings → probabilities).
pub const HEAD_ONNX: &str = "head.onnx";
/// Name of the input of `head.onnx`.
pub const FEATURES_INPUT: &str = "features";
/// Version of the `head.json` layout.
const FORMAT_VERSION: u32 = 1;

/// Which logistic model a head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Two classes: one logit (row 0 of the weights is zero).
    Binary,
    /// More than two classes: the multinomial (softmax) model.
    Multinomial,
}

/// How a head was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HyperParameters {
    /// L2 strength `alpha` of the objective `Σ wᵢ·logloss(xᵢ) + alpha/2·‖W‖²`
    /// (scikit-learn's `C` is `1/alpha`).
    pub l2: f64,
    /// Where `l2` came from: `given` or `validation` (best accuracy on the validation split).
    pub l2_source: String,
    /// Validation results of every grid point tried (empty when `l2` was given).
    pub l2_grid: Vec<GridPoint>,
    /// Whether the features were standardised.
    pub standardize: bool,
    /// The class weighting asked for.
    pub class_weight: ClassWeight,
    /// The per-class weights actually used (rows replicated; see [`ClassWeight`]).
    pub effective_class_weights: Vec<f64>,
    /// L-BFGS iteration limit.
    pub max_iterations: u64,
    /// L-BFGS gradient tolerance (on the mean loss).
    pub gradient_tolerance: f64,
    /// Number of training rows.
    pub train_rows: usize,
    /// Name of the training split.
    pub train_split: String,
    /// Name of the validation split, if one was used.
    pub val_split: Option<String>,
    /// The solver, in words.
    pub solver: String,
}

/// A trained logistic head: `probabilities = softmax(W · standardise(x) + b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Layout version of `head.json`.
    pub format: u32,
    /// Binary or multinomial.
    pub kind: HeadKind,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Length of the embeddings the head takes.
    pub feature_dim: usize,
    /// Fingerprint of the backbone whose embeddings the head was trained on.
    pub fingerprint: String,
    /// One row of `feature_dim` weights per class.
    pub weights: Vec<Vec<f32>>,
    /// One bias per class.
    pub bias: Vec<f32>,
    /// Standardisation applied before the linear layer, if any.
    pub standardizer: Option<Standardizer>,
    /// How the head was trained.
    pub hyper_parameters: HyperParameters,
    /// xfer version that trained the head.
    pub xfer_version: String,
    /// The identity of the embeddings the head was trained on (xfer-store's `ModelIdentity`
    /// as JSON: fingerprint, input size, preprocessing, ...); `None` in heads written
    /// before it was recorded. `xfer export` refuses a backbone that makes other rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Value>,
}

impl Head {
    /// Assembles a head from its parts, checking that the shapes agree.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kind: HeadKind,
        classes: Vec<String>,
        fingerprint: String,
        weights: Vec<Vec<f32>>,
        bias: Vec<f32>,
        standardizer: Option<Standardizer>,
        hyper_parameters: HyperParameters,
    ) -> Result<Self> {
        let feature_dim = weights.first().map_or(0, Vec::len);
        let head = Head {
            format: FORMAT_VERSION,
            kind,
            classes,
            feature_dim,
            fingerprint,
            weights,
            bias,
            standardizer,
            hyper_parameters,
            xfer_version: env!("CARGO_PKG_VERSION").to_owned(),
            identity: None,
        };
        head.validate().map_err(Error::Data)?;
        Ok(head)
    }

    /// Checks that classes, weights, bias and standardisation have consistent sizes.
    fn validate(&self) -> std::result::Result<(), String> {
        let k = self.classes.len();
        if k < 2 {
            return Err(format!("a head needs at least 2 classes, found {k}"));
        }
        if self.weights.len() != k || self.bias.len() != k {
            return Err(format!(
                "{k} classes but {} weight rows and {} biases",
                self.weights.len(),
                self.bias.len()
            ));
        }
        if let Some(row) = self.weights.iter().find(|r| r.len() != self.feature_dim) {
            return Err(format!(
                "feature_dim is {} but a weight row has {} values",
                self.feature_dim,
                row.len()
            ));
        }
        if let Some(s) = &self.standardizer
            && (s.mean.len() != self.feature_dim || s.scale.len() != self.feature_dim)
        {
            return Err(format!(
                "feature_dim is {} but the standardisation has {} means and {} scales",
                self.feature_dim,
                s.mean.len(),
                s.scale.len()
            ));
        }
        if self
            .weights
            .iter()
            .flatten()
            .chain(&self.bias)
            .any(|v| !v.is_finite())
        {
            return Err("weights or biases are not finite".to_owned());
        }
        Ok(())
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Refuses embeddings of another backbone than the one the head was trained for.
    pub fn check_fingerprint(&self, fingerprint: &str) -> Result<()> {
        if fingerprint != self.fingerprint {
            return Err(Error::FingerprintMismatch {
                head: self.fingerprint.clone(),
                data: fingerprint.to_owned(),
            });
        }
        Ok(())
    }

    /// Class probabilities `[n, classes]` of embeddings `[n, feature_dim]`, computed in f64.
    pub fn probabilities(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f64>> {
        if x.ncols() != self.feature_dim {
            return Err(Error::Data(format!(
                "the embeddings have {} features but the head takes {}",
                x.ncols(),
                self.feature_dim
            )));
        }
        let k = self.num_classes();
        let mut out = Array2::<f64>::zeros((x.nrows(), k));
        let mut z = vec![0f64; self.feature_dim];
        for (row, mut probs) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
            match &self.standardizer {
                Some(s) => s.apply_row(row, &mut z),
                None => z
                    .iter_mut()
                    .zip(row.iter())
                    .for_each(|(o, v)| *o = f64::from(*v)),
            }
            let logits: Vec<f64> = self
                .weights
                .iter()
                .zip(&self.bias)
                .map(|(w, b)| {
                    f64::from(*b)
                        + w.iter()
                            .zip(&z)
                            .map(|(w, v)| f64::from(*w) * v)
                            .sum::<f64>()
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for (p, e) in probs.iter_mut().zip(exps) {
                *p = e / sum;
            }
        }
        Ok(out)
    }

    /// Metrics of the head on labelled embeddings of the backbone `fingerprint`.
    pub fn evaluate(
        &self,
        x: ArrayView2<'_, f32>,
        labels: &[i32],
        fingerprint: &str,
    ) -> Result<Metrics> {
        self.check_fingerprint(fingerprint)?;
        let probs = self.probabilities(x)?;
        Metrics::compute(probs.view(), labels, &self.classes)
    }

    /// The head as an ONNX graph: `features [batch, feature_dim]` → `probabilities [batch, classes]`.
    pub fn to_onnx(&self) -> ModelProto {
        let mut g = GraphBuilder::new("xfer_head");
        let input = g.input(
            FEATURES_INPUT,
            &[Dim::from("batch"), Dim::Fixed(self.feature_dim as i64)],
        );
        let probs = self.append_to(&mut g, &input, "");
        g.output(
            &probs,
            &[Dim::from("batch"), Dim::Fixed(self.num_classes() as i64)],
        );
        let mut model = g.build_model();
        model.set_metadata(crate::METADATA_CLASSES, &self.classes_json());
        model.set_metadata("fingerprint", &self.fingerprint);
        model
    }

    /// The classes as a JSON array.
    pub(crate) fn classes_json(&self) -> String {
        serde_json::Value::from(self.classes.clone()).to_string()
    }

    /// Appends the head's nodes to `g`, reading `input`; names start with `prefix`.
    /// Returns the name of the probabilities value (`probabilities`).
    pub(crate) fn append_to(&self, g: &mut GraphBuilder, input: &str, prefix: &str) -> String {
        let d = self.feature_dim as i64;
        let k = self.num_classes() as i64;
        let mut x = input.to_owned();
        if let Some(s) = &self.standardizer {
            let mean = g.constant_f32(&format!("{prefix}mean"), &[d], &s.mean);
            let scale = g.constant_f32(&format!("{prefix}scale"), &[d], &s.scale);
            let centred = g.op("Sub", &[&x, &mean], vec![], &format!("{prefix}centred"));
            x = g.op(
                "Div",
                &[&centred, &scale],
                vec![],
                &format!("{prefix}standardised"),
            );
        }
        let flat: Vec<f32> = self.weights.iter().flatten().copied().collect();
        let w = g.constant_f32(&format!("{prefix}weights"), &[k, d], &flat);
        let b = g.constant_f32(&format!("{prefix}bias"), &[k], &self.bias);
        let logits = g.op(
            "Gemm",
            &[&x, &w, &b],
            vec![attr::int("transB", 1)],
            &format!("{prefix}logits"),
        );
        let probs = g.unique(crate::PROBABILITIES_OUTPUT);
        g.node_named("Softmax", &[&logits], &[&probs], vec![attr::int("axis", 1)]);
        probs
    }

    /// Writes `dir/head.json` and `dir/head.onnx` (each atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(HEAD_JSON), self)?;
        xfer_onnx::write_model(&self.to_onnx(), &dir.join(HEAD_ONNX))?;
        Ok(())
    }

    /// Reads `dir/head.json` (or the file itself when `path` is a file) and checks its consistency.
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(HEAD_JSON)
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(Error::Format {
                path: file.display().to_string(),
                reason: "no such file (train a head with `xfer train-head --out DIR` first)"
                    .to_owned(),
            });
        }
        let head: Head = read_json(&file)?;
        if head.format != FORMAT_VERSION {
            return Err(Error::Format {
                path: file.display().to_string(),
                reason: format!(
                    "head format {} is not supported by this xfer (expects {FORMAT_VERSION}); retrain the head",
                    head.format
                ),
            });
        }
        head.validate().map_err(|reason| Error::Format {
            path: file.display().to_string(),
            reason,
        })?;
        Ok(head)
    }
}
