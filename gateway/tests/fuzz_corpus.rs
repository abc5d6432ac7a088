//! Replays every seed of the checked-in fuzz corpora (`gateway/fuzz/corpus/<target>/`) through
//! its decoder with the fuzz harness's checks, on the stable compiler and without libFuzzer, so
//! CI keeps the corpus valid and every past finding fixed. `scripts/fuzz.sh` does the fuzzing.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]) -> usize;

/// Every fuzz target, with its harness.
const TARGETS: &[(&str, Harness)] = &[
    ("canonical", harness::canonical),
    ("zigbee2mqtt", harness::zigbee2mqtt),
    ("json_map", harness::json_map),
    ("mr60fda1", harness::mr60fda1),
    ("modbus", harness::modbus),
    ("register_map", harness::register_map),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_of_every_corpus_passes_its_harness() {
    let mut failures = Vec::new();
    for (target, run) in TARGETS {
        let seeds = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(seeds.len() >= 5, "{target}: only {} seeds", seeds.len());
        let mut productive = 0;
        for seed in &seeds {
            let data = std::fs::read(seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
            match std::panic::catch_unwind(|| run(&data)) {
                Ok(n) => productive += usize::from(n > 0),
                Err(_) => failures.push(seed.display().to_string()),
            }
        }
        // Seeds that all fail the first check would leave the fuzzer at the door.
        assert!(
            productive * 4 >= seeds.len(),
            "{target}: only {productive} of {} seeds decode to something",
            seeds.len()
        );
    }
    assert!(failures.is_empty(), "seeds failing their harness: {failures:#?}");
}

#[test]
fn targets_corpora_and_the_fuzz_manifest_agree() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect();
    bins.sort();
    let mut corpora: Vec<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    targets.sort();
    assert_eq!(bins, targets, "fuzz/Cargo.toml [[bin]] targets");
    assert_eq!(corpora, targets, "fuzz/corpus/ folders");
    for t in &targets {
        assert!(
            fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")).is_file(),
            "fuzz_targets/{t}.rs"
        );
    }
}
