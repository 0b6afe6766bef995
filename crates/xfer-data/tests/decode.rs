//! Decoder paths, bad inputs, and resizing against independent references.

mod common;

use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use ndarray::Array3;
use xfer_data::{
    DataError, ResizeMethod, decode_rgb8, load_image, load_image_bytes, resize_rgb8, rgb8_to_chw,
};

fn origin() -> &'static Path {
    Path::new("fixture")
}

fn assert_same_rgb(actual: &RgbImage, expected: &RgbImage) {
    assert_eq!(actual.dimensions(), expected.dimensions());
    assert_eq!(actual.as_raw(), expected.as_raw());
}

#[test]
fn png_rgb8_round_trips_exactly() {
    let img = common::test_image(17, 9);
    let decoded = decode_rgb8(&common::png(&img), origin()).expect("decode png");
    assert_same_rgb(&decoded, &img);
}

#[test]
fn png_16bit_keeps_the_high_byte_like_tensorflow() {
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(5, 4, |x, y| {
        Rgb([
            (x * 13000) as u16,
            (y * 20000 + 1) as u16,
            65535 - (x * y * 1000) as u16,
        ])
    });
    let bytes = common::encode(&DynamicImage::ImageRgb16(img.clone()), ImageFormat::Png);
    let decoded = decode_rgb8(&bytes, origin()).expect("decode 16-bit png");
    for (x, y, px) in decoded.enumerate_pixels() {
        let src = img.get_pixel(x, y);
        for c in 0..3 {
            // TF's decode_png strips the low byte (png_set_strip_16): floor(v / 256).
            let expected = (u32::from(src[c]) / 256) as u8;
            assert_eq!(px[c], expected, "pixel ({x},{y}) channel {c}");
        }
    }
}

#[test]
fn png_16bit_gray_with_alpha_keeps_the_high_byte() {
    let img: ImageBuffer<LumaA<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 2, |x, y| LumaA([(x * 20000 + y * 300) as u16, 1234]));
    let bytes = common::encode(&DynamicImage::ImageLumaA16(img.clone()), ImageFormat::Png);
    let decoded = decode_rgb8(&bytes, origin()).expect("decode 16-bit gray+alpha");
    for (x, y, px) in decoded.enumerate_pixels() {
        let v = (u32::from(img.get_pixel(x, y)[0]) / 256) as u8;
        assert_eq!(px.0, [v, v, v]);
    }
}

#[test]
fn png_gray_and_gray_alpha_are_replicated() {
    let gray: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(6, 3, |x, y| Luma([(x * 40 + y) as u8]));
    let decoded = decode_rgb8(
        &common::encode(&DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png),
        origin(),
    )
    .expect("decode gray png");
    for (x, y, px) in decoded.enumerate_pixels() {
        let v = gray.get_pixel(x, y)[0];
        assert_eq!(px.0, [v, v, v]);
    }
    let gray_alpha: ImageBuffer<LumaA<u8>, Vec<u8>> =
        ImageBuffer::from_fn(6, 3, |x, y| LumaA([(x * 40 + y) as u8, (y * 100) as u8]));
    let decoded = decode_rgb8(
        &common::encode(
            &DynamicImage::ImageLumaA8(gray_alpha.clone()),
            ImageFormat::Png,
        ),
        origin(),
    )
    .expect("decode gray+alpha png");
    for (x, y, px) in decoded.enumerate_pixels() {
        let v = gray_alpha.get_pixel(x, y)[0];
        assert_eq!(px.0, [v, v, v], "alpha must be dropped, not composited");
    }
}

#[test]
fn png_alpha_is_dropped() {
    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(4, 4, |x, y| {
        Rgba([(x * 60) as u8, (y * 60) as u8, 200, (x * 80) as u8])
    });
    let decoded = decode_rgb8(
        &common::encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png),
        origin(),
    )
    .expect("decode rgba");
    for (x, y, px) in decoded.enumerate_pixels() {
        let src = rgba.get_pixel(x, y);
        assert_eq!(px.0, [src[0], src[1], src[2]]);
    }
}

