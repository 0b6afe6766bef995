//! Datasets: a folder with one subfolder per class, or a CSV manifest `path,label`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{DataError, Result};

/// File extensions (lower case) that are listed as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// One labelled image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Example {
    /// The path relative to the dataset root, `/`-separated (lossy UTF-8 for non-UTF-8 names).
    pub id: String,
    /// The file to read (exact, also for non-UTF-8 names).
    pub path: PathBuf,
    /// The class index: the position of the class name in [`Dataset::classes`].
    pub label: u32,
}

impl Example {
    /// An unlabelled image given by its path (id: the path as given; label: 0), e.g. an
    /// image named on the command line.
    pub fn from_path(path: &Path) -> Example {
        Example {
            id: path.display().to_string(),
            path: path.to_path_buf(),
            label: 0,
        }
    }
}

/// Where a dataset's examples come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// A folder with one subfolder per class (Keras `image_dataset_from_directory`).
    ClassFolders,
    /// A CSV manifest with `path,label` rows.
    CsvManifest,
}

/// A labelled image collection: classes, examples (sorted by id) and what could not be listed.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    source: DatasetSource,
    classes: Vec<String>,
    examples: Vec<Example>,
    listing_problems: Vec<ListingProblem>,
}

/// A directory entry that was skipped while listing a dataset (symlink loop, unreadable folder, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingProblem {
    /// The entry concerned.
    pub path: PathBuf,
    /// Why it was skipped (symlink loop, permission denied, ...).
    pub reason: String,
}

impl Dataset {
    /// Opens a dataset: a folder with one subfolder per class, or a `.csv` manifest file.
    ///
    /// Class folders: each non-hidden subfolder of `root` is a class; class index = position
    /// of the folder name in sorted (byte) order, as Keras `image_dataset_from_directory`
    /// does. Images are listed recursively by extension ([`IMAGE_EXTENSIONS`],
    /// case-insensitive); hidden files and folders (`.name`) are ignored; files directly in
    /// `root` are ignored. Symlinks are followed; loops and unreadable folders are recorded
    /// in [`Dataset::listing_problems`] instead of failing the whole listing.
    ///
    /// CSV manifest: rows `path,label` (an optional header `path,label`), paths relative to
    /// the CSV's folder and listed in normal form (`./img/a.png` is `img/a.png`; a file
    /// listed twice is refused, naming both lines; a UTF-8 byte order mark is skipped by
    /// the csv reader); classes are the distinct labels in sorted order (numeric order
    /// when every label is a non-negative integer).
    pub fn open(root: &Path) -> Result<Dataset> {
        let meta = fs::metadata(root).map_err(|e| DataError::io("open dataset", root, e))?;
        if meta.is_dir() {
            open_class_folders(root)
        } else if root
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            open_manifest(root)
        } else {
            Err(DataError::InvalidDataset {
                path: root.to_path_buf(),
                reason: "expected a folder with one subfolder per class, or a .csv manifest `path,label`".into(),
            })
        }
    }

    /// The folder (or manifest file) the dataset was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the dataset came from class folders or a CSV manifest.
    pub fn source(&self) -> &DatasetSource {
        &self.source
    }

    /// Class names; a label is an index into this list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The name of class `label`, if it exists.
    pub fn class_name(&self, label: u32) -> Option<&str> {
        self.classes.get(label as usize).map(String::as_str)
    }

    /// All examples, sorted by id.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Entries that were skipped while listing (symlink loops, unreadable folders, ...).
    pub fn listing_problems(&self) -> &[ListingProblem] {
        &self.listing_problems
    }

    /// Number of examples per class, indexed by label.
    pub fn counts_per_class(&self) -> Vec<usize> {
        count_per_class(&self.examples, self.classes.len())
    }
}

/// Number of examples per class (indexed by label) among `examples`, for `num_classes` classes.
pub fn count_per_class(examples: &[Example], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; num_classes];
    for example in examples {
        if let Some(count) = counts.get_mut(example.label as usize) {
            *count += 1;
        }
    }
    counts
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// The id of a relative path: its components joined by `/`. A name that is not valid
/// UTF-8 keeps its valid parts, and each invalid byte is written `\xHH`; `\` is written
/// `\\` so that the escape is unambiguous. [`id_to_path`] is the inverse.
pub(crate) fn relative_id(rel: &Path) -> String {
    let mut id = String::new();
    for component in rel.components() {
        if let Component::Normal(part) = component {
            if !id.is_empty() {
                id.push('/');
            }
            push_escaped(&mut id, part.as_encoded_bytes());
        }
    }
    id
}

