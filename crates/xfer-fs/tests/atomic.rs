//! The atomic writer: content replaced whole, no temporary file left behind,
//! errors naming the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use xfer_fs::{AtomicFile, Error, read, read_json, write_atomic, write_json};

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_replaces_the_content_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.json");
    write_atomic(&path, b"old content, longer than the new").expect("first write");
    write_atomic(&path, b"new").expect("second write");
    assert_eq!(std::fs::read(&path).expect("read"), b"new");
    assert_eq!(entries(dir.path()), ["model.json"]);
}

#[test]
fn write_atomic_creates_missing_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/c.bin");
    write_atomic(&path, &[1, 2, 3]).expect("write");
    assert_eq!(read(&path).expect("read"), [1, 2, 3]);
    assert_eq!(entries(&dir.path().join("a/b")), ["c.bin"]);
}

#[test]
fn streamed_file_is_published_only_at_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("part.parquet");
    std::fs::write(&path, b"previous").expect("seed");

    let mut file = AtomicFile::create(&path).expect("create");
    file.write_all(b"hello, ").expect("write");
    file.write_all(b"world").expect("write");
    file.sync().expect("sync");
    let temp = file.temp_path().to_path_buf();
    assert!(temp.is_file());
    assert_eq!(temp.parent(), Some(dir.path()));
    let temp_name = temp
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(temp_name.starts_with(".part.parquet."), "{temp_name}");
    assert!(temp_name.ends_with(".tmp"), "{temp_name}");
    assert_eq!(std::fs::read(&path).expect("read"), b"previous");
    assert_eq!(file.path(), path);

    file.commit().expect("commit");
    assert_eq!(std::fs::read(&path).expect("read"), b"hello, world");
    assert!(!temp.exists());
    assert_eq!(entries(dir.path()), ["part.parquet"]);
}

#[test]
fn dropping_an_uncommitted_file_removes_it_and_keeps_the_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("curves.png");
    std::fs::write(&path, b"old").expect("seed");
    let mut file = AtomicFile::create_with_suffix(&path, ".png").expect("create");
    file.write_all(b"half a picture").expect("write");
    let temp = file.temp_path().to_path_buf();
    assert!(temp.to_string_lossy().ends_with(".tmp.png"), "{temp:?}");
    assert!(temp.is_file());
    drop(file);
    assert!(!temp.exists());
    assert_eq!(std::fs::read(&path).expect("read"), b"old");
    assert_eq!(entries(dir.path()), ["curves.png"]);
}

#[test]
fn a_failed_rename_names_the_file_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A non-empty folder cannot be replaced by a file.
    let path = dir.path().join("occupied");
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("keep"), b"x").expect("seed");

    let err = write_atomic(&path, b"data").expect_err("rename over a folder");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(err.op(), "renaming into");
    assert_eq!(err.path(), path);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(entries(dir.path()), ["occupied"]);
    assert_eq!(entries(&path), ["keep"]);
}

#[test]
fn a_file_in_a_missing_place_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The "folder" is a file, so neither it nor the temporary file can be created.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").expect("seed");
    let path = blocker.join("model.onnx");
    let err = AtomicFile::create(&path).expect_err("parent is a file");
    assert_eq!(err.path(), blocker);
    assert_eq!(err.op(), "creating");

    let missing = dir.path().join("missing.bin");
    let err = read(&missing).expect_err("missing file");
    assert_eq!(err.path(), missing);
    assert_eq!(err.op(), "reading");
    assert!(err.to_string().starts_with("reading "), "{err}");
}

#[test]
fn json_round_trip_and_parse_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("head.json");
    let value = serde_json::json!({"classes": ["cat", "dog"], "dim": 2048});
    write_json(&path, &value).expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.ends_with("}\n"), "{text:?}");
    let back: serde_json::Value = read_json(&path).expect("parse");
    assert_eq!(back, value);

    std::fs::write(&path, b"{ not json").expect("corrupt");
    let err = read_json::<serde_json::Value>(&path).expect_err("corrupt json");
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
    assert_eq!(err.op(), "parsing");
    assert_eq!(err.path(), path);
}