#[test]
fn png_palette_is_expanded() {
    // 2-bit palette image, 3×2 pixels, built byte by byte.
    let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
    // Each row: filter byte 0, then 3 pixels × 2 bits packed MSB first.
    let row0 = 0b00_01_10_00u8; // indices 0,1,2
    let row1 = 0b11_00_11_00u8; // indices 3,0,3
    let bytes = common::raw_png(3, 2, 2, 3, Some(&palette), Some(&[0, row0, 0, row1]));
    let decoded = decode_rgb8(&bytes, origin()).expect("decode palette png");
    let colour = |i: usize| [palette[i * 3], palette[i * 3 + 1], palette[i * 3 + 2]];
    let expected = [[0, 1, 2], [3, 0, 3]];
    for (y, row) in expected.iter().enumerate() {
        for (x, &index) in row.iter().enumerate() {
            assert_eq!(
                decoded.get_pixel(x as u32, y as u32).0,
                colour(index),
                "pixel ({x},{y})"
            );
        }
    }
}

#[test]
fn jpeg_decodes_close_to_source() {
    let img = common::test_image(64, 48);
    let decoded = decode_rgb8(&common::jpeg(&img), origin()).expect("decode jpeg");
    assert_eq!(decoded.dimensions(), (64, 48));
    let total: f64 = decoded
        .as_raw()
        .iter()
        .zip(img.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum();
    let mean = total / img.as_raw().len() as f64;
    assert!(mean < 4.0, "mean abs JPEG error {mean}");
}

#[test]
fn grayscale_jpeg_becomes_rgb() {
    let gray: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(16, 16, |x, _| Luma([(x * 16) as u8]));
    let bytes = common::encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Jpeg);
    let decoded = decode_rgb8(&bytes, origin()).expect("decode gray jpeg");
    for px in decoded.pixels() {
        assert_eq!(px[0], px[1]);
        assert_eq!(px[1], px[2]);
    }
}

#[test]
fn bmp_tiff_webp_round_trip_exactly() {
    let img = common::test_image(13, 11);
    let dynamic = DynamicImage::ImageRgb8(img.clone());
    for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::WebP] {
        let bytes = common::encode(&dynamic, format);
        let decoded =
            decode_rgb8(&bytes, origin()).unwrap_or_else(|e| panic!("decode {format:?}: {e}"));
        assert_same_rgb(&decoded, &img);
    }
}

#[test]
fn gif_gives_its_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, RgbaImage};
    let first = RgbaImage::from_fn(8, 6, |x, _| {
        if x < 4 {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 255, 255])
        }
    });
    let second = RgbaImage::from_pixel(8, 6, Rgba([0, 255, 0, 255]));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .encode_frames([
                Frame::from_parts(first, 0, 0, Delay::from_numer_denom_ms(100, 1)),
                Frame::from_parts(second, 0, 0, Delay::from_numer_denom_ms(100, 1)),
            ])
            .expect("encode gif");
    }
    let decoded = decode_rgb8(&bytes, origin()).expect("decode gif");
    assert_eq!(decoded.dimensions(), (8, 6));
    for (x, _, px) in decoded.enumerate_pixels() {
        let expected = if x < 4 { [255, 0, 0] } else { [0, 0, 255] };
        assert_eq!(px.0, expected);
    }
}

// ---- bad input ----

#[test]
fn zero_byte_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.jpg");
    common::write(&path, b"");
    let err = load_image(&path, 8, 8).expect_err("empty file must fail");
    assert!(matches!(err, DataError::EmptyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.jpg"), "{err}");
}

#[test]
fn truncated_jpeg_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = common::jpeg(&common::noise_image(64, 64, 3));
    let path = dir.path().join("cut.jpg");
    common::write(&path, &full[..full.len() * 6 / 10]);
    let err = load_image(&path, 8, 8).expect_err("truncated jpeg must fail");
    assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cut.jpg") && err.to_string().contains("truncated"),
        "{err}"
    );
    // The untruncated file decodes.
    common::write(&path, &full);
    load_image(&path, 8, 8).expect("full jpeg decodes");
}

#[test]
fn text_named_jpg_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.jpg");
    common::write(&path, b"this is not a picture\n");
    let err = load_image(&path, 8, 8).expect_err("text must fail");
    assert!(
        matches!(err, DataError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("notes.jpg"), "{err}");
}

