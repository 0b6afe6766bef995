//! The extract pipeline end to end on a tiny backbone built here (real ONNX Runtime).
//!
//! The backbone is GlobalAveragePool → Flatten → MatMul(W), so the embedding of a
//! solid-colour image is exactly `[r, g, b] @ W`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{ModelManifest, ModelSource};
use xfer_store::extract::{ExtractConfig, Shard, SplitAssignment, extract};
use xfer_store::{Error, StoreReader};

const DIM: usize = 4;

fn weights(scale: f32) -> Vec<f32> {
    (0..3 * DIM)
        .map(|i| scale * (i as f32 + 1.0) / 10.0)
        .collect()
}

/// Writes a tiny backbone into `dir` (model.onnx + model.json); `scale` changes the weights.
fn tiny_backbone(dir: &Path, scale: f32) -> PathBuf {
    let mut g = GraphBuilder::new("tiny");
    g.input(
        "pixels",
        &[
            Dim::from("batch"),
            Dim::Fixed(3),
            Dim::from("h"),
            Dim::from("w"),
        ],
    );
    let w = g.constant_f32("w", &[3, DIM as i64], &weights(scale));
    let gap = g.op("GlobalAveragePool", &["pixels"], vec![], "gap");
    let flat = g.op("Flatten", &[&gap], vec![attr::int("axis", 1)], "flat");
    g.node_named("MatMul", &[&flat, &w], &["features"], vec![]);
    g.output("features", &[Dim::from("batch"), Dim::Fixed(DIM as i64)]);
    let bytes = xfer_onnx::write_model_bytes(&g.build_model());
    std::fs::create_dir_all(dir).expect("model dir");
    std::fs::write(dir.join("model.onnx"), &bytes).expect("write onnx");
    let manifest = ModelManifest {
        name: "tiny".into(),
        onnx: "model.onnx".into(),
        training_onnx: None,
        input: "pixels".into(),
        layout: "NCHW".into(),
        channel_order: "RGB".into(),
        value_range: [0.0, 255.0],
        image_size: [6, 6],
        preprocessing: "none".into(),
        output: "features".into(),
        feature_dim: DIM,
        classes: None,
        source: ModelSource {
            package: "test".into(),
            file: "tiny".into(),
            sha256: String::new(),
        },
        fingerprint: xfer_runtime::fingerprint(&bytes),
        xfer_version: "test".into(),
    };
    manifest.write(dir).expect("manifest");
    dir.to_path_buf()
}

fn colour(class: usize, i: usize) -> [u8; 3] {
    [
        (i * 7 % 256) as u8,
        (class * 100 + 20) as u8,
        (i * 13 % 200) as u8,
    ]
}

fn write_png(path: &Path, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(8, 8, image::Rgb(rgb))
        .save(path)
        .expect("png");
}

/// `n` solid-colour images per class in `root/{cat,dog}/NNNN.png`.
fn dataset(root: &Path, n: usize) -> PathBuf {
    for (c, name) in ["cat", "dog"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("class dir");
        for i in 0..n {
            write_png(&dir.join(format!("{i:04}.png")), colour(c, i));
        }
    }
    root.to_path_buf()
}

fn expected_embedding(rgb: [u8; 3], scale: f32) -> Vec<f32> {
    let w = weights(scale);
    (0..DIM)
        .map(|j| (0..3).map(|c| rgb[c] as f32 * w[c * DIM + j]).sum())
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
    store: PathBuf,
}

fn fixture(n_per_class: usize) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = dataset(&tmp.path().join("data"), n_per_class);
    let model = tiny_backbone(&tmp.path().join("model"), 1.0);
    let store = tmp.path().join("store");
    Fixture {
        _tmp: tmp,
        data,
        model,
        store,
    }
}

fn config(f: &Fixture, store: &Path) -> ExtractConfig {
    let mut c = ExtractConfig::new(&f.data, &f.model, store).expect("config");
    c.batch_size = 4;
    c.rows_per_part = 8;
    c.decode_threads = Some(2);
    c
}

