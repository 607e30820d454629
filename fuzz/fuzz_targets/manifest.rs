//! The manifest loader: any file in the config directory, through parsing, the store and
//! translation. Nothing may panic; every problem is a rejection naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::source::manifest::parse_manifests;
use weir::store::Store;
use weir::translate::{translate, TranslateOptions};

fuzz_target!(|data: &[u8]| {
    // the directory source reads files as UTF-8 and rejects the others before parsing
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (objects, rejections) = parse_manifests(text, "fuzz.yaml");
    for r in &rejections {
        assert_eq!(r.file, "fuzz.yaml");
        assert!(!r.reason.is_empty(), "a rejection says why");
    }
    let mut store = Store::default();
    for o in objects {
        store.apply(o, "fuzz.yaml");
    }
    let model = translate(&store, &TranslateOptions::defaults("weir"));
    for r in &model.rejections {
        assert!(!r.reason.is_empty(), "a rejection says why: {r:?}");
    }
});
