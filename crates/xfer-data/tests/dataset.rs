//! Listing class folders and CSV manifests.

mod common;

use xfer_data::{DataError, Dataset, DatasetSource, load_image};

fn tiny_png() -> Vec<u8> {
    common::png(&common::test_image(4, 4))
}

#[test]
fn class_folders_are_sorted_recursive_and_skip_hidden_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = tiny_png();
    common::write(&root.join("dog/b.png"), &png);
    common::write(&root.join("dog/nested/deeper/c.JPG"), &png);
    common::write(&root.join("cat/a.png"), &png);
    common::write(&root.join("cat/.hidden.png"), &png);
    common::write(&root.join("cat/.hiddendir/x.png"), &png);
    common::write(&root.join("cat/readme.txt"), b"not an image");
    common::write(&root.join(".git/objects/y.png"), &png);
    common::write(&root.join("loose.png"), &png);
    common::write(&root.join("Zebra/z.webp"), &png);
    let ds = Dataset::open(root).expect("open");
    assert_eq!(ds.source(), &DatasetSource::ClassFolders);
    // Byte order, like Python's sorted(): uppercase before lowercase.
    assert_eq!(ds.classes(), ["Zebra", "cat", "dog"]);
    let listed = ids_and_labels(&ds);
    assert_eq!(
        listed,
        [
            ("Zebra/z.webp", 0),
            ("cat/a.png", 1),
            ("dog/b.png", 2),
            ("dog/nested/deeper/c.JPG", 2)
        ]
    );
    assert_eq!(ds.counts_per_class(), [1, 1, 2]);
    assert_eq!(ds.class_name(2), Some("dog"));
    assert_eq!(ds.class_name(3), None);
    assert!(ds.examples().iter().all(|e| e.path.exists()));
}

#[cfg(unix)]
#[test]
fn non_utf8_names_are_listed_and_loadable() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = OsStr::from_bytes(b"caf\xe9.png");
    let path = dir.path().join("cat").join(name);
    common::write(&path, &tiny_png());
    let ds = Dataset::open(dir.path()).expect("open");
    assert_eq!(ds.len(), 1);
    let example = &ds.examples()[0];
    // Issue 18 item 8: the invalid byte is escaped (was U+FFFD, which made ids collide).
    assert_eq!(example.id, "cat/caf\\xe9.png");
    assert_eq!(example.path, path);
    load_image(&example.path, 4, 4).expect("non-UTF-8 path loads");
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_reported_not_followed_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    common::write(&root.join("cat/a.png"), &tiny_png());
    std::os::unix::fs::symlink(root.join("cat"), root.join("cat/again")).expect("dir loop");
    std::os::unix::fs::symlink(root.join("cat/self.png"), root.join("cat/self.png"))
        .expect("file loop");
    let ds = Dataset::open(root).expect("open");
    assert_eq!(ds.len(), 1, "{:?}", ds.examples());
    let problems: Vec<String> = ds
        .listing_problems()
        .iter()
        .map(|p| format!("{}: {}", p.path.display(), p.reason))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("again") && p.contains("symlink loop")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("self.png") && p.contains("symlink loop")),
        "{problems:?}"
    );
}

#[test]
fn empty_or_missing_datasets_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Dataset::open(dir.path()).expect_err("no classes");
    assert!(
        matches!(err, DataError::InvalidDataset { .. })
            && err.to_string().contains("class subfolders"),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("cat")).expect("mkdir");
    let err = Dataset::open(dir.path()).expect_err("no images");
    assert!(err.to_string().contains("no images"), "{err}");
    let err = Dataset::open(&dir.path().join("missing")).expect_err("missing");
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    let file = dir.path().join("x.txt");
    common::write(&file, b"x");
    assert!(matches!(
        Dataset::open(&file),
        Err(DataError::InvalidDataset { .. })
    ));
}

/// `(id, label)` of every example, in the dataset's order.
fn ids_and_labels(ds: &Dataset) -> Vec<(&str, u32)> {
    ds.examples()
        .iter()
        .map(|e| (e.id.as_str(), e.label))
        .collect()
}

fn every_path_resolves(ds: &Dataset) {
    for e in ds.examples() {
        load_image(&e.path, 4, 4).expect("manifest path resolves");
    }
}

#[test]
fn csv_manifest_paths_are_relative_to_the_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = tiny_png();
    common::write(&root.join("imgs/one.png"), &png);
    common::write(&root.join("imgs/two, three.png"), &png);
    common::write(&root.join("imgs/four.png"), &png);
    let csv = root.join("list.csv");
    common::write(
        &csv,
        b"path,label\nimgs/one.png,10\n\"imgs/two, three.png\",2\r\nimgs/four.png,10\n",
    );
    let ds = Dataset::open(&csv).expect("open csv");
    assert_eq!(ds.source(), &DatasetSource::CsvManifest);
    // Integer labels sort numerically: "2" before "10".
    assert_eq!(ds.classes(), ["2", "10"]);
    let listed = ids_and_labels(&ds);
    assert_eq!(
        listed,
        [
            ("imgs/four.png", 1),
            ("imgs/one.png", 1),
            ("imgs/two, three.png", 0)
        ]
    );
    every_path_resolves(&ds);
}