/// (id → (split, hash, embedding)) of all live rows, with a check that each id is live once.
fn rows(store: &Path) -> BTreeMap<String, (String, String, Vec<f32>)> {
    let reader = StoreReader::open(store).expect("open store");
    let keys: Vec<_> = reader
        .stored_keys()
        .expect("keys")
        .into_iter()
        .filter(|k| k.live)
        .collect();
    let mut ids: Vec<&String> = keys.iter().map(|k| &k.id).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "every id is stored once");
    let mut out = BTreeMap::new();
    for split in ["train", "val", "test"] {
        let Ok(loaded) = reader.load_split(split, None) else {
            continue;
        };
        for (i, id) in loaded.ids.iter().enumerate() {
            let hash = keys
                .iter()
                .find(|k| &k.id == id)
                .map(|k| k.content_hash.clone())
                .expect("key");
            out.insert(
                id.clone(),
                (split.to_owned(), hash, loaded.features.row(i).to_vec()),
            );
        }
    }
    out
}

#[test]
fn full_run_stores_each_image_once_and_rerun_embeds_nothing() {
    let f = fixture(15);
    let mut calls = 0;
    let summary = extract(&config(&f, &f.store), &mut |_| calls += 1).expect("extract");
    assert_eq!(summary.embedded, 30);
    assert_eq!(summary.cached, 0);
    assert!(summary.skipped.is_empty());
    assert!(calls >= 30 / 4, "progress reported per batch");
    assert_eq!(summary.files.len(), 4, "30 rows at 8 rows per part");
    assert_eq!(summary.per_split.values().sum::<usize>(), 30);
    assert_eq!(summary.per_split["train"], 21);

    let stored = rows(&f.store);
    assert_eq!(stored.len(), 30);
    let all_keys = StoreReader::open(&f.store)
        .expect("open")
        .stored_keys()
        .expect("keys");
    assert_eq!(all_keys.len(), 30, "no duplicate or superseded rows at all");
    let splits: std::collections::BTreeSet<&str> =
        stored.values().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        splits.into_iter().collect::<Vec<_>>(),
        vec!["test", "train", "val"]
    );
    let (_, hash, emb) = &stored["dog/0003.png"];
    let bytes = std::fs::read(f.data.join("dog/0003.png")).expect("read");
    assert_eq!(hash, &xfer_store::content_hash(&bytes));
    let want = expected_embedding(colour(1, 3), 1.0);
    for (a, b) in emb.iter().zip(&want) {
        assert!(
            (a - b).abs() < 1e-3 * b.abs().max(1.0),
            "{emb:?} vs {want:?}"
        );
    }
    let reader = StoreReader::open(&f.store).expect("open");
    let train = reader.load_split("train", None).expect("train");
    assert_eq!(train.classes, vec!["cat", "dog"]);
    for (id, label) in train.ids.iter().zip(&train.labels) {
        assert_eq!(*label, i32::from(id.starts_with("dog/")), "{id}");
    }

    let again = extract(&config(&f, &f.store), &mut |_| {}).expect("rerun");
    assert_eq!(again.embedded, 0);
    assert_eq!(again.cached, 30);
    assert!(again.files.is_empty());
    assert_eq!(
        again.device, None,
        "nothing to embed: the model is not even loaded"
    );
    let text = again.to_string();
    assert!(
        text.contains("nothing to embed") && !text.contains("images/s"),
        "a fully cached rerun reports no throughput: {text}"
    );
    assert_eq!(rows(&f.store), stored);
}

#[test]
fn a_modified_image_is_re_embedded_and_supersedes_its_old_row() {
    let f = fixture(6);
    extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    let before = rows(&f.store);
    let new_rgb = [250, 1, 2];
    write_png(&f.data.join("cat/0002.png"), new_rgb);
    let summary = extract(&config(&f, &f.store), &mut |_| {}).expect("rerun");
    assert_eq!(summary.embedded, 1);
    assert_eq!(summary.changed, 1);
    assert_eq!(summary.cached, 11);

    let reader = StoreReader::open(&f.store).expect("open");
    let info = reader.info().expect("info");
    assert_eq!(info.models[0].rows, 12);
    assert_eq!(info.models[0].superseded, 1);
    let split = &before["cat/0002.png"].0;
    let loaded = reader.load_split(split, None).expect("split");
    let i = loaded
        .ids
        .iter()
        .position(|id| id == "cat/0002.png")
        .expect("row");
    let want = expected_embedding(new_rgb, 1.0);
    for (a, b) in loaded.features.row(i).iter().zip(&want) {
        assert!((a - b).abs() < 1e-3 * b.abs().max(1.0));
    }
    assert_eq!(
        loaded.ids.len(),
        loaded
            .ids
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );

    let compacted = xfer_store::StoreLock::acquire(&f.store, None, xfer_store::LockWait::NoWait)
        .expect("lock")
        .compact()
        .expect("compact");
    assert_eq!(compacted.rows, 12);
    assert_eq!(compacted.dropped, 1);
    let after = rows(&f.store);
    assert_eq!(after.len(), 12);
    assert_eq!(after["cat/0002.png"].2, loaded.features.row(i).to_vec());
    assert_eq!(after["dog/0001.png"], before["dog/0001.png"]);
}

