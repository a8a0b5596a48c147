//! The fuzz corpus kept in the repository (tests/fuzz/corpus/<target>/) through the fuzz targets' own entry
//! functions, on stable and without libFuzzer: every seed and every past crash (regression inputs are kept in the
//! corpus) must pass the checks of its target. `tests/fuzz/run` fuzzes the same functions open-ended (nightly).

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = padis_fuzz_entry::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names, "one corpus directory per fuzz target");
    for (name, entry) in padis_fuzz_entry::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(name)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(files.len() >= 3, "{name}: a few seeds at least, found {}", files.len());
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| entry(&data)) {
                padis_fuzz_entry::dns_cleanup();
                std::panic::resume_unwind(Box::new(format!("{}: {:?}", f.display(), e.downcast_ref::<String>())));
            }
        }
    }
    padis_fuzz_entry::dns_cleanup();
}
