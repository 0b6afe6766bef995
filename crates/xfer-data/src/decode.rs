//! Decoding (JPEG, PNG, BMP, GIF, WebP, TIFF → 8-bit RGB) and resizing to CHW float32.
//!
//! Conversions follow what Keras `image_dataset_from_directory` (TensorFlow decoders) does:
//! grayscale is replicated to three channels, palettes are expanded, alpha is dropped
//! (not composited), 16-bit samples keep their high byte (`v >> 8`), GIFs give their
//! first frame, and EXIF orientation is ignored. The format is detected from the bytes,
//! not the file name. Decoding is bounded by [`MAX_IMAGE_SIDE`] and [`MAX_DECODE_BYTES`]
//! so a forged header cannot make the decoder allocate gigabytes.
//!
//! With [`ResizeMethod::BilinearAntialias`], a JPEG much larger than the output is decoded
//! at 1/2 or 1/4 of its size directly in the DCT domain (libjpeg's `scale_denom`,
//! TensorFlow's `decode_jpeg(ratio=…)`), see [`JpegScaling`]; the default
//! [`ResizeMethod::Bilinear`] always decodes the full image.

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
    ///
    /// Deviation from TensorFlow, for speed: with [`JpegScaling::Auto`] (the default) a JPEG
    /// at least 4× the output size in both dimensions is first decoded at 1/2 or 1/4 scale
    /// in the DCT domain (the smallest scale still ≥ 2× the output in each dimension), and
    /// the antialiased resize runs on that; the result differs from resizing the full decode
    /// by about 0.1 grey level on average (a reduced pixel stands for its 2×2 or 4×4 block
    /// rather than a triangle-weighted share of each full pixel; the decoders' rounding
    /// and chroma upsampling differ slightly too).
    /// [`JpegScaling::Full`] restores the exact full-resolution behaviour.
    BilinearAntialias,
}

/// Whether a large JPEG may be decoded at reduced scale before an antialiased resize.
///
/// Only [`ResizeMethod::BilinearAntialias`] uses it: [`ResizeMethod::Bilinear`] reproduces
/// `tf.image.resize` without antialias on the full image, which samples individual pixels,
/// so it always decodes the full resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegScaling {
    /// Decode a JPEG at 1/2 or 1/4 scale in the DCT domain when the resize is
    /// antialiased and the reduced image is still at least twice the output size in each
    /// dimension (scales above 1/2 are not worth it and are not used). Files the scaled
    /// decoder cannot handle (CMYK, lossless, arithmetic coding, odd subsampling, errors)
    /// are decoded in full as before, so their results and error messages do not change.
    #[default]
    Auto,
    /// Always decode the full resolution (the behaviour before DCT scaling; for comparisons
    /// and benchmarks).
    Full,
}

/// What an image is decoded and resized to: the output size, the resize method and
/// whether a large JPEG may be decoded at reduced scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeTarget {
    /// Output height in pixels.
    pub height: u32,
    /// Output width in pixels.
    pub width: u32,
    /// How the image is resized.
    pub method: ResizeMethod,
    /// Whether a JPEG may be decoded at reduced scale first.
    pub scaling: JpegScaling,
}

impl ResizeTarget {
    /// `height`×`width` with `method` and `scaling`.
    pub fn new(height: u32, width: u32, method: ResizeMethod, scaling: JpegScaling) -> Self {
        ResizeTarget {
            height,
            width,
            method,
            scaling,
        }
    }
}

/// An image decoded for a given output size, by [`decode_rgb8_for_resize`].
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The decoded pixels: the full image, or the reduced one when `scale_denom > 1`.
    pub rgb: RgbImage,
    /// The image's own width and height (from its header).
    pub source: (u32, u32),
    /// 1 for a full decode; 2 or 4 when a JPEG was decoded at 1/`scale_denom` scale in
    /// the DCT domain (each side `ceil(side / scale_denom)`).
    pub scale_denom: u32,
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
///
/// Both searches stop early on a well-formed file: the last marker is the EOI at the very end,
/// and the first SOS follows the headers.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xFF, 0xDA];
    const EOI: [u8; 2] = [0xFF, 0xD9];
    let last_marker = bytes.windows(2).rposition(|w| w == SOS || w == EOI);
    let ends_with_eoi = last_marker.is_some_and(|i| bytes[i..i + 2] == EOI);
    ends_with_eoi && bytes.windows(2).any(|w| w == SOS)
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

/// The largest reduction (4, 2; or 1 for none) whose JPEG DCT-scaled decode of a
/// `src_w`×`src_h` image (each side `ceil(side / denom)`) is still at least twice
/// `out_w`×`out_h` in both dimensions.
///
/// 1/8 is deliberately not used: `jpeg-decoder` 0.3.2's 1/8 path (DC only) truncates
/// instead of rounding (`(dc·q + 1024) / 8`), which biases Y, Cb and Cr by −½ each — about
/// −1 grey level in red and blue after colour conversion — and it is no faster than 1/4,
/// since entropy decoding, which no scale avoids, dominates at these sizes.
pub(crate) fn jpeg_scale_denom(src_w: u32, src_h: u32, out_w: u32, out_h: u32) -> u32 {
    let need_w = 2 * u64::from(out_w);
    let need_h = 2 * u64::from(out_h);
    [4u32, 2]
        .into_iter()
        .find(|&d| u64::from(src_w.div_ceil(d)) >= need_w && u64::from(src_h.div_ceil(d)) >= need_h)
        .unwrap_or(1)
}

