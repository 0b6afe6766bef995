//! Keras-faithful, seeded augmentation: `RandomFlip("horizontal")` and `RandomRotation`.
//!
//! Semantics (Keras 3 `RandomFlip` / `RandomRotation`, TensorFlow backend, which applies
//! `ImageProjectiveTransformV3`):
//!
//! * the flip mirrors the width axis with probability 1/2;
//! * the rotation angle is drawn uniformly from `[-factor·2π, +factor·2π]`; a positive
//!   angle turns the picture counter-clockwise as displayed;
//! * each output pixel `(x, y)` samples the input at the rotated position with bilinear
//!   interpolation; positions outside the image are mapped by the fill mode:
//!   - `Reflect` (Keras's default): `d c b a | a b c d | d c b a`, i.e. reflection about
//!     the outer edge of the border pixel (the edge pixel is repeated),
//!   - `Nearest`: `a a a a | a b c d | d d d d`,
//!   - `Constant(v)`: `v v v v | a b c d | v v v v` (taps outside the image read `v`,
//!     so the border blends into `v`).
//!
//! Deviations from Keras, on purpose:
//! * Randomness: Keras draws from its backend RNG, so its exact draws cannot be reproduced
//!   outside it. Here each image gets its own generator derived from
//!   `blake3("xfer-augment" ‖ seed ‖ epoch ‖ example key)`, so a batch is reproducible
//!   for a (seed, epoch) and independent of batch composition and thread count.
//! * Centre: the rotation turns about the true image centre `((W-1)/2, (H-1)/2)` in pixel
//!   coordinates, as tf.keras 2 and Keras ≤ 3.5 do; Keras ≥ 3.6 turns about `(W/2, H/2)`,
//!   which adds a half-pixel shift to every rotated image.

use ndarray::{Array3, Axis};

use crate::error::{DataError, Result};

/// How positions outside the image are filled by a rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FillMode {
    /// `d c b a | a b c d | d c b a` (Keras's default).
    Reflect,
    /// Taps outside the image read this value.
    Constant(f32),
    /// The nearest border pixel.
    Nearest,
}

impl std::str::FromStr for FillMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reflect" => Ok(FillMode::Reflect),
            "nearest" => Ok(FillMode::Nearest),
            "constant" => Ok(FillMode::Constant(0.0)),
            other => match other.strip_prefix("constant:").map(str::parse::<f32>) {
                Some(Ok(v)) if v.is_finite() => Ok(FillMode::Constant(v)),
                _ => Err(DataError::InvalidArgument {
                    what: "fill mode",
                    reason: format!("`{other}`; use reflect, nearest, constant or constant:VALUE"),
                }),
            },
        }
    }
}

/// The augmentation applied to each training image (after resizing, as in the Keras guide).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Mirror the width axis with probability 1/2 (`RandomFlip("horizontal")`).
    pub flip_horizontal: bool,
    /// Rotate by an angle uniform in ±factor·2π (`RandomRotation(factor)`); 0 disables.
    pub rotation_factor: f32,
    /// How the rotation fills positions outside the image.
    pub fill: FillMode,
}

impl Default for Augmentation {
    /// The Keras guide's augmentation: horizontal flip, rotation 0.1, reflect fill.
    fn default() -> Self {
        Augmentation::keras_guide()
    }
}

/// The random choices made for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentDraw {
    /// Whether the image is mirrored.
    pub flip: bool,
    /// The rotation angle in radians (counter-clockwise positive).
    pub angle: f32,
}

/// Uniform `[0, 1)` from 64 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Augmentation {
    /// The Keras guide's augmentation: horizontal flip, rotation 0.1, reflect fill.
    pub fn keras_guide() -> Self {
        Augmentation {
            flip_horizontal: true,
            rotation_factor: 0.1,
            fill: FillMode::Reflect,
        }
    }

    /// Checks that the factor is finite and within 0..=1.
    pub fn validate(&self) -> Result<()> {
        if !self.rotation_factor.is_finite() || !(0.0..=1.0).contains(&self.rotation_factor) {
            return Err(DataError::InvalidArgument {
                what: "rotation factor",
                reason: format!(
                    "{}; expected a fraction of a full turn in 0..=1",
                    self.rotation_factor
                ),
            });
        }
        if let FillMode::Constant(v) = self.fill
            && !v.is_finite()
        {
            return Err(DataError::InvalidArgument {
                what: "fill value",
                reason: format!("{v} is not finite"),
            });
        }
        Ok(())
    }

    /// The random choices for one image, a pure function of (seed, epoch, example key).
    pub fn draw(&self, seed: u64, epoch: u64, example_key: u64) -> AugmentDraw {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"xfer-augment");
        hasher.update(&seed.to_le_bytes());
        hasher.update(&epoch.to_le_bytes());
        hasher.update(&example_key.to_le_bytes());
        let hash = hasher.finalize();
        let bytes = hash.as_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let flip = self.flip_horizontal && unit(word(0)) < 0.5;
        let max = f64::from(self.rotation_factor) * 2.0 * std::f64::consts::PI;
        let angle = if self.rotation_factor > 0.0 {
            (-max + 2.0 * max * unit(word(1))) as f32
        } else {
            0.0
        };
        AugmentDraw { flip, angle }
    }

    /// Augments a CHW image for (seed, epoch, example key): flip, then rotation.
    pub fn apply(
        &self,
        image: &Array3<f32>,
        seed: u64,
        epoch: u64,
        example_key: u64,
    ) -> Array3<f32> {
        let draw = self.draw(seed, epoch, example_key);
        let flipped;
        let source = if draw.flip {
            flipped = flip_horizontal(image);
            &flipped
        } else {
            image
        };
        if draw.angle == 0.0 {
            source.clone()
        } else {
            rotate(source, draw.angle, self.fill)
        }
    }
}

