//! Decoding (JPEG, PNG, BMP, GIF, WebP, TIFF → 8-bit RGB) and resizing to CHW float32.
//!
//! Conversions follow what Keras `image_dataset_from_directory` (TensorFlow decoders) does:
//! grayscale is replicated to three channels, palettes are expanded, alpha is dropped
//! (not composited), 16-bit samples keep their high byte (`v >> 8`), GIFs give their
//! first frame, and EXIF orientation is ignored. The format is detected from the bytes,
//! not the file name. Decoding is bounded by [`MAX_IMAGE_SIDE`] and [`MAX_DECODE_BYTES`]
//! so a forged header cannot make the decoder allocate gigabytes.

use std::io::Cursor;
use std::path::Path;

use image::{ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use ndarray::Array3;

use crate::error::{DataError, Result};

/// The largest width or height that is decoded.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory one decode may allocate.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// How images are resized to the model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMethod {
    /// Bilinear with half-pixel centres, exactly `tf.image.resize(..., "bilinear")`
    /// (`antialias=False`), what the Keras guide uses.
    #[default]
    Bilinear,
    /// Bilinear with a triangle filter widened by the downscale factor, like
    /// `tf.image.resize(..., "bilinear", antialias=True)`; better for large photos.
    /// Identical to [`ResizeMethod::Bilinear`] when upscaling.
    BilinearAntialias,
}

impl std::str::FromStr for ResizeMethod {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bilinear" => Ok(ResizeMethod::Bilinear),
            "bilinear-antialias" | "antialias" => Ok(ResizeMethod::BilinearAntialias),
            other => Err(DataError::InvalidArgument {
                what: "resize method",
                reason: format!("`{other}`; use `bilinear` or `bilinear-antialias`"),
            }),
        }
    }
}

/// Reads a whole file, reporting an empty file as [`DataError::EmptyFile`].
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("read", path, e))?;
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Whether a JPEG stream has an end-of-image marker after its last start-of-scan marker.
///
/// Entropy-coded data cannot contain `FF D9` (0xFF bytes are stuffed as `FF 00`), so a
/// missing EOI after the last SOS means the file was cut short. TensorFlow's `decode_jpeg`
/// rejects such files too; the Rust decoder would silently fill the rest with grey.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    match (last_sos, last_eoi) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn decode_error(origin: &Path, err: ImageError) -> DataError {
    let path = origin.to_path_buf();
    match err {
        ImageError::Limits(e) => DataError::TooLarge {
            path,
            reason: e.to_string(),
            max_side: MAX_IMAGE_SIDE,
            max_alloc_mib: MAX_DECODE_BYTES / (1024 * 1024),
        },
        ImageError::Unsupported(e) => DataError::UnsupportedFormat {
            path,
            reason: e.to_string(),
        },
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DataError::Decode {
                path,
                reason: format!("truncated file ({e})"),
            }
        }
        other => DataError::Decode {
            path,
            reason: other.to_string(),
        },
    }
}

/// Decodes image bytes to 8-bit RGB; `origin` names the source in errors.
pub fn decode_rgb8(bytes: &[u8], origin: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: origin.to_path_buf(),
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io("read", origin, e))?;
    let format = reader
        .format()
        .ok_or_else(|| DataError::UnsupportedFormat {
            path: origin.to_path_buf(),
            reason: "the content is not a known image format".into(),
        })?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(DataError::Decode {
            path: origin.to_path_buf(),
            reason: "truncated JPEG (no end-of-image marker after the last scan)".into(),
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| decode_error(origin, e))?;
    Ok(to_rgb8_like_tensorflow(image))
}

/// 8-bit RGB as TensorFlow's decoders produce it: 16-bit samples keep their high byte
/// (`v >> 8`, libpng's `png_set_strip_16`), gray is replicated, alpha is dropped.
fn to_rgb8_like_tensorflow(image: image::DynamicImage) -> RgbImage {
    use image::DynamicImage as D;
    let (w, h) = (image.width(), image.height());
    let high = |v: u16| (v >> 8) as u8;
    let pixels: Option<Vec<u8>> = match &image {
        D::ImageLuma16(buf) => Some(buf.as_raw().iter().flat_map(|&v| [high(v); 3]).collect()),
        D::ImageLumaA16(buf) => Some(
            buf.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [high(p[0]); 3])
                .collect(),
        ),
        D::ImageRgb16(buf) => Some(buf.as_raw().iter().map(|&v| high(v)).collect()),
        D::ImageRgba16(buf) => Some(
            buf.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [high(p[0]), high(p[1]), high(p[2])])
                .collect(),
        ),
        _ => None,
    };
    match pixels.and_then(|p| RgbImage::from_raw(w, h, p)) {
        Some(rgb) => rgb,
        None => image.to_rgb8(),
    }
}

/// Reads the width and height from an image header without decoding the pixels.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let bytes = read_image_file(path)?;
    let reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io("read", path, e))?;
    if reader.format().is_none() {
        return Err(DataError::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: "the content is not a known image format".into(),
        });
    }
    reader.into_dimensions().map_err(|e| decode_error(path, e))
}

/// Loads an image: decode → 8-bit RGB → bilinear half-pixel resize → CHW float32 in 0..255.
pub fn load_image(path: &Path, height: u32, width: u32) -> Result<Array3<f32>> {
    let bytes = read_image_file(path)?;
    load_image_bytes(&bytes, path, height, width)
}

/// [`load_image`] on bytes already read (so callers that hash the file read it once);
/// `origin` names the source in errors.
pub fn load_image_bytes(
    bytes: &[u8],
    origin: &Path,
    height: u32,
    width: u32,
) -> Result<Array3<f32>> {
    load_image_bytes_with(bytes, origin, height, width, ResizeMethod::Bilinear)
}

