//! The path normalizer: its output is what routes, what authorization checks and what is
//! forwarded, so it must be a fixed point, hold no dot segment or empty segment, and keep no
//! percent-encoding of an unreserved character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::routing::normalize_path;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fuzz_target!(|path: &str| {
    let Ok(normal) = normalize_path(path) else { return };
    assert_eq!(normalize_path(&normal).as_deref(), Ok(&*normal), "normalizing {path:?} twice changes it");
    if path.is_empty() || path == "*" {
        assert_eq!(normal, path);
        return;
    }
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(*s != "." && *s != "..", "{path:?} -> {normal:?} keeps a dot segment");
        assert!(!s.is_empty() || i == segments.len() - 1, "{path:?} -> {normal:?} keeps an empty segment");
    }
    let b = normal.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = &normal[i + 1..i + 3];
            assert_eq!(hex, hex.to_ascii_uppercase(), "{path:?} -> {normal:?}: lower-case hex");
            let byte = u8::from_str_radix(hex, 16).unwrap();
            assert!(!is_unreserved(byte), "{path:?} -> {normal:?}: %{hex} should be decoded");
        }
    }
});
