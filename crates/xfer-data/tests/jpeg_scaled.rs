//! DCT-domain scaled JPEG decoding for the antialiased resize: when it is used, how close
//! it stays to resizing the full decode, and that bad files behave exactly as before.

mod common;

use std::path::Path;

use image::{ExtendedColorType, RgbImage};
use ndarray::Array3;
use xfer_data::{
    DataError, DecodedImage, Example, JpegScaling, LoaderConfig, ResizeMethod, ResizeTarget,
    decode_rgb8, decode_rgb8_for_resize, load_batch, load_image_bytes, load_image_bytes_with,
    load_image_bytes_with_scaling, resize_decoded, resize_rgb8,
};

const AA: ResizeMethod = ResizeMethod::BilinearAntialias;

/// Bounds on |scaled decode + antialias − full decode + antialias| over all output samples
/// (0..255 scale). Measured on the fixtures below: mean ≤ 0.15, 99th percentile ≤ 0.89.
const MAX_MEAN_DIFF: f64 = 0.5;
const MAX_P99_DIFF: f64 = 2.0;

fn origin() -> &'static Path {
    Path::new("photo.jpg")
}

fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = common::photo_like(width, height, 7);
    common::jpeg_with(img.as_raw(), width, height, ExtendedColorType::Rgb8, 90)
}

fn decode_for(bytes: &[u8], h: u32, w: u32, method: ResizeMethod) -> DecodedImage {
    decode_rgb8_for_resize(
        bytes,
        origin(),
        ResizeTarget::new(h, w, method, JpegScaling::Auto),
    )
    .expect("decode")
}

/// (mean, 99th percentile) of the absolute differences.
fn diff_stats(a: &Array3<f32>, b: &Array3<f32>) -> (f64, f64) {
    assert_eq!(a.dim(), b.dim());
    let mut d: Vec<f64> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from((x - y).abs()))
        .collect();
    d.sort_by(f64::total_cmp);
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    (mean, d[d.len() * 99 / 100])
}

fn within_bounds((mean, p99): (f64, f64)) -> bool {
    mean <= MAX_MEAN_DIFF && p99 <= MAX_P99_DIFF
}

#[test]
fn scale_is_the_smallest_that_keeps_twice_the_output_in_both_dimensions() {
    let big = photo_jpeg(1600, 1200);
    // (height, width) → expected denominator and decoded (width, height).
    for (h, w, denom, dims) in [
        (150, 150, 4, (400, 300)),   // 1/4 = 400×300 ≥ 300×300
        (300, 300, 2, (800, 600)),   // 1/4 too small, 1/2 = 800×600 ≥ 600×600
        (160, 224, 2, (800, 600)),   // 1/4 = 400 < 448 wide
        (100, 500, 1, (1600, 1200)), // needs 1000 wide: 1/2 = 800 is too small on that axis
        (600, 800, 1, (1600, 1200)), // near the image size: no reduction worth it
    ] {
        let d = decode_for(&big, h, w, AA);
        assert_eq!(d.scale_denom, denom, "{w}×{h}");
        assert_eq!(d.rgb.dimensions(), dims, "{w}×{h}");
        assert_eq!(d.source, (1600, 1200));
    }
    // Odd size: 1/4 would be 301×200 (< 300 high); 1/2 is ceil(1203/2)×ceil(797/2).
    let odd = photo_jpeg(1203, 797);
    let d = decode_for(&odd, 150, 150, AA);
    assert_eq!((d.scale_denom, d.rgb.dimensions()), (2, (602, 399)));
    // 1/8 is never used (jpeg-decoder's 1/8 path truncates instead of rounding).
    let huge = photo_jpeg(4000, 3000);
    let d = decode_for(&huge, 150, 150, AA);
    assert_eq!((d.scale_denom, d.rgb.dimensions()), (4, (1000, 750)));
}

#[test]
fn bilinear_full_scaling_and_non_jpegs_decode_the_full_image_bit_exactly() {
    let bytes = photo_jpeg(1600, 1200);
    let full = decode_rgb8(&bytes, origin()).expect("full decode");
    let bilinear = decode_for(&bytes, 150, 150, ResizeMethod::Bilinear);
    assert_eq!(bilinear.scale_denom, 1);
    assert_eq!(bilinear.rgb.as_raw(), full.as_raw());
    let forced = decode_rgb8_for_resize(
        &bytes,
        origin(),
        ResizeTarget::new(150, 150, AA, JpegScaling::Full),
    )
    .expect("full");
    assert_eq!(forced.scale_denom, 1);
    assert_eq!(forced.rgb.as_raw(), full.as_raw());
    let near = decode_for(&bytes, 600, 800, AA);
    assert_eq!(near.rgb.as_raw(), full.as_raw());
    // The default (bilinear) load is exactly resize(full decode), as before.
    let reference = resize_rgb8(&full, 150, 150, ResizeMethod::Bilinear);
    assert_eq!(
        load_image_bytes(&bytes, origin(), 150, 150).expect("load"),
        reference
    );
    assert_eq!(
        load_image_bytes_with(&bytes, origin(), 150, 150, ResizeMethod::Bilinear).expect("load"),
        reference
    );
    // A large PNG takes the full path with antialias too.
    let png = common::png(&common::photo_like(1200, 900, 1));
    let d = decode_for(&png, 150, 150, AA);
    assert_eq!((d.scale_denom, d.rgb.dimensions()), (1, (1200, 900)));
}

