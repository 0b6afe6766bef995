//! Fixture generation shared by the integration tests.
#![allow(dead_code, missing_docs)]

use std::io::Cursor;
use std::path::Path;

use image::{ImageEncoder, ImageFormat, RgbImage};

/// A deterministic, colourful test picture.
pub fn test_image(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            ((x * 255) / width.max(2).saturating_sub(1).max(1)) as u8,
            ((y * 255) / height.max(2).saturating_sub(1).max(1)) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}

/// A pseudo-random picture (xorshift), to make resizing errors visible.
pub fn noise_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    RgbImage::from_fn(width, height, |_, _| {
        let mut px = [0u8; 3];
        for p in &mut px {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *p = (state >> 24) as u8;
        }
        image::Rgb(px)
    })
}

/// A smooth, photo-like picture: colour gradients, a disc, a rectangle, a sine band and
/// mild noise (±4). Coordinates are relative, so every size shows the same scene.
pub fn photo_like(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9) | 1;
    RgbImage::from_fn(width, height, |x, y| {
        let u = x as f32 / width as f32;
        let v = y as f32 / height as f32;
        let mut px = [40.0 + 150.0 * u, 60.0 + 120.0 * v, 200.0 - 120.0 * u * v];
        let d = ((u - 0.35).powi(2) + (v - 0.45).powi(2)).sqrt();
        if d < 0.2 {
            px = [220.0 - 200.0 * d, 80.0, 50.0 + 300.0 * d];
        }
        if (0.6..0.85).contains(&u) && (0.15..0.5).contains(&v) {
            px = [30.0, 170.0 + 40.0 * v, 90.0];
        }
        if v > 0.7 {
            px[2] = 100.0 + 60.0 * (u * 18.0 + v * 7.0).sin();
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 9) as f32 - 4.0;
        image::Rgb(px.map(|c| (c + n).clamp(0.0, 255.0) as u8))
    })
}

/// A JPEG of `pixels` (`color` Rgb8 or L8) at `quality`.
pub fn jpeg_with(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
    quality: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(pixels, width, height, color)
        .expect("encode jpeg");
    out
}

/// Encodes a dynamic image in `format`.
pub fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode fixture");
    out
}

/// A JPEG (quality 95) of `image`.
pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode jpeg");
    out
}

/// A PNG of `image`.
pub fn png(image: &RgbImage) -> Vec<u8> {
    encode(
        &image::DynamicImage::ImageRgb8(image.clone()),
        ImageFormat::Png,
    )
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create fixture dir");
    }
    std::fs::write(path, bytes).expect("write fixture");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A hand-built PNG: IHDR with the given fields, optional PLTE, IDAT of `scanlines`
/// (already with filter bytes) in stored deflate blocks, IEND.
pub fn raw_png(
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
    palette: Option<&[u8]>,
    scanlines: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    if let Some(palette) = palette {
        chunk(&mut out, b"PLTE", palette);
    }
    if let Some(raw) = scanlines {
        let mut z = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, block) in blocks.iter().enumerate() {
            z.push(u8::from(i + 1 == blocks.len()));
            let len = block.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(block);
        }
        z.extend_from_slice(&adler32(raw).to_be_bytes());
        chunk(&mut out, b"IDAT", &z);
    }
    chunk(&mut out, b"IEND", &[]);
    out
}