#[test]
fn another_models_store_is_refused_unless_mixing_is_allowed() {
    let f = fixture(3);
    extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    let other = tiny_backbone(&f.model.with_file_name("other"), 2.0);
    let mut c = config(&f, &f.store);
    c.model_dir = other;
    let err = extract(&c, &mut |_| {}).expect_err("mixed");
    assert!(matches!(err, Error::MixedModels { .. }), "{err}");
    assert!(err.to_string().contains("--allow-mixed-models"), "{err}");
    c.allow_mixed_models = true;
    let summary = extract(&c, &mut |_| {}).expect("mixed allowed");
    assert_eq!(
        summary.embedded, 6,
        "another model's rows do not count as cached"
    );
    let reader = StoreReader::open(&f.store).expect("open");
    assert_eq!(reader.models().len(), 2);
    let err = reader.load_split("train", None).expect_err("ambiguous");
    assert!(err.to_string().contains("several models"), "{err}");
}

#[test]
fn two_shards_together_equal_an_unsharded_run() {
    let f = fixture(10);
    let whole = f.store.with_file_name("whole");
    extract(&config(&f, &whole), &mut |_| {}).expect("unsharded");
    let mut taken = 0;
    for i in 0..2 {
        let mut c = config(&f, &f.store);
        c.shard = Some(Shard { index: i, count: 2 });
        let s = extract(&c, &mut |_| {}).expect("shard");
        assert!(
            s.embedded > 0 && s.embedded < 20,
            "a shard takes a part: {}",
            s.embedded
        );
        assert_eq!(s.embedded + s.other_shards, 20);
        assert!(
            s.files
                .iter()
                .all(|p| p.to_string_lossy().contains(&format!("s{i}of2")))
        );
        taken += s.embedded;
    }
    assert_eq!(taken, 20);
    assert_eq!(rows(&f.store), rows(&whole));
}

#[test]
fn unreadable_images_are_skipped_with_a_reason_or_stop_the_run() {
    let f = fixture(4);
    std::fs::write(f.data.join("cat/0001.png"), b"not a png at all").expect("corrupt");
    std::fs::write(f.data.join("dog/0002.png"), b"").expect("empty");
    let summary = extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    assert_eq!(summary.embedded, 6);
    assert_eq!(summary.skipped.len(), 2);
    let kinds = summary.skipped_by_kind();
    assert_eq!(kinds.get("empty file"), Some(&1), "{kinds:?}");
    assert!(summary.to_string().contains("cat/0001.png"), "{summary}");

    let mut c = config(&f, &f.store.with_file_name("strict"));
    c.on_error = xfer_data::OnError::Fail;
    let err = extract(&c, &mut |_| {}).expect_err("fail policy");
    assert!(err.to_string().contains("000"), "{err}");
}

#[test]
fn changing_the_split_assignment_is_refused_unless_retag_moves_the_rows() {
    let f = fixture(5);
    extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    let before = rows(&f.store);
    let mut c = config(&f, &f.store);
    c.seed = 7;
    let err = extract(&c, &mut |_| {}).expect_err("retag");
    assert!(err.to_string().contains("another split"), "{err}");
    assert!(err.to_string().contains("--retag"), "{err}");

    c.retag = true;
    let s = extract(&c, &mut |_| {}).expect("retag");
    assert!(s.retagged > 0, "seed 7 moves some images");
    assert_eq!(s.embedded, 0, "moved rows keep their stored embedding");
    assert_eq!(s.retagged + s.cached, 10);
    let after = rows(&f.store);
    assert_eq!(after.len(), 10);
    let ds = xfer_data::Dataset::open(&f.data).expect("dataset");
    for (e, split) in c.splits.assign(ds.examples(), 7).expect("assign") {
        let (stored_split, hash, emb) = &after[&e.id];
        assert_eq!(stored_split, &split, "{}", e.id);
        assert_eq!(
            (hash, emb),
            (&before[&e.id].1, &before[&e.id].2),
            "{}",
            e.id
        );
    }
    // The new assignment is now the store's: a plain rerun with it is fully cached.
    c.retag = false;
    let again = extract(&c, &mut |_| {}).expect("rerun");
    assert_eq!((again.embedded, again.retagged, again.cached), (0, 0, 10));
}

