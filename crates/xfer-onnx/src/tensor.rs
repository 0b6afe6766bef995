//! Constructing and reading [`TensorProto`] values.

use crate::{DataType, Error, Result, TensorProto};

impl TensorProto {
    /// A float32 tensor stored as little-endian raw data.
    pub fn from_f32(name: impl Into<String>, dims: &[i64], data: &[f32]) -> Self {
        let mut raw = Vec::with_capacity(data.len() * 4);
        for v in data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        }
    }

    /// An int64 tensor stored as little-endian raw data.
    pub fn from_i64(name: impl Into<String>, dims: &[i64], data: &[i64]) -> Self {
        let mut raw = Vec::with_capacity(data.len() * 8);
        for v in data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            raw_data: raw,
            ..Default::default()
        }
    }

    /// A uint8 tensor stored as raw data (QuantizeLinear zero points of uint8 activations).
    pub fn from_u8(name: impl Into<String>, dims: &[i64], data: &[u8]) -> Self {
        Self::from_raw(name, dims, DataType::Uint8, data.to_vec())
    }

    /// An int8 tensor stored as raw data (quantized weights and their zero points).
    pub fn from_i8(name: impl Into<String>, dims: &[i64], data: &[i8]) -> Self {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_raw(name, dims, DataType::Int8, raw)
    }

    /// An int32 tensor stored as little-endian raw data (quantized biases).
    pub fn from_i32(name: impl Into<String>, dims: &[i64], data: &[i32]) -> Self {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_raw(name, dims, DataType::Int32, raw)
    }

    fn from_raw(name: impl Into<String>, dims: &[i64], elem: DataType, raw: Vec<u8>) -> Self {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: elem as i32,
            raw_data: raw,
            ..Default::default()
        }
    }

    /// Number of elements implied by `dims`.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Dimensions as `usize`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&d| d.max(0) as usize).collect()
    }

    /// The values of a float32 tensor (raw or `float_data`).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.data_type != DataType::Float as i32 {
            return Err(self.type_error("float32"));
        }
        let values: Vec<f32> = if !self.raw_data.is_empty() {
            self.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            self.float_data.clone()
        };
        self.check_len(values.len())?;
        Ok(values)
    }

    /// The values of an int64 tensor (raw or `int64_data`).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        if self.data_type != DataType::Int64 as i32 {
            return Err(self.type_error("int64"));
        }
        let values: Vec<i64> = if !self.raw_data.is_empty() {
            self.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        } else {
            self.int64_data.clone()
        };
        self.check_len(values.len())?;
        Ok(values)
    }

    fn type_error(&self, want: &str) -> Error {
        let have = DataType::try_from(self.data_type)
            .map(|t| format!("{t:?}"))
            .unwrap_or_else(|_| format!("type {}", self.data_type));
        Error::Tensor {
            name: self.name.clone(),
            reason: format!("expected {want}, found {have}"),
        }
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if !self.external_data.is_empty() {
            return Err(Error::Tensor {
                name: self.name.clone(),
                reason: "external data is not supported; save the model with its weights embedded"
                    .to_owned(),
            });
        }
        if len != self.numel() {
            return Err(Error::Tensor {
                name: self.name.clone(),
                reason: format!(
                    "holds {len} values but its dims {:?} need {}",
                    self.dims,
                    self.numel()
                ),
            });
        }
        Ok(())
    }
}