#[test]
fn scaled_antialias_stays_close_to_full_decode_antialias_and_wrong_variants_do_not() {
    for (w, h, out_h, out_w, denom) in [
        (1600, 1200, 150, 150, 4),
        (1203, 797, 150, 150, 2),
        (1203, 797, 160, 224, 2),
    ] {
        let bytes = photo_jpeg(w, h);
        let full = load_image_bytes_with_scaling(
            &bytes,
            origin(),
            ResizeTarget::new(out_h, out_w, AA, JpegScaling::Full),
        )
        .expect("full decode + antialias");
        let d = decode_for(&bytes, out_h, out_w, AA);
        assert_eq!(d.scale_denom, denom, "{w}×{h}");
        let scaled = resize_decoded(&d, out_h, out_w, AA);
        assert_eq!(
            load_image_bytes_with(&bytes, origin(), out_h, out_w, AA).expect("load"),
            scaled
        );
        let stats = diff_stats(&scaled, &full);
        eprintln!("{w}×{h} → {out_w}×{out_h} (1/{denom}): mean, p99 = {stats:?}");
        assert!(within_bounds(stats), "{w}×{h} → {out_w}×{out_h}: {stats:?}");

        // Deliberately wrong uses of the reduced image must fail the same bounds.
        let (dw, dh) = d.rgb.dimensions();
        let with_rgb = |rgb: RgbImage| DecodedImage { rgb, ..d.clone() };
        let mut swapped = d.rgb.clone();
        swapped.pixels_mut().for_each(|p| p.0.swap(0, 2));
        let shifted = RgbImage::from_fn(dw, dh, |x, y| *d.rgb.get_pixel((x + 1).min(dw - 1), y));
        let transposed = RgbImage::from_fn(dh, dw, |x, y| *d.rgb.get_pixel(y, x));
        let quarter =
            image::imageops::crop_imm(&d.rgb, 0, 0, dw.div_ceil(2), dh.div_ceil(2)).to_image();
        let mut wrong = vec![
            (
                "R/B swapped",
                resize_decoded(&with_rgb(swapped), out_h, out_w, AA),
            ),
            (
                "shifted one reduced pixel",
                resize_decoded(&with_rgb(shifted), out_h, out_w, AA),
            ),
            ("transposed", resize_rgb8(&transposed, out_h, out_w, AA)),
            (
                "scale off by 2 (top-left quarter)",
                resize_rgb8(&quarter, out_h, out_w, AA),
            ),
        ];
        if w % denom != 0 || h % denom != 0 {
            // Mapping the padded reduced image as if it were the whole picture.
            wrong.push(("padded extent", resize_rgb8(&d.rgb, out_h, out_w, AA)));
        }
        for (name, out) in wrong {
            let stats = diff_stats(&out, &full);
            eprintln!("  wrong: {name}: mean, p99 = {stats:?}");
            assert!(!within_bounds(stats), "{name} passed the bounds: {stats:?}");
        }
    }
}

#[test]
fn grayscale_jpeg_scaled_is_replicated_gray() {
    let (w, h) = (1600, 1200);
    let gray: Vec<u8> = common::photo_like(w, h, 3)
        .pixels()
        .map(|p| ((u32::from(p[0]) * 3 + u32::from(p[1]) * 4 + u32::from(p[2])) / 8) as u8)
        .collect();
    let bytes = common::jpeg_with(&gray, w, h, ExtendedColorType::L8, 90);
    let d = decode_for(&bytes, 150, 150, AA);
    assert_eq!((d.scale_denom, d.rgb.dimensions()), (4, (400, 300)));
    assert!(d.rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // Each reduced pixel is its 4×4 block of the full decode, up to rounding.
    let full = decode_rgb8(&bytes, origin()).expect("full decode");
    assert!(full.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    let mut total = 0.0;
    for (x, y, p) in d.rgb.enumerate_pixels() {
        let block: f64 = (0..16)
            .map(|i| f64::from(full.get_pixel(x * 4 + i % 4, y * 4 + i / 4)[0]))
            .sum();
        total += (f64::from(p[0]) - block / 16.0).abs();
    }
    let mean_block_diff = total / f64::from(400 * 300);
    eprintln!("gray: mean |reduced − 4×4 block mean| = {mean_block_diff}");
    assert!(
        mean_block_diff < 1.0,
        "mean |reduced − block mean| = {mean_block_diff}"
    );
    let scaled = resize_decoded(&d, 150, 150, AA);
    let reference = resize_rgb8(&full, 150, 150, AA);
    let stats = diff_stats(&scaled, &reference);
    eprintln!("gray 1600×1200 → 150×150 (1/4): mean, p99 = {stats:?}");
    assert!(within_bounds(stats), "{stats:?}");
}

fn error_text(bytes: &[u8], path: &str, method: ResizeMethod, scaling: JpegScaling) -> String {
    let err = load_image_bytes_with_scaling(
        bytes,
        Path::new(path),
        ResizeTarget::new(150, 150, method, scaling),
    )
    .expect_err("must fail");
    format!("{}: {err}", err.kind())
}

/// The same outcome, success or the same error, as the unchanged full-decode path.
fn assert_same_outcome_as_before(bytes: &[u8], path: &str) -> Option<String> {
    let before = load_image_bytes_with_scaling(
        bytes,
        Path::new(path),
        ResizeTarget::new(150, 150, AA, JpegScaling::Full),
    );
    let now = load_image_bytes_with(bytes, Path::new(path), 150, 150, AA);
    match (before, now) {
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(a.kind(), b.kind());
            Some(format!("{}: {a}", a.kind()))
        }
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{path}: a fallback must give the full-decode result");
            None
        }
        (a, b) => panic!("{path}: outcome changed: before {a:?}, now {b:?}"),
    }
}