#[test]
fn huge_png_header_hits_decoder_limits() {
    // A PNG whose header claims 100000×100000 RGB pixels (30 GB) and has no pixel data.
    let bytes = common::raw_png(100_000, 100_000, 8, 2, None, None);
    let err = load_image_bytes(&bytes, Path::new("bomb.png"), 8, 8).expect_err("bomb must fail");
    assert!(matches!(err, DataError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("bomb.png"), "{err}");
}

#[test]
fn huge_jpeg_header_hits_decoder_limits() {
    // A valid JPEG whose SOF0 frame header is patched to claim 60000×60000 pixels.
    let mut bytes = common::jpeg(&common::test_image(16, 16));
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    // FF C0, length (2), precision (1), height (2), width (2)
    bytes[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let err = load_image_bytes(&bytes, Path::new("bomb.jpg"), 8, 8).expect_err("bomb must fail");
    assert!(matches!(err, DataError::TooLarge { .. }), "{err:?}");
}

#[cfg(unix)]
#[test]
fn unreadable_permissions_are_reported_or_honestly_readable_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.png");
    common::write(&path, &common::png(&common::test_image(4, 4)));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let can_read_anyway = std::fs::File::open(&path).is_ok(); // true for root (CAP_DAC_OVERRIDE)
    let result = load_image(&path, 4, 4);
    if can_read_anyway {
        eprintln!(
            "running with permission override (root): a mode-000 file is readable, so it must load"
        );
        result.expect("readable file loads");
    } else {
        let err = result.expect_err("unreadable file must fail");
        assert_eq!(err.kind(), "permission denied", "{err:?}");
        assert!(err.to_string().contains("locked.png"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn symlink_loop_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("loop.jpg");
    std::os::unix::fs::symlink(&path, &path).expect("create self-referencing symlink");
    let err = load_image(&path, 4, 4).expect_err("symlink loop must fail");
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("loop.jpg"), "{err}");
}

// ---- resizing ----

/// Independent float64 `tf.image.resize` bilinear (half-pixel centres): per output pixel,
/// the four neighbours with clamped indices.
fn reference_bilinear(img: &RgbImage, out_h: usize, out_w: usize) -> Array3<f64> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (sy, sx) = (in_h as f64 / out_h as f64, in_w as f64 / out_w as f64);
    Array3::from_shape_fn((3, out_h, out_w), |(c, y, x)| {
        let fy = (y as f64 + 0.5) * sy - 0.5;
        let fx = (x as f64 + 0.5) * sx - 0.5;
        let (y0, x0) = (fy.floor(), fx.floor());
        let (ly, lx) = (fy - y0, fx - x0);
        let clamp_y = |v: f64| v.max(0.0).min(in_h as f64 - 1.0) as u32;
        let clamp_x = |v: f64| v.max(0.0).min(in_w as f64 - 1.0) as u32;
        let p = |yy: f64, xx: f64| f64::from(img.get_pixel(clamp_x(xx), clamp_y(yy))[c]);
        let top = p(y0, x0) * (1.0 - lx) + p(y0, x0 + 1.0) * lx;
        let bottom = p(y0 + 1.0, x0) * (1.0 - lx) + p(y0 + 1.0, x0 + 1.0) * lx;
        top * (1.0 - ly) + bottom * ly
    })
}

fn max_abs_diff(a: &Array3<f32>, b: &Array3<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn bilinear_2x2_to_4x4_matches_hand_derived_values() {
    // Input (one channel shown; all channels equal): [[0, 100], [200, 40]].
    // Half-pixel centres: output column i samples x = (i + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75,
    // 1.25 → weights (1,0), (.75,.25), (.25,.75), (0,1) after clamping; same for rows.
    let img = RgbImage::from_fn(2, 2, |x, y| {
        let v = [[0u8, 100], [200, 40]][y as usize][x as usize];
        Rgb([v, v, v])
    });
    let out = resize_rgb8(&img, 4, 4, ResizeMethod::Bilinear);
    let expected = [
        [0.0, 25.0, 75.0, 100.0],
        [50.0, 58.75, 76.25, 85.0],
        [150.0, 126.25, 78.75, 55.0],
        [200.0, 160.0, 80.0, 40.0],
    ];
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..4 {
                assert!(
                    (out[[c, y, x]] - expected[y][x]).abs() < 1e-4,
                    "({c},{y},{x}) = {}",
                    out[[c, y, x]]
                );
            }
        }
    }
}

#[test]
fn bilinear_matches_float64_reference_up_and_down() {
    for (w, h, out_h, out_w) in [
        (37, 23, 150, 150),
        (300, 211, 150, 150),
        (32, 32, 150, 150),
        (50, 60, 7, 13),
    ] {
        let img = common::noise_image(w, h, u64::from(w * h));
        let out = resize_rgb8(&img, out_h, out_w, ResizeMethod::Bilinear);
        let reference = reference_bilinear(&img, out_h as usize, out_w as usize);
        let diff = max_abs_diff(&out, &reference);
        assert!(diff < 2e-3, "{w}×{h} → {out_w}×{out_h}: max diff {diff}");
    }
}

#[test]
fn same_size_is_identity_and_values_stay_in_range() {
    let img = common::noise_image(20, 10, 7);
    let out = resize_rgb8(&img, 10, 20, ResizeMethod::Bilinear);
    assert_eq!(out, rgb8_to_chw(&img));
    assert_eq!(out[[1, 3, 5]], f32::from(img.get_pixel(5, 3)[1]));
    let up = resize_rgb8(&img, 150, 150, ResizeMethod::BilinearAntialias);
    assert!(up.iter().all(|v| (0.0..=255.0).contains(v)));
}

#[test]
fn antialias_downscale_by_two_uses_widened_triangle() {
    // One row [0,0,0,80,0,0,0,0] → 4 columns. Kernel widened ×2: output i is centred at
    // 2i+1; taps at distances 1.5, 0.5, 0.5, 1.5 weigh 1/8, 3/8, 3/8, 1/8 (hand-derived;
    // at the left edge the out-of-image tap is dropped and the rest renormalised).
    let img = RgbImage::from_fn(8, 1, |x, _| {
        if x == 3 {
            Rgb([80, 80, 80])
        } else {
            Rgb([0, 0, 0])
        }
    });
    let out = resize_rgb8(&img, 1, 4, ResizeMethod::BilinearAntialias);
    let expected = [0.0, 30.0, 10.0, 0.0];
    for (x, e) in expected.iter().enumerate() {
        assert!(
            (out[[0, 0, x]] - e).abs() < 1e-4,
            "column {x}: {}",
            out[[0, 0, x]]
        );
    }
    // Plain bilinear samples only the two nearest pixels: column 1 sits at x=2.5 → 40.
    let plain = resize_rgb8(&img, 1, 4, ResizeMethod::Bilinear);
    assert!((plain[[0, 0, 1]] - 40.0).abs() < 1e-4);
    // Upscaling: the antialiased filter equals bilinear.
    let small = common::noise_image(9, 7, 1);
    let a = resize_rgb8(&small, 40, 30, ResizeMethod::BilinearAntialias);
    let b = resize_rgb8(&small, 40, 30, ResizeMethod::Bilinear);
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "upscale differs by {diff}");
}