/// [`load_image_bytes`] with a chosen [`ResizeMethod`].
pub fn load_image_bytes_with(
    bytes: &[u8],
    origin: &Path,
    height: u32,
    width: u32,
    method: ResizeMethod,
) -> Result<Array3<f32>> {
    check_size(height, width)?;
    let rgb = decode_rgb8(bytes, origin)?;
    Ok(resize_rgb8(&rgb, height, width, method))
}

pub(crate) fn check_size(height: u32, width: u32) -> Result<()> {
    if height == 0 || width == 0 || height > MAX_IMAGE_SIDE || width > MAX_IMAGE_SIDE {
        return Err(DataError::InvalidArgument {
            what: "image size",
            reason: format!("{height}×{width}; height and width must be 1..={MAX_IMAGE_SIDE}"),
        });
    }
    Ok(())
}

/// Converts an 8-bit RGB image to CHW float32 in 0..255 without resizing.
pub fn rgb8_to_chw(rgb: &RgbImage) -> Array3<f32> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let raw = rgb.as_raw();
    Array3::from_shape_fn((3, h, w), |(c, y, x)| f32::from(raw[(y * w + x) * 3 + c]))
}

/// The taps (input index, weight) that make one output sample along one axis.
type Taps = Vec<Vec<(usize, f32)>>;

/// `tf.image.resize` bilinear (half-pixel centres, no antialias) weights for one axis.
fn bilinear_taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|i| {
            let x = (i as f64 + 0.5) * scale - 0.5;
            let floor = x.floor();
            let lerp = (x - floor) as f32;
            let lower = (floor.max(0.0) as usize).min(in_size - 1);
            let upper = (x.ceil().max(0.0) as usize).min(in_size - 1);
            if lower == upper {
                vec![(lower, 1.0)]
            } else {
                vec![(lower, 1.0 - lerp), (upper, lerp)]
            }
        })
        .collect()
}

/// Triangle-filter weights widened by the downscale factor (TF `scale_and_translate`,
/// `antialias=True`), normalised over the taps inside the image.
fn antialias_taps(in_size: usize, out_size: usize) -> Taps {
    let inv_scale = in_size as f64 / out_size as f64;
    let kernel_scale = inv_scale.max(1.0);
    (0..out_size)
        .map(|i| {
            let centre = (i as f64 + 0.5) * inv_scale;
            let first = (centre - kernel_scale - 0.5).ceil().max(0.0) as usize;
            let last = ((centre + kernel_scale - 0.5).floor().max(0.0) as usize).min(in_size - 1);
            let mut taps: Vec<(usize, f64)> = (first..=last)
                .map(|j| {
                    let d = ((j as f64 + 0.5) - centre).abs() / kernel_scale;
                    (j, (1.0 - d).max(0.0))
                })
                .filter(|&(_, w)| w > 0.0)
                .collect();
            let total: f64 = taps.iter().map(|&(_, w)| w).sum();
            if total <= 0.0 {
                let nearest = (centre.floor() as usize).min(in_size - 1);
                taps = vec![(nearest, 1.0)];
            } else {
                taps.iter_mut().for_each(|t| t.1 /= total);
            }
            taps.into_iter().map(|(j, w)| (j, w as f32)).collect()
        })
        .collect()
}

/// Resizes an 8-bit RGB image to `height`×`width` and returns CHW float32 in 0..255.
///
/// The result is not rounded (like `tf.image.resize`, which returns float32).
pub fn resize_rgb8(rgb: &RgbImage, height: u32, width: u32, method: ResizeMethod) -> Array3<f32> {
    let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return Array3::zeros((3, out_h, out_w));
    }
    if in_w == out_w && in_h == out_h {
        return rgb8_to_chw(rgb);
    }
    let taps = |i, o| match method {
        ResizeMethod::Bilinear => bilinear_taps(i, o),
        ResizeMethod::BilinearAntialias => antialias_taps(i, o),
    };
    let x_taps = taps(in_w, out_w);
    let y_taps = taps(in_h, out_h);
    let raw = rgb.as_raw();
    // Horizontal pass: (in_h, out_w, 3), interleaved.
    let mut rows = vec![0f32; in_h * out_w * 3];
    for y in 0..in_h {
        let src = &raw[y * in_w * 3..(y + 1) * in_w * 3];
        let dst = &mut rows[y * out_w * 3..(y + 1) * out_w * 3];
        for (x, tx) in x_taps.iter().enumerate() {
            let mut acc = [0f32; 3];
            for &(j, w) in tx {
                acc[0] += w * f32::from(src[j * 3]);
                acc[1] += w * f32::from(src[j * 3 + 1]);
                acc[2] += w * f32::from(src[j * 3 + 2]);
            }
            dst[x * 3..x * 3 + 3].copy_from_slice(&acc);
        }
    }
    // Vertical pass into CHW.
    let mut out = Array3::<f32>::zeros((3, out_h, out_w));
    let plane = out_h * out_w;
    if let Some(data) = out.as_slice_mut() {
        for (y, ty) in y_taps.iter().enumerate() {
            for x in 0..out_w {
                let mut acc = [0f32; 3];
                for &(j, w) in ty {
                    let base = (j * out_w + x) * 3;
                    acc[0] += w * rows[base];
                    acc[1] += w * rows[base + 1];
                    acc[2] += w * rows[base + 2];
                }
                for (c, value) in acc.iter().enumerate() {
                    data[c * plane + y * out_w + x] = *value;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_completeness_marker_rule() {
        assert!(jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9
        ]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3]));
        // An EOI that belongs to an embedded thumbnail (before the main scan) does not count.
        assert!(!jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xDA, 0xFF, 0xD9, 0xFF, 0xDA, 1
        ]));
    }
}