/// Appends `bytes` to `id`: valid UTF-8 as is (with `\` doubled), other bytes as `\xHH`.
fn push_escaped(id: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        id.push_str(&chunk.valid().replace('\\', "\\\\"));
        for byte in chunk.invalid() {
            id.push_str(&format!("\\x{byte:02x}"));
        }
    }
}

/// The relative path an id of a class-folder dataset names (the inverse of the escaping
/// of non-UTF-8 names in ids: `\xHH` is byte HH, `\\` is `\`).
pub fn id_to_path(id: &str) -> PathBuf {
    let mut bytes = Vec::with_capacity(id.len());
    let mut rest = id.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = match (first, tail) {
            (b'\\', [b'\\', after @ ..]) => Some((b'\\', after)),
            (b'\\', [b'x', hi, lo, after @ ..]) => hex_byte(*hi, *lo).map(|b| (b, after)),
            _ => None,
        };
        match escaped {
            Some((byte, after)) => {
                bytes.push(byte);
                rest = after;
            }
            None => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    path_from_bytes(bytes)
}

/// The byte two hex digits spell.
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    Some(u8::try_from(digit(hi)? * 16 + digit(lo)?).unwrap_or(0))
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn open_class_folders(root: &Path) -> Result<Dataset> {
    let mut class_dirs: Vec<(Vec<u8>, String, PathBuf)> = Vec::new();
    let mut problems = Vec::new();
    let entries = fs::read_dir(root).map_err(|e| DataError::io("open directory", root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io("list directory", root, e))?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                class_dirs.push((
                    name.as_encoded_bytes().to_vec(),
                    name.to_string_lossy().into_owned(),
                    path,
                ));
            }
            Ok(_) => {}
            Err(e) => problems.push(ListingProblem {
                path,
                reason: e.to_string(),
            }),
        }
    }
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(DataError::InvalidDataset {
            path: root.to_path_buf(),
            reason: "no class subfolders found; expected ROOT/<class name>/<image files>".into(),
        });
    }
    let mut visited = HashSet::new();
    if let Ok(canonical) = fs::canonicalize(root) {
        visited.insert(canonical);
    }
    let mut examples = Vec::new();
    let mut classes = Vec::new();
    for (label, (_, class_name, dir)) in class_dirs.iter().enumerate() {
        classes.push(class_name.clone());
        let label = u32::try_from(label).map_err(|_| DataError::InvalidDataset {
            path: root.to_path_buf(),
            reason: "too many classes".into(),
        })?;
        walk(root, dir, label, &mut visited, &mut examples, &mut problems);
    }
    if examples.is_empty() {
        return Err(DataError::InvalidDataset {
            path: root.to_path_buf(),
            reason: format!(
                "no images found in the class folders ({}); extensions read: {}",
                classes.join(", "),
                IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    examples.sort();
    Ok(Dataset {
        root: root.to_path_buf(),
        source: DatasetSource::ClassFolders,
        classes,
        examples,
        listing_problems: problems,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    label: u32,
    visited: &mut HashSet<PathBuf>,
    examples: &mut Vec<Example>,
    problems: &mut Vec<ListingProblem>,
) {
    let mut problem = |path: &Path, reason: String| {
        problems.push(ListingProblem {
            path: path.to_path_buf(),
            reason,
        })
    };
    match fs::canonicalize(dir) {
        Ok(canonical) => {
            if !visited.insert(canonical.clone()) {
                problem(
                    dir,
                    format!(
                        "symlink loop or duplicate folder: {} is already listed",
                        canonical.display()
                    ),
                );
                return;
            }
        }
        Err(e) => {
            problem(dir, e.to_string());
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problem(dir, format!("cannot open directory: {e}"));
            return;
        }
    };
    let mut children: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let name = entry.file_name();
                if !is_hidden(&name) {
                    children.push((name.as_encoded_bytes().to_vec(), entry.path()));
                }
            }
            Err(e) => problem(dir, format!("cannot list directory: {e}")),
        }
    }
    children.sort();
    for (_, path) in children {
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(root, &path, label, visited, examples, problems),
            Ok(_) => {
                if has_image_extension(&path) {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    examples.push(Example {
                        id: relative_id(rel),
                        path,
                        label,
                    });
                }
            }
            Err(e) => {
                let reason = if e.raw_os_error() == Some(40) {
                    format!("symlink loop ({e})")
                } else {
                    e.to_string()
                };
                problems.push(ListingProblem { path, reason });
            }
        }
    }
}

/// One record of a CSV manifest: the 1-based line it starts on, and its fields.
type ManifestRecord = (usize, Vec<String>);

/// The records of a CSV manifest, read with the `csv` crate (RFC 4180: a quoted field may
/// hold commas, quotes written `""` and line breaks); blank records are dropped.
fn csv_records(csv: &Path, text: &str) -> Result<Vec<ManifestRecord>> {
    let bad = |line: u64, reason: String| DataError::Manifest {
        path: csv.to_path_buf(),
        line: usize::try_from(line).unwrap_or(usize::MAX),
        reason,
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    let mut last_line = 1;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(last_line, ::csv::Position::line);
            bad(line, e.to_string())
        })?;
        last_line = record.position().map_or(last_line, ::csv::Position::line);
        if record.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        let fields = record.iter().map(str::to_owned).collect();
        records.push((usize::try_from(last_line).unwrap_or(usize::MAX), fields));
    }
    // Quotes come in pairs (`"…"`, `""`): an odd count is a field that never closes, which
    // the csv crate would read to the end of the file.
    if text.matches('"').count() % 2 == 1 {
        return Err(bad(last_line, "unterminated quoted field".into()));
    }
    Ok(records)
}