#[test]
fn load_image_is_chw_0_to_255() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.png");
    let img = common::test_image(32, 32);
    common::write(&path, &common::png(&img));
    let out = load_image(&path, 150, 120).expect("load");
    assert_eq!(out.dim(), (3, 150, 120));
    let reference = reference_bilinear(&img, 150, 120);
    assert!(max_abs_diff(&out, &reference) < 2e-3);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(
        load_image_bytes(&bytes, &path, 150, 120).expect("load bytes"),
        out
    );
    let err = load_image(&path, 0, 10).expect_err("zero size");
    assert!(matches!(err, DataError::InvalidArgument { .. }));
}

/// Issue 18 item 12: `data info` without `--decode` reads headers only; a header the decoder
/// would refuse (100000×100000) is flagged as too large, not shown as a normal size.
#[test]
fn a_bomb_header_is_too_large_for_the_header_only_check_and_data_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let class = dir.path().join("cat");
    std::fs::create_dir_all(&class).expect("class dir");
    let bomb = class.join("bomb.png");
    // A header and the start of its pixel data (the PNG decoder reads up to the first IDAT).
    let start = [0u8; 64];
    common::write(
        &bomb,
        &common::raw_png(100_000, 100_000, 8, 2, None, Some(&start)),
    );
    let normal = class.join("fine.png");
    common::write(
        &normal,
        &common::raw_png(40, 30, 8, 2, None, Some(&[0u8; 40 * 30 * 3 + 30])),
    );
    let err = xfer_data::image_dimensions(&bomb).expect_err("bomb header");
    assert!(matches!(err, DataError::TooLarge { .. }), "{err:?}");
    assert_eq!(
        xfer_data::image_dimensions(&normal).expect("normal"),
        (40, 30)
    );

    let dataset = xfer_data::Dataset::open(dir.path()).expect("dataset");
    let info = xfer_data::dataset_info(&dataset, &[], 1, false).expect("info");
    assert!(
        !info.size_histogram.contains_key(&(100_000, 100_000)),
        "{:?}",
        info.size_histogram
    );
    assert_eq!(info.unreadable.len(), 1, "{:?}", info.unreadable);
    assert_eq!(info.unreadable[0].kind, "exceeds decoder limits");
}
