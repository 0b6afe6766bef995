//! Augmentation against independent expectations.

use ndarray::Array3;
use xfer_data::{Augmentation, FillMode, flip_horizontal, reflect_coordinate, rotate};

fn noise(c: usize, h: usize, w: usize, seed: u64) -> Array3<f32> {
    let mut state = seed | 1;
    Array3::from_shape_fn((c, h, w), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 256) as f32
    })
}

#[test]
fn flip_is_exact() {
    let img = noise(3, 5, 7, 1);
    let flipped = flip_horizontal(&img);
    for ((c, y, x), v) in flipped.indexed_iter() {
        assert_eq!(*v, img[[c, y, 6 - x]]);
    }
    assert_eq!(flip_horizontal(&flipped), img);
}

#[test]
fn draws_are_reproducible_and_cover_the_keras_range() {
    let aug = Augmentation::keras_guide();
    assert_eq!(aug.draw(1, 2, 3), aug.draw(1, 2, 3));
    let max = 0.1 * 2.0 * std::f32::consts::PI;
    let mut flips = 0;
    let (mut lo, mut hi, mut sum) = (f32::MAX, f32::MIN, 0.0f64);
    let n = 4000;
    for key in 0..n {
        let d = aug.draw(11, 0, key);
        flips += usize::from(d.flip);
        assert!(
            d.angle.abs() <= max + 1e-6,
            "angle {} outside ±0.2π",
            d.angle
        );
        lo = lo.min(d.angle);
        hi = hi.max(d.angle);
        sum += f64::from(d.angle);
    }
    let p = flips as f64 / n as f64;
    assert!((p - 0.5).abs() < 0.04, "flip rate {p}");
    assert!(
        lo < -0.95 * max && hi > 0.95 * max,
        "angles span [{lo}, {hi}]"
    );
    assert!(
        (sum / n as f64).abs() < 0.03,
        "mean angle {}",
        sum / n as f64
    );
    // Epoch and seed change the draws.
    let differs =
        |f: &dyn Fn(u64) -> xfer_data::AugmentDraw| (0..50).any(|k| f(k) != aug.draw(11, 0, k));
    assert!(differs(&|k| aug.draw(11, 1, k)));
    assert!(differs(&|k| aug.draw(12, 0, k)));
    // No flip / no rotation when disabled.
    let off = Augmentation {
        flip_horizontal: false,
        rotation_factor: 0.0,
        fill: FillMode::Reflect,
    };
    assert!((0..100).all(|k| {
        let d = off.draw(1, 1, k);
        !d.flip && d.angle == 0.0
    }));
}

#[test]
fn same_seed_same_image() {
    let aug = Augmentation::keras_guide();
    let img = noise(3, 24, 24, 9);
    assert_eq!(aug.apply(&img, 5, 3, 77), aug.apply(&img, 5, 3, 77));
    let changed = (0..20).any(|k| aug.apply(&img, 5, 3, k) != aug.apply(&img, 5, 4, k));
    assert!(changed);
}

#[test]
fn reflect_rule_is_dcba_abcd_dcba() {
    // len 4: ... d c b a | a b c d | d c b a | a b ...
    let period = [0, 1, 2, 3, 3, 2, 1, 0];
    for i in -16i32..24 {
        let expected = period[(i.rem_euclid(8)) as usize] as f32;
        assert_eq!(reflect_coordinate(i as f32, 4), expected, "index {i}");
    }
    // Between the edge pixel and its mirror the coordinate is clamped: the edge repeats.
    assert_eq!(reflect_coordinate(-0.3, 4), 0.0);
    assert_eq!(reflect_coordinate(3.4, 4), 3.0);
    assert!((reflect_coordinate(-1.5, 4) - 0.5).abs() < 1e-6);
    assert!((reflect_coordinate(4.25, 4) - 2.75).abs() < 1e-6);
    assert_eq!(reflect_coordinate(-7.0, 1), 0.0);
}

