//! Writer → reader round trips on a store written here (no model needed).

use ndarray::Array2;
use xfer_store::{
    EmbeddingRecord, EmbeddingWriter, LockWait, StoreLock, StoreMetadata, StoreReader,
    WriterOptions,
};

fn meta(fp: &str, dim: usize) -> StoreMetadata {
    StoreMetadata {
        model_name: "tiny".into(),
        fingerprint: fp.into(),
        preprocessing: "none".into(),
        image_size: [4, 4],
        feature_dim: dim,
        classes: vec!["cat".into(), "dog".into()],
        xfer_version: "test".into(),
        identity: None,
    }
}

fn rec(id: &str, label: i32, split: &str, hash: &str) -> EmbeddingRecord {
    EmbeddingRecord {
        id: id.into(),
        label,
        split: split.into(),
        content_hash: hash.into(),
    }
}

/// Row i's embedding is [i, i+0.5, i+0.25].
fn emb(values: &[f32]) -> Array2<f32> {
    Array2::from_shape_fn((values.len(), 3), |(r, c)| values[r] + [0.0, 0.5, 0.25][c])
}

#[test]
fn rows_round_trip_and_parts_roll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = WriterOptions {
        rows_per_part: 2,
        ..Default::default()
    };
    let mut w = EmbeddingWriter::create(dir.path(), meta("fp1", 3), &opts).expect("writer");
    let recs: Vec<_> = (0..5)
        .map(|i| {
            rec(
                &format!("c/{i}.png"),
                i % 2,
                if i < 3 { "train" } else { "val" },
                &format!("h{i}"),
            )
        })
        .collect();
    w.append(&recs[..3], emb(&[0.0, 1.0, 2.0]).view())
        .expect("append");
    w.append(&recs[3..], emb(&[3.0, 4.0]).view())
        .expect("append");
    let summary = w.finish().expect("finish");
    assert_eq!(summary.rows, 5);
    assert_eq!(summary.files.len(), 3, "2 rows per part -> 3 parts");

    let store = StoreReader::open(dir.path()).expect("open");
    assert_eq!(store.files().len(), 3);
    assert!(store.temp_files().is_empty());
    let train = store.load_split("train", None).expect("train");
    assert_eq!(train.ids, vec!["c/0.png", "c/1.png", "c/2.png"]);
    assert_eq!(train.labels, vec![0, 1, 0]);
    assert_eq!(train.classes, vec!["cat", "dog"]);
    assert_eq!(train.fingerprint, "fp1");
    assert_eq!(train.features.shape(), &[3, 3]);
    assert_eq!(train.features.row(2).to_vec(), vec![2.0, 2.5, 2.25]);
    let val = store.load_split("val", Some("fp1")).expect("val");
    assert_eq!(val.features.row(1).to_vec(), vec![4.0, 4.5, 4.25]);

    let err = store.load_split("test", None).expect_err("no test split");
    let msg = err.to_string();
    assert!(
        msg.contains("train (3 rows)") && msg.contains("val (2 rows)"),
        "{msg}"
    );

    let info = store.info().expect("info");
    assert_eq!(info.models.len(), 1);
    assert_eq!(info.models[0].rows, 5);
    assert_eq!(info.models[0].per_split["train"], 3);
    assert_eq!(info.models[0].per_label["dog"], 2);
    assert_eq!(info.models[0].feature_dim, 3);
    assert!(info.bytes > 0);
    assert!(info.to_string().contains("rows 5"), "{info}");
}

#[test]
fn newer_row_supersedes_and_compact_drops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = WriterOptions::default();
    let mut w = EmbeddingWriter::create(dir.path(), meta("fp1", 3), &opts).expect("writer");
    w.append(
        &[rec("a", 0, "train", "h1"), rec("b", 1, "train", "h2")],
        emb(&[1.0, 2.0]).view(),
    )
    .expect("append");
    w.finish().expect("finish");
    std::thread::sleep(std::time::Duration::from_millis(5));
    // "a" changed: new content, new embedding.
    let mut w = EmbeddingWriter::create(dir.path(), meta("fp1", 3), &opts).expect("writer");
    w.append(&[rec("a", 0, "train", "h1-new")], emb(&[9.0]).view())
        .expect("append");
    w.finish().expect("finish");

    let store = StoreReader::open(dir.path()).expect("open");
    let keys = store.stored_keys().expect("keys");
    assert_eq!(keys.len(), 3);
    assert_eq!(keys.iter().filter(|k| !k.live).count(), 1);
    let train = store.load_split("train", None).expect("train");
    assert_eq!(train.ids, vec!["a", "b"]);
    assert_eq!(
        train.features.row(0).to_vec(),
        vec![9.0, 9.5, 9.25],
        "the newest row wins"
    );
    assert_eq!(store.info().expect("info").models[0].superseded, 1);

    // A leftover temporary part of a dead writer is ignored, then removed by compact.
    let stale = dir
        .path()
        .join(".part-0000000000001-p999999999-00000.parquet.tmp");
    std::fs::write(&stale, b"half a file").expect("write");
    let store = StoreReader::open(dir.path()).expect("open");
    assert_eq!(store.temp_files().len(), 1);
    let lock = StoreLock::acquire(dir.path(), None, LockWait::NoWait).expect("lock");
    let summary = lock.compact().expect("compact");
    assert_eq!(summary.files_in, 2);
    assert_eq!(summary.files_out.len(), 1);
    assert_eq!(summary.rows, 2);
    assert_eq!(summary.dropped, 1);
    assert_eq!(summary.temp_removed, 1);
    assert!(!stale.exists());

    let store = StoreReader::open(dir.path()).expect("reopen");
    assert_eq!(store.files().len(), 1);
    let keys = store.stored_keys().expect("keys");
    assert_eq!(keys.len(), 2);
    let train = store.load_split("train", None).expect("train");
    assert_eq!(train.features.row(0).to_vec(), vec![9.0, 9.5, 9.25]);
    assert_eq!(train.features.row(1).to_vec(), vec![2.0, 2.5, 2.25]);
    // Nothing left to do: a second compact keeps the file.
    let again = lock.compact().expect("compact again");
    assert!(again.files_out.is_empty());
    assert_eq!(again.rows, 2);
}