/// The normal form of a manifest path: `/`-separated, without `.` components, `..` applied
/// to the component before it, so `img/00.png`, `./img/00.png` and `img/x/../00.png` are
/// one id. A leading `/` (an absolute path) and leading `..` are kept.
fn normal_manifest_path(text: &str) -> String {
    let unified = text.replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if unified.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

fn open_manifest(csv: &Path) -> Result<Dataset> {
    let text = fs::read_to_string(csv).map_err(|e| DataError::io("read manifest", csv, e))?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut rows: Vec<(String, PathBuf, String)> = Vec::new();
    let mut seen = BTreeMap::new();
    for (line_no, fields) in csv_records(csv, &text)? {
        let bad = |reason: String| DataError::Manifest {
            path: csv.to_path_buf(),
            line: line_no,
            reason,
        };
        let [path_text, label] = fields.as_slice() else {
            return Err(bad(format!(
                "expected 2 fields `path,label`, found {}",
                fields.len()
            )));
        };
        let (path_text, label) = (path_text.trim(), label.trim());
        if rows.is_empty()
            && seen.is_empty()
            && path_text.eq_ignore_ascii_case("path")
            && label.eq_ignore_ascii_case("label")
        {
            seen.insert(String::new(), 0);
            continue;
        }
        if path_text.is_empty() || label.is_empty() {
            return Err(bad("empty path or label".into()));
        }
        let id = normal_manifest_path(path_text);
        if let Some(first) = seen.insert(id.clone(), line_no) {
            let spelled = if id == path_text {
                String::new()
            } else {
                format!(" (written `{path_text}`)")
            };
            return Err(bad(format!(
                "`{id}`{spelled} is listed twice (first on line {first}); list each image once"
            )));
        }
        rows.push((id.clone(), base.join(&id), label.to_string()));
    }
    if rows.is_empty() {
        return Err(DataError::InvalidDataset {
            path: csv.to_path_buf(),
            reason: "the manifest lists no images; expected rows `path,label`".into(),
        });
    }
    let distinct: BTreeSet<&str> = rows.iter().map(|(_, _, label)| label.as_str()).collect();
    let mut classes: Vec<String> = distinct.into_iter().map(str::to_string).collect();
    if classes.iter().all(|c| c.parse::<u64>().is_ok()) {
        classes.sort_by_key(|c| c.parse::<u64>().unwrap_or(u64::MAX));
    }
    let index: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut examples: Vec<Example> = rows
        .iter()
        .map(|(id, path, label)| Example {
            id: id.clone(),
            path: path.clone(),
            label: index.get(label.as_str()).copied().unwrap_or(0),
        })
        .collect();
    examples.sort();
    Ok(Dataset {
        root: csv.to_path_buf(),
        source: DatasetSource::CsvManifest,
        classes,
        examples,
        listing_problems: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let csv = Path::new("t.csv");
        assert_eq!(
            csv_records(csv, r#""a,b.jpg","c""at""#).expect("parses")[0].1,
            vec!["a,b.jpg".to_string(), "c\"at".to_string()]
        );
        assert!(csv_records(csv, r#""open,cat"#).is_err());
    }
}