/// Decodes a complete JPEG at 1/`denom` scale with `jpeg-decoder`, or `None` when it
/// should take the full-decode path instead: the scale would not be ≤ 1/2, the header is
/// beyond the decoder limits (the full path then reports them exactly as before), the
/// file is CMYK, lossless or otherwise unsupported, or decoding fails or panics.
fn try_scaled_jpeg(bytes: &[u8], out_w: u32, out_h: u32) -> Option<DecodedImage> {
    use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};
    let decode = || -> Option<DecodedImage> {
        let mut decoder = Decoder::new(bytes);
        decoder.read_info().ok()?;
        let info = decoder.info()?;
        let (src_w, src_h) = (u32::from(info.width), u32::from(info.height));
        if src_w == 0 || src_h == 0 || src_w > MAX_IMAGE_SIDE || src_h > MAX_IMAGE_SIDE {
            return None;
        }
        let components: u64 = match info.pixel_format {
            PixelFormat::L8 => 1,
            PixelFormat::RGB24 => 3,
            // CMYK goes to the image crate's conversion; 16-bit samples only occur in
            // lossless JPEGs, which have no DCT to scale.
            PixelFormat::CMYK32 | PixelFormat::L16 => return None,
        };
        // What the full decode would be allowed to allocate (the image crate's limit is on
        // the output) — plus, for progressive files, the full-resolution coefficient
        // buffers (i16 per sample) that scaling cannot avoid.
        let coefficient_bytes = match info.coding_process {
            CodingProcess::DctSequential => 0,
            CodingProcess::DctProgressive => 2,
            CodingProcess::Lossless => return None,
        };
        let full_samples = u64::from(src_w) * u64::from(src_h) * components;
        if full_samples.saturating_mul(1 + coefficient_bytes) > MAX_DECODE_BYTES {
            return None;
        }
        let denom = jpeg_scale_denom(src_w, src_h, out_w, out_h);
        if denom < 2 {
            return None;
        }
        let (w, h) = (src_w.div_ceil(denom), src_h.div_ceil(denom));
        decoder.set_max_decoding_buffer_size(usize::try_from(MAX_DECODE_BYTES).ok()?);
        let scaled = decoder
            .scale(u16::try_from(w).ok()?, u16::try_from(h).ok()?)
            .ok()?;
        if (u32::from(scaled.0), u32::from(scaled.1)) != (w, h) {
            return None;
        }
        let pixels = decoder.decode().ok()?;
        let expected = usize::try_from(u64::from(w) * u64::from(h) * components).ok()?;
        if pixels.len() != expected {
            return None;
        }
        let rgb = if components == 1 {
            RgbImage::from_raw(w, h, pixels.iter().flat_map(|&v| [v; 3]).collect())?
        } else {
            RgbImage::from_raw(w, h, pixels)?
        };
        Some(DecodedImage {
            rgb,
            source: (src_w, src_h),
            scale_denom: denom,
        })
    };
    // A decoder bug on hostile input must not take the loader down: fall back instead.
    std::panic::catch_unwind(decode).ok().flatten()
}

/// Decodes image bytes for a resize to `target`: a JPEG may be decoded at reduced scale
/// (see [`JpegScaling`]); everything else is [`decode_rgb8`]. `origin` names the source in
/// errors.
pub fn decode_rgb8_for_resize(
    bytes: &[u8],
    origin: &Path,
    target: ResizeTarget,
) -> Result<DecodedImage> {
    if target.method == ResizeMethod::BilinearAntialias
        && target.scaling == JpegScaling::Auto
        && image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg)
        && jpeg_is_complete(bytes)
        && let Some(decoded) = try_scaled_jpeg(bytes, target.width, target.height)
    {
        return Ok(decoded);
    }
    let rgb = decode_rgb8(bytes, origin)?;
    Ok(DecodedImage {
        source: rgb.dimensions(),
        rgb,
        scale_denom: 1,
    })
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

/// Reads the width and height from an image header without decoding the pixels; a size
/// the decoder would refuse is an error ([`DataError::TooLarge`]).
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
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| decode_error(path, e))?;
    check_decodable_size(path, w, h)?;
    Ok((w, h))
}

