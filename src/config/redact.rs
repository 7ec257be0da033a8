//! Keeping credentials out of what walden prints: the `user:password@`
//! part of any URL in a message or setting value.

use std::borrow::Cow;

const MASK: &str = "***";

/// `text` with the userinfo of every `scheme://user:pass@host` replaced
/// by `***`. In a word (up to whitespace or a quote) that holds `://` and
/// `@`, everything up to the last `@` is masked but a real scheme: a
/// password may itself hold `/`, `@` or `://`, and masking a little too
/// much in a message is harmless.
pub fn urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let separator = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`');
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive(separator) {
        let word = piece.trim_end_matches(separator);
        let tail = piece.get(word.len()..).unwrap_or("");
        if word.contains("://") {
            out.push_str(&mask(word));
        } else {
            out.push_str(word);
        }
        out.push_str(tail);
    }
    Cow::Owned(out)
}

/// A setting value as it may be shown: credentials masked whether or not
/// the URL has a scheme (`user:pass@host:port` is an endpoint too).
pub fn value(value: &str) -> Cow<'_, str> {
    if value.contains(char::is_whitespace) {
        return urls(value);
    }
    mask(value)
}

/// One URL-like word with everything before its last `@` masked, keeping
/// the scheme when there is a real one.
fn mask(word: &str) -> Cow<'_, str> {
    let Some(at) = word.rfind('@') else {
        return Cow::Borrowed(word);
    };
    let host = word.get(at..).unwrap_or("");
    let scheme = word.split_once("://").map(|(s, _)| s).filter(|s| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    Cow::Owned(match scheme {
        Some(s) => format!("{s}://{MASK}{host}"),
        None => format!("{MASK}{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(
            urls("S3 endpoint \"http://user:s3cret@127.0.0.1:1/x\" is bad"),
            "S3 endpoint \"http://***@127.0.0.1:1/x\" is bad"
        );
        assert_eq!(urls("a http://h:1 b"), "a http://h:1 b");
        assert_eq!(
            urls("x=https://u:p/q@w@h y=http://a:b@c"),
            // What comes before a scheme may be part of a password.
            "***@h ***@c"
        );
        assert_eq!(value("user:pw@minio:9000"), "***@minio:9000");
        assert_eq!(value("user:s3://cret@host"), "***@host");
        assert_eq!(
            urls("e \"user:s3://cret@host\": bad"),
            "e \"***@host\": bad"
        );
        assert_eq!(value("/var/lib/walg"), "/var/lib/walg");
        assert_eq!(value("s3://bucket/path"), "s3://bucket/path");
    }
}
