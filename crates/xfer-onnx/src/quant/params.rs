//! The quantization arithmetic of the QDQ rewrite, the formulas of ONNX's
//! `QuantizeLinear`/`DequantizeLinear` and of ONNX Runtime's static quantizer:
//!
//! * activations, asymmetric uint8: the range is widened to hold 0, `scale = (max − min)/255`,
//!   `zero_point = round(−min/scale)`, `q = clamp(round(x/scale) + zero_point, 0, 255)`;
//! * weights, symmetric int8 per output channel: `scale[c] = max|w[c]|/127`, `zero_point = 0`,
//!   `q = clamp(round(w/scale[c]), −127, 127)`;
//! * biases, int32: `scale[c] = input_scale · weight_scale[c]`, `q = round(b/scale[c])`.
//!
//! Rounding is half to even, as `QuantizeLinear` rounds.

/// The range of a tensor's values seen during calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
}

impl Range {
    /// A range from its ends.
    pub fn new(min: f32, max: f32) -> Self {
        Range { min, max }
    }
}

/// Scale and zero point of an asymmetric uint8 tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct U8Params {
    /// Step between two quantized levels.
    pub scale: f32,
    /// The level that stands for 0.0.
    pub zero_point: u8,
}

impl U8Params {
    /// The parameters covering `range` (widened to include 0, so 0.0 is exact and a
    /// non-negative range gets zero point 0, which makes a following Relu a no-op).
    pub fn from_range(range: Range) -> Self {
        let min = range.min.min(0.0);
        let max = range.max.max(0.0);
        let scale = (max - min) / 255.0;
        if !(scale.is_finite() && scale > f32::MIN_POSITIVE) {
            return U8Params {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        U8Params { scale, zero_point }
    }

    /// `QuantizeLinear` of one value.
    pub fn quantize(&self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + f32::from(self.zero_point)).clamp(0.0, 255.0) as u8
    }

    /// `DequantizeLinear` of one level.
    pub fn dequantize(&self, q: u8) -> f32 {
        (f32::from(q) - f32::from(self.zero_point)) * self.scale
    }
}

/// A weight tensor quantized to int8 with one scale per channel along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerChannelI8 {
    /// One scale per channel.
    pub scales: Vec<f32>,
    /// The quantized values, in the layout of the float tensor.
    pub values: Vec<i8>,
}

/// The channel of each element of a row-major tensor of `dims` along `axis`, as a closure.
fn channel_of(dims: &[i64], axis: usize) -> impl Fn(usize) -> usize {
    let channels = dims.get(axis).map_or(1, |&d| d.max(1) as usize);
    let inner: usize = dims
        .iter()
        .skip(axis + 1)
        .map(|&d| d.max(1) as usize)
        .product();
    move |i| (i / inner.max(1)) % channels
}

/// Symmetric int8 quantization of `data` (row-major, shape `dims`) per channel along `axis`.
pub fn quantize_per_channel(data: &[f32], dims: &[i64], axis: usize) -> PerChannelI8 {
    let channels = dims.get(axis).map_or(1, |&d| d.max(1) as usize);
    let channel = channel_of(dims, axis);
    let mut max_abs = vec![0.0f32; channels];
    for (i, &w) in data.iter().enumerate() {
        let c = channel(i);
        max_abs[c] = max_abs[c].max(w.abs());
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let values = data
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            (w / scales[channel(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    PerChannelI8 { scales, values }
}

/// int32 quantization of a bias read by an operator whose input has scale `input_scale`
/// and whose weight channels have `weight_scales`: the values and their per-channel scales.
pub fn quantize_bias(
    bias: &[f32],
    input_scale: f32,
    weight_scales: &[f32],
) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight_scales.iter().map(|s| s * input_scale).collect();
    let values = bias
        .iter()
        .zip(&scales)
        .map(|(&b, &s)| {
            let q = (f64::from(b) / f64::from(s)).round_ties_even();
            q.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect();
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_params_follow_the_onnx_formulas() {
        // [-1, 3]: scale 4/255, zero point round(1/(4/255)) = round(63.75) = 64.
        let p = U8Params::from_range(Range::new(-1.0, 3.0));
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(p.zero_point, 64);
        assert_eq!(p.quantize(0.0), 64);
        assert_eq!(p.quantize(3.0), 255);
        assert_eq!(p.quantize(10.0), 255);
        assert_eq!(p.quantize(-5.0), 0);
        // A non-negative range holds 0: zero point 0.
        let r = U8Params::from_range(Range::new(0.5, 2.55));
        assert_eq!(r.zero_point, 0);
        assert!((r.scale - 0.01).abs() < 1e-7);
        assert_eq!(r.quantize(-1.0), 0);
        assert!((r.dequantize(r.quantize(1.234)) - 1.23).abs() < 1e-6);
        // A constant zero tensor: scale 1.
        assert_eq!(U8Params::from_range(Range::new(0.0, 0.0)).scale, 1.0);
    }

    #[test]
    fn weights_are_quantized_per_channel_along_the_axis() {
        // dims [2, 3]: channel 0 = [0.5, -1.27, 0.01], channel 1 = [2.54, 0, -2.54].
        let data = [0.5, -1.27, 0.01, 2.54, 0.0, -2.54];
        let q = quantize_per_channel(&data, &[2, 3], 0);
        assert!((q.scales[0] - 0.01).abs() < 1e-7 && (q.scales[1] - 0.02).abs() < 1e-7);
        assert_eq!(q.values, vec![50, -127, 1, 127, 0, -127]);
        // Along axis 1 (a MatMul's output columns): three channels of two values.
        let q = quantize_per_channel(&data, &[2, 3], 1);
        assert_eq!(q.scales.len(), 3);
        assert!((q.scales[0] - 2.54 / 127.0).abs() < 1e-7);
        assert_eq!(q.values[3], 127);
        assert_eq!(q.values[0], 25);
    }

    #[test]
    fn biases_use_the_product_of_the_scales() {
        let (q, s) = quantize_bias(&[1.0, -0.5], 0.1, &[0.5, 0.25]);
        assert_eq!(s, vec![0.05, 0.025]);
        assert_eq!(q, vec![20, -20]);
    }
}