#[test]
fn csv_manifest_errors_name_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    common::write(&csv, b"a.png,cat\nb.png\n");
    let err = Dataset::open(&csv).expect_err("short row");
    assert!(
        matches!(err, DataError::Manifest { line: 2, .. }),
        "{err:?}"
    );
    common::write(&csv, b"a.png,cat\na.png,dog\n");
    let err = Dataset::open(&csv).expect_err("duplicate");
    assert!(
        err.to_string().contains("bad.csv:2") && err.to_string().contains("twice"),
        "{err}"
    );
    common::write(&csv, b"path,label\n");
    assert!(matches!(
        Dataset::open(&csv),
        Err(DataError::InvalidDataset { .. })
    ));
}

#[test]
fn csv_manifest_quoted_fields_hold_commas_and_line_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = tiny_png();
    common::write(&root.join("tabby, grey.png"), &png);
    common::write(&root.join("two\nlines.png"), &png);
    common::write(&root.join("plain.png"), &png);
    let csv = root.join("list.csv");
    common::write(
        &csv,
        b"path,label\n\"tabby, grey.png\",\"cat, indoor\"\n\"two\nlines.png\",dog\nplain.png,dog\n",
    );
    let ds = Dataset::open(&csv).expect("quoted comma and line break");
    assert_eq!(ds.classes(), ["cat, indoor", "dog"]);
    let listed = ids_and_labels(&ds);
    assert_eq!(
        listed,
        [
            ("plain.png", 1),
            ("tabby, grey.png", 0),
            ("two\nlines.png", 1)
        ]
    );
    every_path_resolves(&ds);
    // Line numbers count the line break inside the quoted field: the duplicate is on line 5.
    common::write(
        &csv,
        b"path,label\n\"two\nlines.png\",dog\nplain.png,dog\nplain.png,cat\n",
    );
    let err = Dataset::open(&csv).expect_err("duplicate");
    assert!(
        matches!(err, DataError::Manifest { line: 5, .. }),
        "{err:?}"
    );
    common::write(&csv, b"plain.png,dog\n\"open.png,cat\n");
    let err = Dataset::open(&csv).expect_err("unterminated quote");
    assert!(err.to_string().contains("unterminated"), "{err}");
}

/// Issue 18 item 5: Excel's "CSV UTF-8" starts with a byte order mark; the header is still
/// a header, not a data row with a phantom class `label`.
#[test]
fn csv_manifest_with_a_utf8_bom_reads_its_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = tiny_png();
    common::write(&root.join("a.png"), &png);
    common::write(&root.join("b.png"), &png);
    let csv = root.join("excel.csv");
    common::write(
        &csv,
        b"\xef\xbb\xbfpath,label\r\na.png,cat\r\nb.png,dog\r\n",
    );
    let ds = Dataset::open(&csv).expect("BOM manifest opens");
    assert_eq!(ds.classes(), ["cat", "dog"]);
    assert_eq!(ids_and_labels(&ds), [("a.png", 0), ("b.png", 1)]);
}

/// Issue 18 item 6: `img/00.png` and `./img/00.png` are the same file; the manifest is
/// refused with a message naming both lines, and paths are listed in their normal form.
#[test]
fn csv_manifest_listing_one_file_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = tiny_png();
    common::write(&root.join("img/00.png"), &png);
    common::write(&root.join("img/01.png"), &png);
    let csv = root.join("twice.csv");
    common::write(
        &csv,
        b"path,label\nimg/00.png,cat\nimg/01.png,dog\n./img/00.png,cat\n",
    );
    let err = Dataset::open(&csv).expect_err("one file listed twice");
    let text = err.to_string();
    assert!(
        matches!(err, DataError::Manifest { line: 4, .. }),
        "{err:?}"
    );
    assert!(
        text.contains("img/00.png") && text.contains("twice") && text.contains("line 2"),
        "{text}"
    );
    common::write(&csv, b"img/./00.png,cat\nimg/sub/../01.png,dog\n");
    let ds = Dataset::open(&csv).expect("normalised paths");
    assert_eq!(ids_and_labels(&ds), [("img/00.png", 0), ("img/01.png", 1)]);
    every_path_resolves(&ds);
}

/// Issue 18 item 8: two non-UTF-8 names that differ only in their invalid bytes get two
/// ids (an escaped form, `\xHH`, with `\` written `\\`), and each id leads back to its file.
#[cfg(unix)]
#[test]
fn non_utf8_names_get_unique_ids_that_round_trip() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let png = tiny_png();
    for name in [&b"x\xff.png"[..], b"x\xfe.png", b"x\\xff.png"] {
        common::write(&dir.path().join("cat").join(OsStr::from_bytes(name)), &png);
    }
    let ds = Dataset::open(dir.path()).expect("open");
    let ids: Vec<&str> = ds.examples().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 3, "ids collide: {ids:?}");
    for example in ds.examples() {
        let back = xfer_data::id_to_path(&example.id);
        assert_eq!(dir.path().join(back), example.path, "{}", example.id);
    }
}
