//! Named split assignments: defaults, overlap refusal, separately given specs, stratification.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use xfer_data::{
    DEFAULT_SEED, DEMO_SPLITS, DataError, Example, SplitAssignment, SplitSpec, seeded_order,
    split_examples,
};

/// `sizes[c]` examples of class `c`, ids `c{c}/{i}.png`.
fn examples(sizes: &[usize]) -> Vec<Example> {
    let mut out = Vec::new();
    for (class, &n) in sizes.iter().enumerate() {
        for i in 0..n {
            out.push(Example {
                id: format!("c{class}/{i:04}.png"),
                path: PathBuf::from(format!("/nowhere/c{class}/{i}.png")),
                label: class as u32,
            });
        }
    }
    out
}

fn ids(list: &[Example]) -> Vec<String> {
    list.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn the_defaults_are_the_seeded_70_15_15_split() {
    assert_eq!(
        DEMO_SPLITS,
        "train=train[:70%],val=train[70%:85%],test=train[85%:]"
    );
    assert_eq!(DEFAULT_SEED, 1337);
    let all = examples(&[60, 40]);
    let demo = SplitAssignment::parse(DEMO_SPLITS).expect("demo");
    assert_eq!(demo.names(), ["train", "val", "test"]);
    assert!(!demo.is_stratified());
    let chosen = demo.select(&all, DEFAULT_SEED).expect("select");
    let order = seeded_order(&all, DEFAULT_SEED);
    assert_eq!(ids(&chosen[0].1), ids(&order[..70]));
    assert_eq!(ids(&chosen[1].1), ids(&order[70..85]));
    assert_eq!(ids(&chosen[2].1), ids(&order[85..]));
    // `assign` tags the same examples, in the seeded order of the whole dataset.
    let tagged = demo.assign(&all, DEFAULT_SEED).expect("assign");
    assert_eq!(tagged.len(), 100);
    assert_eq!(tagged[0].0.id, order[0].id);
    assert_eq!(tagged[0].1, "train");
    assert_eq!(tagged[99].1, "test");
}

#[test]
fn overlapping_splits_are_refused_naming_each_pair_and_the_images_they_share() {
    let all = examples(&[50, 50]);
    let three = SplitAssignment::parse("a=train[:60%],b=train[50%:],c=train[55%:65%]")
        .expect("parses: overlap is a property of the data");
    let err = three.select(&all, 7).expect_err("overlap");
    let DataError::OverlappingSplits { overlaps, .. } = &err else {
        panic!("{err:?}");
    };
    let pairs: Vec<(&str, &str, usize)> = overlaps
        .iter()
        .map(|o| (o.first.as_str(), o.second.as_str(), o.shared))
        .collect();
    assert_eq!(pairs, [("a", "b", 10), ("a", "c", 5), ("b", "c", 10)]);
    let text = err.to_string();
    for part in [
        "`a` and `b` share 10 image(s)",
        "`a` and `c` share 5 image(s)",
        "`b` and `c` share 10 image(s)",
        "overlap",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(three.assign(&all, 7).is_err());
}

#[test]
fn separately_given_specs_are_checked_for_overlap_too() {
    let all = examples(&[30, 70]);
    // finetune's `--train train[:80%] --test train[70%:]`: 10% of the images in both.
    let leaky = SplitAssignment::from_named(&[
        ("train", "train[:80%]"),
        ("val", ""),
        ("test", "train[70%:]"),
    ])
    .expect("parses");
    assert_eq!(leaky.names(), ["train", "test"]);
    let err = leaky.select(&all, DEFAULT_SEED).expect_err("leak");
    assert!(
        err.to_string()
            .contains("`train` and `test` share 10 image(s)"),
        "{err}"
    );
    let fine = SplitAssignment::from_named(&[
        ("train", "train[:70%]"),
        ("val", "train[70%:85%]"),
        ("test", "train[85%:]"),
    ])
    .expect("parses");
    let demo = SplitAssignment::parse(DEMO_SPLITS).expect("demo");
    assert_eq!(fine.to_string(), DEMO_SPLITS);
    assert_eq!(
        fine.select(&all, 3).expect("disjoint"),
        demo.select(&all, 3).expect("disjoint")
    );
    let err = SplitAssignment::from_named(&[("train", "train[:5x]")]).expect_err("bad spec");
    assert!(err.to_string().contains("5x"), "{err}");
    let err = SplitAssignment::from_named(&[("a b", "train")]).expect_err("bad name");
    assert!(err.to_string().contains("letters"), "{err}");
}

/// Per split, per class: how many examples.
fn counts(chosen: &[(String, Vec<Example>)]) -> BTreeMap<(String, u32), usize> {
    let mut out = BTreeMap::new();
    for (name, list) in chosen {
        for e in list {
            *out.entry((name.clone(), e.label)).or_default() += 1;
        }
    }
    out
}

#[test]
fn stratified_splits_keep_every_class_share_within_one_image() {
    let sizes = [17usize, 29, 54];
    let all = examples(&sizes);
    let fractions = [("train", 0.70), ("val", 0.15), ("test", 0.15)];
    let demo = SplitAssignment::parse(DEMO_SPLITS).expect("demo");
    let stratified = demo.clone().stratified(true);
    assert!(stratified.is_stratified());
    for seed in [DEFAULT_SEED, 1, 2, 3] {
        let chosen = stratified.select(&all, seed).expect("disjoint");
        let per = counts(&chosen);
        for (name, fraction) in fractions {
            for (class, &n) in sizes.iter().enumerate() {
                let got = per
                    .get(&(name.to_owned(), class as u32))
                    .copied()
                    .unwrap_or(0);
                let want = fraction * n as f64;
                assert!(
                    (got as f64 - want).abs() <= 1.0,
                    "seed {seed} {name} class {class}: {got} vs {want}"
                );
            }
        }
        // Every example in exactly one split.
        let tagged = stratified.assign(&all, seed).expect("assign");
        let unique: HashSet<&str> = tagged.iter().map(|(e, _)| e.id.as_str()).collect();
        assert_eq!((tagged.len(), unique.len()), (100, 100));
    }
    // Without the flag, the plain slices of the whole order (the old behaviour), whose
    // class shares drift by more than one image on this data.
    let plain = demo.select(&all, DEFAULT_SEED).expect("plain");
    for (name, list) in &plain {
        let spec = demo
            .specs()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .expect("spec");
        assert_eq!(
            ids(list),
            ids(&split_examples(&all, &spec, DEFAULT_SEED).expect("split"))
        );
    }
    let per = counts(&plain);
    let drift = fractions
        .iter()
        .flat_map(|&(name, fraction)| {
            let per = &per;
            sizes.iter().enumerate().map(move |(class, &n)| {
                let got = per
                    .get(&(name.to_owned(), class as u32))
                    .copied()
                    .unwrap_or(0);
                (got as f64 - fraction * n as f64).abs()
            })
        })
        .fold(0.0f64, f64::max);
    assert!(drift > 1.0, "plain slices happen to be balanced: {drift}");
    // A stratified assignment is the stratified specs.
    let spec = SplitSpec::parse("train[:70%]")
        .expect("spec")
        .stratified(true);
    assert_eq!(
        ids(&stratified.select(&all, 5).expect("select")[0].1),
        ids(&split_examples(&all, &spec, 5).expect("split"))
    );
}