#[test]
fn images_added_to_the_dataset_are_embedded_and_moved_boundaries_retagged() {
    let f = fixture(10);
    extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    for i in 10..14 {
        write_png(&f.data.join(format!("cat/{i:04}.png")), colour(0, i));
    }
    let mut c = config(&f, &f.store);
    c.retag = true;
    let s = extract(&c, &mut |_| {}).expect("grown dataset");
    assert_eq!(s.embedded, 4, "only the new images are embedded");
    assert_eq!(s.embedded + s.retagged + s.cached, 24);
    assert_eq!(rows(&f.store).len(), 24);
}

#[test]
fn split_and_shard_specs_parse_or_explain() {
    let s = SplitAssignment::parse("train=train[:50%],rest=train[50%:]").expect("two");
    assert_eq!(s.names(), vec!["train", "rest"]);
    let one = SplitAssignment::parse("validation[:10%]").expect("one");
    assert_eq!(one.names(), vec!["validation"]);
    let err = SplitAssignment::parse("a=train[:5x]").expect_err("bad bound");
    assert!(err.to_string().contains("name=SPEC"), "{err}");
    let err = SplitAssignment::parse("a=train,a=train").expect_err("dup");
    assert!(err.to_string().contains("twice"), "{err}");

    let f = fixture(5);
    let ds = xfer_data::Dataset::open(&f.data).expect("dataset");
    let overlap = SplitAssignment::parse("a=train[:60%],b=train[50%:]").expect("parse");
    let err = overlap.assign(ds.examples(), 1).expect_err("overlap");
    assert!(err.to_string().contains("overlap"), "{err}");
    let partial = SplitAssignment::parse("a=train[:30%]").expect("parse");
    assert_eq!(partial.assign(ds.examples(), 1).expect("assign").len(), 3);

    assert_eq!(
        Shard::parse("1/3").expect("shard"),
        Shard { index: 1, count: 3 }
    );
    for bad in ["3/3", "1", "a/2", "0/0"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_cancelled_run_stores_what_it_embedded_and_a_rerun_resumes() {
    let f = fixture(10);
    let mut c = config(&f, &f.store);
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    c.cancel = Some(std::sync::Arc::clone(&flag));
    let err = extract(&c, &mut |p| {
        if p.embedded >= 8 {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .expect_err("cancelled");
    let Error::Cancelled { stored } = &err else {
        panic!("{err:?}");
    };
    let stored = *stored;
    assert_eq!(
        stored, 8,
        "two batches of 4 embedded before the flag was seen"
    );
    assert!(err.to_string().contains("rerun to resume"), "{err}");
    assert_eq!(rows(&f.store).len(), 8);

    c.cancel = None;
    let rest = extract(&c, &mut |_| {}).expect("resume");
    assert_eq!((rest.embedded, rest.cached), (12, 8));
    assert_eq!(rows(&f.store).len(), 20);
}

#[test]
fn same_onnx_bytes_at_another_input_size_or_resize_is_refused_naming_the_field() {
    let f = fixture(3);
    extract(&config(&f, &f.store), &mut |_| {}).expect("first extract");
    // `xfer convert --size`: same size-dynamic ONNX bytes (same fingerprint), other input size.
    let mut manifest = ModelManifest::read(&f.model).expect("manifest");
    let fingerprint = manifest.fingerprint.clone();
    manifest.image_size = [8, 8];
    manifest.write(&f.model).expect("write manifest");
    let mut c = config(&f, &f.store);
    c.allow_mixed_models = true;
    let err = extract(&c, &mut |_| {}).expect_err("another input size must be refused");
    let text = err.to_string();
    assert!(matches!(err, Error::IdentityMismatch { .. }), "{err:?}");
    assert!(
        text.contains("image_size `6x6`") && text.contains("image_size `8x8`"),
        "{text}"
    );
    assert!(text.contains(&fingerprint), "{text}");
    assert_eq!(rows(&f.store).len(), 6, "nothing written");

    manifest.image_size = [6, 6];
    manifest.write(&f.model).expect("write manifest");
    c.resize = xfer_data::ResizeMethod::BilinearAntialias;
    let err = extract(&c, &mut |_| {}).expect_err("another resize must be refused");
    assert!(err.to_string().contains("resize `bilinear`"), "{err}");
    // The original identity is still served from the store.
    let again = extract(&config(&f, &f.store), &mut |_| {}).expect("same identity");
    assert_eq!((again.embedded, again.cached), (0, 6));
}

/// Flips bytes in the middle of the `embedding` column chunk of `part`'s first row group.
fn flip_embedding_bytes(part: &Path) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(part).expect("open part");
    let reader = SerializedFileReader::new(file).expect("parquet footer");
    let chunk = reader.metadata().row_group(0).column(6);
    let (start, len) = chunk.byte_range();
    let (start, len) = (start as usize, len as usize);
    let mut bytes = std::fs::read(part).expect("read part");
    for b in &mut bytes[start + len / 2..start + len / 2 + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(part, bytes).expect("write part");
}

#[test]
fn a_damaged_part_is_named_with_the_remedy_and_a_rerun_re_embeds_exactly_its_rows() {
    let f = fixture(8);
    let first = extract(&config(&f, &f.store), &mut |_| {}).expect("extract");
    assert_eq!(first.files.len(), 2, "16 rows at 8 per part");
    let reader = StoreReader::open(&f.store).expect("open");
    assert!(reader.verify().is_empty(), "an intact store verifies");
    assert!(
        reader.files().iter().all(|p| p.checksum.is_some()),
        "every part records its checksum"
    );
    let victim = first.files[1].clone();
    flip_embedding_bytes(&victim);

    let reader = StoreReader::open(&f.store).expect("the footer is intact");
    let damaged = reader.verify();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    let text = damaged[0].to_string();
    assert!(matches!(damaged[0], Error::Damaged { .. }), "{text}");
    assert!(text.contains(&victim.display().to_string()), "{text}");
    assert!(
        text.contains("move it out") && text.contains("rerun `xfer extract`"),
        "{text}"
    );
    let all_splits: Vec<_> = ["train", "val", "test"]
        .iter()
        .map(|s| reader.load_split(s, None))
        .collect();
    assert!(
        all_splits
            .iter()
            .any(|r| matches!(r, Err(Error::Damaged { .. }))),
        "reading the damaged part is refused, not returned: {all_splits:?}"
    );

    let rows_of_victim = StoreReader::open(&f.store).expect("open").files()[1].rows;
    let aside = f.store.parent().expect("parent").join("aside.parquet");
    std::fs::rename(&victim, &aside).expect("move out");
    let rerun = extract(&config(&f, &f.store), &mut |_| {}).expect("rerun");
    assert_eq!(rerun.embedded, rows_of_victim);
    assert_eq!(rerun.cached, 16 - rows_of_victim);
    assert!(
        StoreReader::open(&f.store)
            .expect("open")
            .verify()
            .is_empty()
    );
    assert_eq!(rows(&f.store).len(), 16);
}

/// Every stored row (live or superseded) as `(id, label)`, read from the part files.
fn physical_rows(store: &Path) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = StoreReader::open(store)
        .expect("open")
        .stored_keys()
        .expect("keys")
        .into_iter()
        .map(|k| (k.id, k.label))
        .collect();
    out.sort();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_deleted_and_a_moved_image_leave_one_row_each_and_the_moved_one_keeps_its_embedding() {
    // Issue 18 item 1: delete dog/0005, move cat/0004 to dog/0100, rerun (--retag), compact.
    let f = fixture(6);
    extract(&config(&f, &f.store), &mut |_| {}).expect("first run");
    let before = rows(&f.store);
    let (_, old_hash, old_embedding) = before["cat/0004.png"].clone();
    std::fs::remove_file(f.data.join("dog/0005.png")).expect("delete");
    std::fs::rename(f.data.join("cat/0004.png"), f.data.join("dog/0100.png")).expect("move");

    let mut c = config(&f, &f.store);
    c.retag = true;
    let s = extract(&c, &mut |_| {}).expect("rerun");
    assert_eq!(s.embedded, 0, "the moved image is not re-embedded: {s}");
    assert_eq!(s.reconciled.gone, 2, "dog/0005 and cat/0004 are gone: {s}");
    assert_eq!(s.reconciled.moved, 1, "{s}");
    assert_eq!(s.reconciled.relabelled, 0, "{s}");
    let text = s.to_string();
    assert!(
        text.contains("dropped 2 stale row(s)") && text.contains("1 moved/renamed"),
        "{text}"
    );

    // Physically gone: no reader (pyarrow included) sees the stale rows, even before compact
    // (which only drops the older rows of images retagged into another split).
    let physical = physical_rows(&f.store);
    let ids: std::collections::BTreeSet<&String> = physical.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 11, "{physical:?}");
    assert!(
        !physical
            .iter()
            .any(|(id, _)| id == "dog/0005.png" || id == "cat/0004.png"),
        "{physical:?}"
    );
    let after = rows(&f.store);
    assert_eq!(after.len(), 11);
    let (_, hash, embedding) = &after["dog/0100.png"];
    assert_eq!(hash, &old_hash);
    assert_eq!(
        bits(embedding),
        bits(&old_embedding),
        "embedding reused bit for bit"
    );
    assert!(
        physical.contains(&("dog/0100.png".to_owned(), 1)),
        "moved image labelled dog"
    );

    // The train split a head sees has the size the summary reported.
    let reader = StoreReader::open(&f.store).expect("open");
    let train = reader.load_split("train", None).expect("train");
    assert_eq!(train.ids.len(), s.per_split["train"]);

    let compacted = xfer_store::StoreLock::acquire(&f.store, None, xfer_store::LockWait::NoWait)
        .expect("lock")
        .compact()
        .expect("compact");
    assert_eq!(compacted.rows, 11);
    assert_eq!(physical_rows(&f.store).len(), 11);
    assert_eq!(rows(&f.store), after);
    let again = extract(&c, &mut |_| {}).expect("third run");
    assert_eq!((again.embedded, again.cached), (0, 11));
    assert_eq!(again.reconciled, xfer_store::Reconciliation::default());
}

#[test]
fn reconciliation_reads_the_whole_dataset_not_the_shard_or_the_limit() {
    let f = fixture(8);
    extract(&config(&f, &f.store), &mut |_| {}).expect("first run");
    // A file of shard 1 disappears; shard 0 runs with a limit of 2 images.
    let shard = Shard { index: 1, count: 2 };
    let gone = (0..8)
        .map(|i| format!("dog/{i:04}.png"))
        .find(|id| shard.contains(id))
        .expect("a dog image in shard 1");
    std::fs::remove_file(f.data.join(&gone)).expect("delete");
    let mut c = config(&f, &f.store);
    c.shard = Some(Shard { index: 0, count: 2 });
    c.limit = Some(2);
    c.retag = true;
    let s = extract(&c, &mut |_| {}).expect("shard 0");
    assert_eq!(s.reconciled.gone, 1, "{s}");
    let physical = physical_rows(&f.store);
    let ids: std::collections::BTreeSet<&String> = physical.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        15,
        "only the deleted image's row goes: {physical:?}"
    );
    assert!(!ids.contains(&gone));
}

#[test]
fn a_relabelled_manifest_image_keeps_one_row_with_its_new_label_and_embedding() {
    let f = fixture(4);
    let csv = f.data.join("labels.csv");
    let write_manifest = |relabel: bool| {
        let mut text = String::from("path,label\n");
        for class in ["cat", "dog"] {
            for i in 0..4 {
                let label = if relabel && class == "cat" && i == 2 {
                    "dog"
                } else {
                    class
                };
                text.push_str(&format!("{class}/{i:04}.png,{label}\n"));
            }
        }
        std::fs::write(&csv, text).expect("manifest");
    };
    write_manifest(false);
    let mut c = ExtractConfig::new(&csv, &f.model, &f.store).expect("config");
    c.batch_size = 4;
    c.retag = true;
    extract(&c, &mut |_| {}).expect("first run");
    let old = rows(&f.store)["cat/0002.png"].2.clone();
    write_manifest(true);
    let s = extract(&c, &mut |_| {}).expect("rerun");
    assert_eq!(s.embedded, 0, "{s}");
    assert_eq!(
        (s.reconciled.relabelled_rows, s.reconciled.relabelled),
        (1, 1),
        "{s}"
    );
    let physical = physical_rows(&f.store);
    let ids: std::collections::BTreeSet<&String> = physical.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 8, "{physical:?}");
    assert!(
        physical.contains(&("cat/0002.png".to_owned(), 1))
            && !physical.contains(&("cat/0002.png".to_owned(), 0)),
        "no row keeps the old label: {physical:?}"
    );
    assert_eq!(bits(&rows(&f.store)["cat/0002.png"].2), bits(&old));
}