#[test]
fn two_models_need_a_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    for fp in ["aaaaaaaaaaaa1111", "bbbbbbbbbbbb2222"] {
        let mut w = EmbeddingWriter::create(dir.path(), meta(fp, 3), &WriterOptions::default())
            .expect("writer");
        w.append(&[rec("a", 0, "train", "h1")], emb(&[1.0]).view())
            .expect("append");
        w.finish().expect("finish");
    }
    let store = StoreReader::open(dir.path()).expect("open");
    let err = store.load_split("train", None).expect_err("ambiguous");
    assert!(err.to_string().contains("several models"), "{err}");
    let b = store
        .load_split("train", Some("bbbbbbbbbbbb"))
        .expect("by prefix");
    assert_eq!(b.fingerprint, "bbbbbbbbbbbb2222");
    assert_eq!(
        b.ids,
        vec!["a"],
        "rows of different models do not supersede each other"
    );
}

#[test]
fn bad_rows_are_refused_with_context() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = EmbeddingWriter::create(dir.path(), meta("fp", 3), &WriterOptions::default())
        .expect("writer");
    let err = w
        .append(
            &[rec("a", 0, "train", "h")],
            Array2::<f32>::zeros((1, 4)).view(),
        )
        .expect_err("dim");
    assert!(err.to_string().contains("feature_dim is 3"), "{err}");
    let err = w
        .append(&[rec("a", 7, "train", "h")], emb(&[1.0]).view())
        .expect_err("label");
    assert!(err.to_string().contains("label 7"), "{err}");
    drop(w);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "nothing half-written left behind"
    );
}

#[test]
fn missing_store_and_foreign_files_are_clear_errors() {
    let err = StoreReader::open(std::path::Path::new("/nonexistent/store")).expect_err("missing");
    assert!(err.to_string().contains("xfer extract"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("junk.parquet"), b"not parquet").expect("write");
    let err = StoreReader::open(dir.path()).expect_err("junk");
    assert!(err.to_string().contains("junk.parquet"), "{err}");
}

#[test]
fn a_label_beyond_the_label_column_is_an_error_naming_the_example() {
    let ok = xfer_data::Example {
        id: "cat/1.png".into(),
        path: "cat/1.png".into(),
        label: 7,
    };
    let made = EmbeddingRecord::for_example(&ok, "train", "h".into()).expect("fits");
    assert_eq!(made, rec("cat/1.png", 7, "train", "h"));
    let huge = xfer_data::Example {
        id: "many/classes.png".into(),
        path: "many/classes.png".into(),
        label: u32::MAX,
    };
    let err = EmbeddingRecord::for_example(&huge, "train", "h".into()).expect_err("i32");
    assert!(
        matches!(&err, xfer_store::Error::LabelOutOfRange { id, label } if id == "many/classes.png" && *label == u32::MAX),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("many/classes.png") && text.contains(&u32::MAX.to_string()),
        "{text}"
    );
}

/// Issue 18 item 12: the multi-model error names the flag that picks one.
#[test]
fn the_several_models_error_names_the_fingerprint_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    for fp in ["aaaaaaaaaaaa1111", "bbbbbbbbbbbb2222"] {
        let mut w = EmbeddingWriter::create(dir.path(), meta(fp, 3), &WriterOptions::default())
            .expect("writer");
        w.append(&[rec("a", 0, "train", "h1")], emb(&[1.0]).view())
            .expect("append");
        w.finish().expect("finish");
    }
    let store = StoreReader::open(dir.path()).expect("open");
    let err = store.load_split("train", None).expect_err("ambiguous");
    assert!(err.to_string().contains("--fingerprint"), "{err}");
    let err = store
        .load_split("train", Some("cccccccc"))
        .expect_err("unknown");
    assert!(err.to_string().contains("--fingerprint"), "{err}");
}

#[test]
fn writers_created_in_the_same_millisecond_keep_every_part() {
    // One process creating writers back to back (the Python module's `Store.write`, a test
    // harness): each gets its own run id, so no part replaces another's.
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 60;
    for i in 0..n {
        let mut w = EmbeddingWriter::create(
            dir.path(),
            meta("aaaaaaaaaaaa1111", 3),
            &WriterOptions::default(),
        )
        .expect("writer");
        let id = format!("img{i:03}");
        w.append(
            &[rec(&id, 0, "train", &format!("h{i}"))],
            emb(&[i as f32]).view(),
        )
        .expect("append");
        w.finish().expect("finish");
    }
    let store = StoreReader::open(dir.path()).expect("open");
    assert_eq!(store.files().len(), n);
    let train = store.load_split("train", None).expect("train");
    let mut ids = train.ids.clone();
    ids.sort();
    let expected: Vec<String> = (0..n).map(|i| format!("img{i:03}")).collect();
    assert_eq!(ids, expected);
}