/// Independent float64 reference: rotate about ((W-1)/2, (H-1)/2), sample bilinearly,
/// and fix each *integer* neighbour index by the fill rule (Keras's JAX/NumPy
/// `map_coordinates` formulation, rather than TF's coordinate mapping used by the crate).
fn reference_rotate(img: &Array3<f32>, angle: f64, fill: FillMode) -> Array3<f64> {
    let (channels, h, w) = img.dim();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let reflect = |i: i64, n: i64| -> i64 {
        let m = i.rem_euclid(2 * n);
        if m < n { m } else { 2 * n - 1 - m }
    };
    Array3::from_shape_fn((channels, h, w), |(c, y, x)| {
        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
        let xi = cx + angle.cos() * dx - angle.sin() * dy;
        let yi = cy + angle.sin() * dx + angle.cos() * dy;
        let (x0, y0) = (xi.floor(), yi.floor());
        let (fx, fy) = (xi - x0, yi - y0);
        let tap = |yy: i64, xx: i64| -> f64 {
            match fill {
                FillMode::Reflect => f64::from(
                    img[[
                        c,
                        reflect(yy, h as i64) as usize,
                        reflect(xx, w as i64) as usize,
                    ]],
                ),
                FillMode::Nearest => f64::from(
                    img[[
                        c,
                        yy.clamp(0, h as i64 - 1) as usize,
                        xx.clamp(0, w as i64 - 1) as usize,
                    ]],
                ),
                FillMode::Constant(v) => {
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        f64::from(img[[c, yy as usize, xx as usize]])
                    } else {
                        f64::from(v)
                    }
                }
            }
        };
        let (x0, y0) = (x0 as i64, y0 as i64);
        let top = tap(y0, x0) * (1.0 - fx) + tap(y0, x0 + 1) * fx;
        let bottom = tap(y0 + 1, x0) * (1.0 - fx) + tap(y0 + 1, x0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

#[test]
fn rotation_matches_direct_bilinear_reference() {
    let img = noise(3, 19, 26, 4);
    for angle in [0.3f64, -0.55, 1.2, 2.9] {
        for fill in [
            FillMode::Reflect,
            FillMode::Nearest,
            FillMode::Constant(17.0),
        ] {
            let out = rotate(&img, angle as f32, fill);
            let reference = reference_rotate(&img, angle, fill);
            let diff = out
                .iter()
                .zip(reference.iter())
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            // f32 coordinates vs f64: sub-1e-5 pixel position error × 255 value range.
            assert!(diff < 0.05, "angle {angle} fill {fill:?}: max diff {diff}");
        }
    }
}

#[test]
fn half_turn_is_point_reflection() {
    let img = noise(3, 8, 11, 5);
    let out = rotate(&img, std::f32::consts::PI, FillMode::Reflect);
    for ((c, y, x), v) in out.indexed_iter() {
        assert!((v - img[[c, 7 - y, 10 - x]]).abs() < 1e-3, "({c},{y},{x})");
    }
}

#[test]
fn quarter_turn_fills_by_the_fill_rule() {
    // 2×6 image, values 10·y + x. A quarter turn (counter-clockwise) about (2.5, 0.5):
    // output (x=0, y=0) samples input x = 2.5 - (0 - 0.5) = 3, y = 0.5 + (0 - 2.5) = -2,
    // which is outside; reflect maps row -2 to row 1, nearest to row 0, constant reads v.
    let img = Array3::from_shape_fn((1, 2, 6), |(_, y, x)| (10 * y + x) as f32);
    let angle = std::f32::consts::FRAC_PI_2;
    let reflect = rotate(&img, angle, FillMode::Reflect);
    let nearest = rotate(&img, angle, FillMode::Nearest);
    let constant = rotate(&img, angle, FillMode::Constant(-5.0));
    assert!(
        (reflect[[0, 0, 0]] - 13.0).abs() < 1e-3,
        "{}",
        reflect[[0, 0, 0]]
    );
    assert!(
        (nearest[[0, 0, 0]] - 3.0).abs() < 1e-3,
        "{}",
        nearest[[0, 0, 0]]
    );
    assert!(
        (constant[[0, 0, 0]] + 5.0).abs() < 1e-3,
        "{}",
        constant[[0, 0, 0]]
    );
    // Output (x=2, y=1) samples x = 2.5 - 0.5 = 2, y = 0.5 - 0.5 = 0: inside, pixel 2.
    for out in [&reflect, &nearest, &constant] {
        assert!((out[[0, 1, 2]] - 2.0).abs() < 1e-3);
    }
}

#[test]
fn counter_clockwise_for_positive_angles() {
    // A bright pixel right of centre moves up (to smaller y) under a positive quarter turn.
    let mut img = Array3::<f32>::zeros((1, 9, 9));
    img[[0, 4, 7]] = 100.0;
    let out = rotate(&img, std::f32::consts::FRAC_PI_2, FillMode::Constant(0.0));
    assert!(
        (out[[0, 1, 4]] - 100.0).abs() < 1e-3,
        "expected the pixel at (x=4, y=1)"
    );
}

#[test]
fn fill_mode_parsing_and_validation() {
    assert_eq!(
        "reflect".parse::<FillMode>().expect("parse"),
        FillMode::Reflect
    );
    assert_eq!(
        "constant:3.5".parse::<FillMode>().expect("parse"),
        FillMode::Constant(3.5)
    );
    assert!("wrap".parse::<FillMode>().is_err());
    let bad = Augmentation {
        flip_horizontal: true,
        rotation_factor: f32::NAN,
        fill: FillMode::Reflect,
    };
    assert!(bad.validate().is_err());
    assert!(Augmentation::keras_guide().validate().is_ok());
}