/// Mirrors a CHW image along its width axis.
pub fn flip_horizontal(image: &Array3<f32>) -> Array3<f32> {
    let mut out = image.clone();
    out.invert_axis(Axis(2));
    out.as_standard_layout().into_owned()
}

/// Maps a sampling coordinate into `0..=len-1` by reflection about the outer pixel edges
/// (`d c b a | a b c d | d c b a`), as TensorFlow's `FILL_REFLECT`, then clamps.
pub fn reflect_coordinate(coord: f32, len: usize) -> f32 {
    if len <= 1 {
        return 0.0;
    }
    let size2 = 2.0 * len as f32;
    let len_f = len as f32;
    let mut c = coord;
    if c < 0.0 {
        if c < -size2 {
            c += size2 * (-c / size2).trunc();
        }
        c = if c < -len_f { c + size2 } else { -c - 1.0 };
    } else if c > len_f - 1.0 {
        c -= size2 * (c / size2).trunc();
        if c >= len_f {
            c = size2 - c - 1.0;
        }
    }
    c.clamp(0.0, len_f - 1.0)
}

/// The four bilinear taps of a sampling position: plane offsets (`None` outside) and weights.
fn bilinear_taps(h: usize, w: usize, y: f32, x: f32) -> [(Option<usize>, f32); 4] {
    let (y0, x0) = (y.floor(), x.floor());
    let (wy, wx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| -> Option<usize> {
        (yy >= 0.0 && xx >= 0.0 && (yy as usize) < h && (xx as usize) < w)
            .then(|| yy as usize * w + xx as usize)
    };
    [
        (at(y0, x0), (1.0 - wy) * (1.0 - wx)),
        (at(y0, x0 + 1.0), (1.0 - wy) * wx),
        (at(y0 + 1.0, x0), wy * (1.0 - wx)),
        (at(y0 + 1.0, x0 + 1.0), wy * wx),
    ]
}

/// Rotates a CHW image by `angle` radians (counter-clockwise as displayed) about its
/// centre with bilinear interpolation and the given fill (see the module docs).
pub fn rotate(image: &Array3<f32>, angle: f32, fill: FillMode) -> Array3<f32> {
    let (channels, h, w) = image.dim();
    let source = image.as_standard_layout();
    let Some(src) = source.as_slice() else {
        return image.clone();
    };
    let (sin, cos) = (f64::from(angle).sin(), f64::from(angle).cos());
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let mut out = Array3::<f32>::zeros((channels, h, w));
    let plane = h * w;
    let Some(dst) = out.as_slice_mut() else {
        return image.clone();
    };
    let outside = match fill {
        FillMode::Constant(v) => v,
        _ => 0.0,
    };
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            let mut xin = (cx + cos * dx - sin * dy) as f32;
            let mut yin = (cy + sin * dx + cos * dy) as f32;
            match fill {
                FillMode::Reflect => {
                    xin = reflect_coordinate(xin, w);
                    yin = reflect_coordinate(yin, h);
                }
                FillMode::Nearest => {
                    xin = xin.clamp(0.0, w as f32 - 1.0);
                    yin = yin.clamp(0.0, h as f32 - 1.0);
                }
                FillMode::Constant(_) => {}
            }
            let taps = bilinear_taps(h, w, yin, xin);
            for c in 0..channels {
                let src_plane = &src[c * plane..(c + 1) * plane];
                let value: f32 = taps
                    .iter()
                    .map(|&(offset, weight)| weight * offset.map_or(outside, |o| src_plane[o]))
                    .sum();
                dst[c * plane + y * w + x] = value;
            }
        }
    }
    out
}
