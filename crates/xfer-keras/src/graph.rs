//! The functional graph of a Keras config, with each layer's weight group.

use std::collections::HashMap;

use serde_json::Value;

use crate::{Error, Result};

/// A reference to a layer output: `[layer, node index, tensor index]` (Keras `keras_history`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TensorRef {
    pub layer: String,
    pub node: usize,
    pub index: usize,
}

/// One layer of a functional model.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub class: String,
    pub name: String,
    pub config: Value,
    /// The inputs of each call of the layer (one entry per inbound node).
    pub calls: Vec<Vec<TensorRef>>,
    /// HDF5 group of the layer's variables (`layers/functional/layers/conv2d`).
    pub weight_group: String,
    /// The nested model, for `Functional` / `Sequential` layers.
    pub nested: Option<Box<Functional>>,
}

/// A functional (or sequential) model.
#[derive(Debug, Clone)]
pub(crate) struct Functional {
    pub name: String,
    pub layers: Vec<Layer>,
    pub inputs: Vec<TensorRef>,
    pub outputs: Vec<TensorRef>,
}

/// Keras's `naming.to_snake_case`, which names weight groups by layer class (`SeparableConv2D` → `separable_conv2d`).
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    let mut first = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        first.push(c);
        if chars.get(i + 1).is_some_and(char::is_ascii_uppercase)
            && chars.get(i + 2).is_some_and(char::is_ascii_lowercase)
        {
            // `c` is the (.) group; insert `_` before the capital, then copy the word.
            first.push('_');
            let mut j = i + 1;
            first.push(chars[j]);
            j += 1;
            while j < chars.len() && chars[j].is_ascii_lowercase() {
                first.push(chars[j]);
                j += 1;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    // re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    let chars: Vec<char> = first.chars().collect();
    let mut out = String::new();
    for (k, &c) in chars.iter().enumerate() {
        out.push(c.to_ascii_lowercase());
        if c.is_ascii_lowercase() && chars.get(k + 1).is_some_and(|n| n.is_ascii_uppercase()) {
            out.push('_');
        }
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses a `[name, node, index]` triple (or a list of them).
fn tensor_refs(v: &Value, what: &str) -> Result<Vec<TensorRef>> {
    let arr = v
        .as_array()
        .ok_or_else(|| Error::Config(format!("{what}: expected a list, found {v}")))?;
    if arr.first().is_some_and(Value::is_string) {
        return Ok(vec![tensor_ref(v, what)?]);
    }
    arr.iter().map(|t| tensor_ref(t, what)).collect()
}

fn tensor_ref(v: &Value, what: &str) -> Result<TensorRef> {
    let bad = || Error::Config(format!("{what}: expected [layer, node, index], found {v}"));
    let arr = v.as_array().ok_or_else(bad)?;
    let layer = arr
        .first()
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    let node = arr.get(1).and_then(Value::as_u64).unwrap_or(0) as usize;
    let index = arr.get(2).and_then(Value::as_u64).unwrap_or(0) as usize;
    Ok(TensorRef { layer, node, index })
}

/// Collects the `__keras_tensor__` references inside a call's `args`, in order.
fn collect_keras_tensors(v: &Value, out: &mut Vec<TensorRef>, what: &str) -> Result<()> {
    match v {
        Value::Object(map) => {
            if map.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") {
                let history = v
                    .get("config")
                    .and_then(|c| c.get("keras_history"))
                    .ok_or_else(|| {
                        Error::Config(format!("{what}: keras tensor without keras_history"))
                    })?;
                out.push(tensor_ref(history, what)?);
            } else {
                for value in map.values() {
                    collect_keras_tensors(value, out, what)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_keras_tensors(item, out, what)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses one inbound node: Keras 3 `{"args": [...], "kwargs": {...}}` or Keras 2 `[[name, node, index, kwargs], ...]`.
fn parse_call(node: &Value, what: &str) -> Result<Vec<TensorRef>> {
    let mut refs = Vec::new();
    if let Some(args) = node.get("args") {
        collect_keras_tensors(args, &mut refs, what)?;
    } else if let Some(items) = node.as_array() {
        for item in items {
            refs.push(tensor_ref(item, what)?);
        }
    } else {
        return Err(Error::Config(format!(
            "{what}: unrecognized inbound node {node}"
        )));
    }
    Ok(refs)
}

impl Functional {
    /// Parses a model config (`{"class_name": ..., "config": {...}}`) whose variables live under `weight_group`.
    pub fn parse(model: &Value, weight_group: &str) -> Result<Self> {
        let class = str_field(model, "class_name").unwrap_or("");
        let config = model
            .get("config")
            .ok_or_else(|| Error::Config("the model has no `config`".to_owned()))?;
        let name = str_field(config, "name").unwrap_or("model").to_owned();
        let layer_values = config
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::Config(format!("model `{name}` ({class}) has no `layers` list"))
            })?;
        let sequential = class == "Sequential";
        let mut groups = WeightGroups::new(weight_group);
        let mut layers: Vec<Layer> = Vec::with_capacity(layer_values.len());
        for lv in layer_values {
            let previous = sequential.then(|| layers.last().map(|l| l.name.as_str()));
            layers.push(Layer::parse(lv, &name, previous, &mut groups)?);
        }
        let (inputs, outputs) = if sequential {
            sequential_endpoints(&name, &layers)?
        } else {
            functional_endpoints(&name, config)?
        };
        if inputs.is_empty() || outputs.is_empty() {
            return Err(Error::Config(format!(
                "model `{name}` declares no inputs or no outputs"
            )));
        }
        Ok(Functional {
            name,
            layers,
            inputs,
            outputs,
        })
    }
}

/// Keras 3's weight-group names of a model's layers: `<group>/layers/<class>[_k]`, `k`
/// counting the earlier layers of the same class.
struct WeightGroups<'a> {
    parent: &'a str,
    counters: HashMap<String, usize>,
}

impl<'a> WeightGroups<'a> {
    fn new(parent: &'a str) -> Self {
        WeightGroups {
            parent,
            counters: HashMap::new(),
        }
    }

    /// The group of the next layer of class `class`.
    fn next(&mut self, class: &str) -> String {
        let snake = snake_case(class);
        let counter = self.counters.entry(snake.clone()).or_insert(0);
        let group_name = if *counter == 0 {
            snake
        } else {
            format!("{snake}_{counter}")
        };
        *counter += 1;
        if self.parent.is_empty() {
            format!("layers/{group_name}")
        } else {
            format!("{}/layers/{group_name}", self.parent)
        }
    }
}

impl Layer {
    /// Parses one layer of model `model`. `previous` is `Some` in a sequential model:
    /// the layer before this one (`None` for the first), whose output this layer reads.
    fn parse(
        lv: &Value,
        model: &str,
        previous: Option<Option<&str>>,
        groups: &mut WeightGroups<'_>,
    ) -> Result<Self> {
        let class = str_field(lv, "class_name")
            .ok_or_else(|| Error::Config(format!("a layer of `{model}` has no class_name")))?
            .to_owned();
        let config = lv.get("config").cloned().unwrap_or(Value::Null);
        let name = str_field(lv, "name")
            .or_else(|| str_field(&config, "name"))
            .ok_or_else(|| Error::Config(format!("a {class} layer of `{model}` has no name")))?
            .to_owned();
        let weight_group = groups.next(&class);
        let calls = match previous {
            Some(previous) => sequential_calls(previous, &class),
            None => functional_calls(lv, &format!("layer `{name}`"))?,
        };
        let nested = if class == "Functional" || class == "Sequential" || class == "Model" {
            Some(Box::new(Functional::parse(lv, &weight_group)?))
        } else {
            None
        };
        Ok(Layer {
            class,
            name,
            config,
            calls,
            weight_group,
            nested,
        })
    }
}

/// Output 0 of `layer`, call 0.
fn first_output(layer: &str) -> TensorRef {
    TensorRef {
        layer: layer.to_owned(),
        node: 0,
        index: 0,
    }
}

/// A layer of a sequential model reads the output of the layer before it.
fn sequential_calls(previous: Option<&str>, class: &str) -> Vec<Vec<TensorRef>> {
    match (previous, class) {
        (_, "InputLayer") | (None, _) => Vec::new(),
        (Some(prev), _) => vec![vec![first_output(prev)]],
    }
}

/// The inputs of each call of a layer of a functional model (its `inbound_nodes`).
fn functional_calls(lv: &Value, what: &str) -> Result<Vec<Vec<TensorRef>>> {
    Ok(lv
        .get("inbound_nodes")
        .and_then(Value::as_array)
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| parse_call(n, what))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default())
}

/// A sequential model's input (its first layer, an InputLayer) and output (its last layer).
fn sequential_endpoints(name: &str, layers: &[Layer]) -> Result<(Vec<TensorRef>, Vec<TensorRef>)> {
    let first = layers
        .first()
        .ok_or_else(|| Error::Config(format!("sequential model `{name}` has no layers")))?;
    let last = layers.last().map(|l| l.name.as_str()).unwrap_or_default();
    if first.class != "InputLayer" {
        return Err(Error::Config(format!(
            "sequential model `{name}` does not start with an InputLayer; build it with keras.Input(shape=...)"
        )));
    }
    Ok((vec![first_output(&first.name)], vec![first_output(last)]))
}

/// A functional model's `input_layers` and `output_layers`.
fn functional_endpoints(name: &str, config: &Value) -> Result<(Vec<TensorRef>, Vec<TensorRef>)> {
    let refs = |key: &str| {
        config
            .get(key)
            .map(|v| tensor_refs(v, &format!("{key} of `{name}`")))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok((refs("input_layers")?, refs("output_layers")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_matches_keras() {
        for (class, want) in [
            ("Conv2D", "conv2d"),
            ("SeparableConv2D", "separable_conv2d"),
            ("DepthwiseConv2D", "depthwise_conv2d"),
            ("BatchNormalization", "batch_normalization"),
            ("GlobalAveragePooling2D", "global_average_pooling2d"),
            ("MaxPooling2D", "max_pooling2d"),
            ("InputLayer", "input_layer"),
            ("ReLU", "re_lu"),
            ("Functional", "functional"),
            ("Dense", "dense"),
        ] {
            assert_eq!(snake_case(class), want, "{class}");
        }
    }
}
