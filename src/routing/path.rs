//! Request path normalization (RFC 3986 §6.2.2): what routes, what authorization checks and what
//! is forwarded is one and the same path.
//!
//! Percent-encoded unreserved characters are decoded (`%2e` is `.`, `%61` is `a`), other
//! percent-encodings get upper-case hex (`%2f` stays encoded, as `%2F`), repeated slashes merge,
//! and `.` and `..` segments are removed (§5.2.4). A path whose `..` climbs above the root is
//! refused: no backend may be asked for it. So is a `%` not followed by two hex digits (as nginx
//! refuses it): left as it was, `/%2%65` would normalize to `/%2e`, which a backend decodes once
//! more to a dot segment that routing never saw. Without this, `/charge/../refund` passed a rule for
//! `/charge` and reached the app, which resolved it to `/refund`.

use std::borrow::Cow;

/// A path that cannot be normalized; answered 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path climbs above the root with `..`")]
    AboveRoot,
    #[error("the request path has a `%` not followed by two hex digits (write a literal `%` as %25)")]
    BadPercent,
}

/// The normalized form of `path` (an origin-form path, without the query). The common case, a
/// path already normal, is returned as it is, without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `path` is already normal: starts with `/` (or is `*`, or empty as in a CONNECT's
/// authority form, neither of which is a path to normalize), holds no `%`, no empty segment but
/// a final one, and no `.` or `..` segment.
fn is_normal(path: &str) -> bool {
    if path.is_empty() || path == "*" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else { return false };
    if rest.contains('%') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if (s.is_empty() && !last) || s == "." || s == ".." {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of the others; a `%` not
/// followed by two hex digits is an error.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 1);
    if !path.starts_with('/') {
        out.push(b'/');
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) else {
                return Err(PathError::BadPercent);
            };
            let v = hi << 4 | lo;
            if is_unreserved(v) {
                out.push(v);
            } else {
                out.extend([b'%', b[i + 1].to_ascii_uppercase(), b[i + 2].to_ascii_uppercase()]);
            }
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    // only ASCII bytes were replaced by ASCII bytes, so the text stays valid UTF-8
    Ok(String::from_utf8(out).expect("normalizing keeps a path valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b", "/a/b/", "/a.b/c..d/.e", "*", "", "/a/b?c"] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_slashes_and_encodings_are_normalized() {
        for (raw, normal) in [
            ("/api/../admin", "/admin"),
            ("/charge/../refund", "/refund"),
            ("/charge/%2e%2e/refund", "/refund"),
            ("/charge/%2E%2E/refund", "/refund"),
            ("/charge/.%2e/refund", "/refund"),
            ("/charge//../refund", "/refund"),
            ("//charge", "/charge"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a/b/", "/a/b/"),
            ("/a//", "/a/"),
            ("/%61pi/%7Euser", "/api/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/%41%42", "/AB"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn a_percent_without_two_hex_digits_is_refused() {
        // `%2%65` would become `%2e` (found by the path fuzz target): a dot segment for the backend
        for raw in ["/100%", "/%zz/x/..", "/a/%2%65%2%65/admin", "/%e%44", "/a%", "/a%4"] {
            assert_eq!(normalize_path(raw), Err(PathError::BadPercent), "{raw}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for raw in ["/..", "/../etc/passwd", "/a/../..", "/%2e%2e/x", "/a/%2E%2E/%2e%2e/b"] {
            assert_eq!(normalize_path(raw), Err(PathError::AboveRoot), "{raw}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in ["/a/../b//c/./d/", "/%2e/x%2fy", "/%7e%41/..//z"] {
            let once = normalize_path(raw).unwrap().into_owned();
            assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }
}