/// Refuses a header size the decoder would refuse (a side over [`MAX_IMAGE_SIDE`], or more
/// RGB bytes than [`MAX_DECODE_BYTES`]), so a header-only check flags a decompression bomb
/// (e.g. 100000×100000) as [`DataError::TooLarge`] instead of showing it as a normal size.
fn check_decodable_size(path: &Path, w: u32, h: u32) -> Result<()> {
    let bytes = u64::from(w) * u64::from(h) * 3;
    if w <= MAX_IMAGE_SIDE && h <= MAX_IMAGE_SIDE && bytes <= MAX_DECODE_BYTES {
        return Ok(());
    }
    Err(DataError::TooLarge {
        path: path.to_path_buf(),
        reason: format!("its header says {w}x{h} pixels"),
        max_side: MAX_IMAGE_SIDE,
        max_alloc_mib: MAX_DECODE_BYTES / (1024 * 1024),
    })
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

/// [`load_image_bytes`] with a chosen [`ResizeMethod`] (and [`JpegScaling::Auto`]).
pub fn load_image_bytes_with(
    bytes: &[u8],
    origin: &Path,
    height: u32,
    width: u32,
    method: ResizeMethod,
) -> Result<Array3<f32>> {
    let target = ResizeTarget::new(height, width, method, JpegScaling::Auto);
    load_image_bytes_with_scaling(bytes, origin, target)
}

/// [`load_image_bytes_with`] with a chosen [`JpegScaling`] (any [`ResizeTarget`]).
pub fn load_image_bytes_with_scaling(
    bytes: &[u8],
    origin: &Path,
    target: ResizeTarget,
) -> Result<Array3<f32>> {
    check_size(target.height, target.width)?;
    let decoded = decode_rgb8_for_resize(bytes, origin, target)?;
    Ok(resize_decoded(
        &decoded,
        target.height,
        target.width,
        target.method,
    ))
}

/// Resizes a [`DecodedImage`]; a reduced JPEG decode is mapped onto the output by the
/// source's true extent (`side / scale_denom`, fractional when the side is not a multiple
/// of it: the last reduced pixel is partly the encoder's edge padding), so the output
/// pixel centres land where they would on the full image.
pub fn resize_decoded(
    decoded: &DecodedImage,
    height: u32,
    width: u32,
    method: ResizeMethod,
) -> Array3<f32> {
    if decoded.scale_denom <= 1 {
        return resize_rgb8(&decoded.rgb, height, width, method);
    }
    let denom = f64::from(decoded.scale_denom);
    let extent = (
        f64::from(decoded.source.0) / denom,
        f64::from(decoded.source.1) / denom,
    );
    resize_rgb8_extent(&decoded.rgb, height, width, method, Some(extent))
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

/// `tf.image.resize` bilinear (half-pixel centres, no antialias) weights for one axis;
/// `in_extent` is the input length in pixels the output spans (normally `in_size`).
fn bilinear_taps(in_size: usize, in_extent: f64, out_size: usize) -> Taps {
    let scale = in_extent / out_size as f64;
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
/// `antialias=True`), normalised over the taps inside the image; `in_extent` as in
/// [`bilinear_taps`].
fn antialias_taps(in_size: usize, in_extent: f64, out_size: usize) -> Taps {
    let inv_scale = in_extent / out_size as f64;
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
    resize_rgb8_extent(rgb, height, width, method, None)
}

/// [`resize_rgb8`], the output spanning `extent` = (width, height) input pixels from the
/// top-left corner instead of the whole input (`None`).
fn resize_rgb8_extent(
    rgb: &RgbImage,
    height: u32,
    width: u32,
    method: ResizeMethod,
    extent: Option<(f64, f64)>,
) -> Array3<f32> {
    let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return Array3::zeros((3, out_h, out_w));
    }
    if in_w == out_w && in_h == out_h && extent.is_none() {
        return rgb8_to_chw(rgb);
    }
    let (extent_w, extent_h) = extent.unwrap_or((in_w as f64, in_h as f64));
    let taps = |i, e, o| match method {
        ResizeMethod::Bilinear => bilinear_taps(i, e, o),
        ResizeMethod::BilinearAntialias => antialias_taps(i, e, o),
    };
    let x_taps = taps(in_w, extent_w, out_w);
    let y_taps = taps(in_h, extent_h, out_h);
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

    #[test]
    fn jpeg_scale_keeps_twice_the_output_on_both_axes() {
        // (source w, h, output w, h) → denominator
        for (sw, sh, ow, oh, denom) in [
            (2400, 2400, 300, 300, 4), // 600×600 ≥ 600×600 exactly
            (2399, 2400, 300, 300, 4), // ceil(2399/4) = 600
            (2392, 2400, 300, 300, 2), // ceil(2392/4) = 598 < 600
            (1200, 1200, 300, 300, 2),
            (1199, 1200, 300, 300, 2), // ceil(1199/2) = 600
            (1198, 1200, 300, 300, 1),
            (4000, 3000, 150, 150, 4), // never 8
            // 1/4 = 1000×125 is wide enough but too low (125 < 200); `Decoder::scale`'s own
            // either-axis rule would have accepted it.
            (4000, 500, 300, 100, 2),
            (100, 100, 150, 150, 1),
            (1, 1, 1, 1, 1),
            (u32::MAX, u32::MAX, u32::MAX, u32::MAX, 1),
        ] {
            assert_eq!(
                jpeg_scale_denom(sw, sh, ow, oh),
                denom,
                "{sw}×{sh} → {ow}×{oh}"
            );
        }
    }
}