#[test]
fn truncated_and_forged_jpegs_fail_as_before_with_antialias() {
    let full = photo_jpeg(1600, 1200);
    let cut = &full[..full.len() * 6 / 10];
    let expected = error_text(cut, "cut.jpg", ResizeMethod::Bilinear, JpegScaling::Auto);
    assert!(
        expected.contains("cut.jpg") && expected.contains("truncated"),
        "{expected}"
    );
    assert_eq!(error_text(cut, "cut.jpg", AA, JpegScaling::Auto), expected);
    assert_eq!(
        assert_same_outcome_as_before(cut, "cut.jpg"),
        Some(expected)
    );

    // Frame headers claiming 60000×60000 (over MAX_IMAGE_SIDE) and 16000×16000 (within it,
    // but 768 MB of RGB, over MAX_DECODE_BYTES): refused before any pixel is decoded.
    let sof = full
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    for side in [60000u16, 16000] {
        let mut bomb = full.clone();
        bomb[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
        bomb[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
        let expected = error_text(&bomb, "bomb.jpg", ResizeMethod::Bilinear, JpegScaling::Auto);
        let err = load_image_bytes_with(&bomb, Path::new("bomb.jpg"), 150, 150, AA)
            .expect_err("bomb must fail");
        assert!(matches!(err, DataError::TooLarge { .. }), "{side}: {err:?}");
        assert_eq!(format!("{}: {err}", err.kind()), expected, "{side}");
        assert!(expected.contains("bomb.jpg"), "{expected}");
    }
}

#[test]
fn jpegs_the_scaled_decoder_does_not_take_fall_back_unchanged() {
    let full = photo_jpeg(1600, 1200);
    let sof = full
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    // Lossless (SOF3) and arithmetic-coded (SOF9) frame types: not DCT-scalable or not
    // supported by jpeg-decoder; whatever the image crate says, it says it as before.
    for (marker, name) in [(0xC3u8, "lossless.jpg"), (0xC9, "arithmetic.jpg")] {
        let mut bytes = full.clone();
        bytes[sof + 1] = marker;
        let outcome = assert_same_outcome_as_before(&bytes, name);
        eprintln!("{name}: {outcome:?}");
    }
    // Garbage in the entropy-coded data (end marker intact): jpeg-decoder rejects it, the
    // image crate decodes it as before.
    let mut garbled = full.clone();
    let middle = garbled.len() / 2;
    garbled[middle..middle + 64].fill(0xFF);
    let outcome = assert_same_outcome_as_before(&garbled, "garbled.jpg");
    eprintln!("garbled.jpg: {outcome:?}");
}

#[test]
fn loader_uses_scaled_decoding_for_antialias_unless_told_not_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.jpg");
    let bytes = photo_jpeg(1600, 1200);
    common::write(&path, &bytes);
    let examples = vec![Example {
        id: "big.jpg".into(),
        path: path.clone(),
        label: 0,
    }];
    for scaling in [JpegScaling::Auto, JpegScaling::Full] {
        let mut config = LoaderConfig::new(150, 150, 4);
        config.resize = AA;
        config.jpeg_scaling = scaling;
        let batch = load_batch(&examples, &config).expect("load batch");
        let expected =
            load_image_bytes_with_scaling(&bytes, &path, ResizeTarget::new(150, 150, AA, scaling))
                .expect("load image");
        assert_eq!(batch.pixels.index_axis(ndarray::Axis(0), 0), expected);
    }
    assert_eq!(LoaderConfig::new(1, 1, 1).jpeg_scaling, JpegScaling::Auto);
}
