//! The password file (PGPASSFILE, else ~/.pgpass) read with libpq's rules:
//! `hostname:port:database:username:password` lines, a field of exactly
//! `*` matches anything, `\` escapes `:` and `\`, `#` starts a comment, and
//! a file that group or others can read is ignored with a warning.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a password file line is matched against.
pub struct Key<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password of the first matching line, if the file is usable.
pub fn lookup(path: &Path, key: &Key) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        log::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            log::warn!("password file \"{}\" cannot be read: {e}", path.display());
            return None;
        }
    };
    find(&text, key)
}

/// The first line of `text` that matches `key`.
pub fn find(text: &str, key: &Key) -> Option<String> {
    text.lines()
        .find_map(|line| match_line(line.trim_end_matches('\r'), key))
}

fn match_line(line: &str, key: &Key) -> Option<String> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let rest = match_field(line, key.host)?;
    let rest = match_field(rest, key.port)?;
    let rest = match_field(rest, key.database)?;
    let rest = match_field(rest, key.user)?;
    // The password runs to the first unescaped ':' or the end.
    let mut password = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => password.push(next),
                None => password.push('\\'),
            },
            ':' => break,
            c => password.push(c),
        }
    }
    Some(password)
}

/// If the field at the start of `line` matches `value`, the text after its
/// ':' separator (libpq's pwdfMatchesString).
fn match_field<'l>(line: &'l str, value: &str) -> Option<&'l str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = value.chars();
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == ':' && !escaped {
            return match want.next() {
                None => line.get(i + 1..),
                Some(_) => None,
            };
        }
        escaped = false;
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key<'a>(host: &'a str, port: &'a str, database: &'a str, user: &'a str) -> Key<'a> {
        Key {
            host,
            port,
            database,
            user,
        }
    }

    #[test]
    fn pgpass_first_matching_line_wins() {
        let text = "# comment\n\ndb1:5432:app:alice:one\n*:*:*:alice:two\n*:*:*:*:three\n";
        assert_eq!(
            find(text, &key("db1", "5432", "app", "alice")).as_deref(),
            Some("one")
        );
        assert_eq!(
            find(text, &key("db2", "5432", "app", "alice")).as_deref(),
            Some("two")
        );
        assert_eq!(
            find(text, &key("db1", "5433", "app", "bob")).as_deref(),
            Some("three")
        );
        assert_eq!(
            find("db1:5432:app:alice:x", &key("db1", "5432", "app", "bob")),
            None
        );
    }

    #[test]
    fn pgpass_escapes_and_wildcards() {
        // A host with a ':' (IPv6) and a password with ':' and '\'.
        let text = "\\:\\:1:*:*:bob:pa\\:ss\\\\word\n";
        assert_eq!(
            find(text, &key("::1", "1", "d", "bob")).as_deref(),
            Some("pa:ss\\word")
        );
        // '*' is a wildcard only as a whole field; "*x" is literal.
        assert_eq!(find("*x:*:*:*:p", &key("ab", "1", "d", "u")), None);
        assert_eq!(
            find("*x:*:*:*:p", &key("*x", "1", "d", "u")).as_deref(),
            Some("p")
        );
        // A literal '*' escaped in the file matches only '*'.
        assert_eq!(find("\\*:*:*:*:p", &key("h", "1", "d", "u")), None);
        // A password ends at an unescaped ':'; a missing field never matches.
        assert_eq!(
            find("h:1:d:u:pw:junk", &key("h", "1", "d", "u")).as_deref(),
            Some("pw")
        );
        assert_eq!(find("h:1:d:u", &key("h", "1", "d", "u")), None);
        assert_eq!(
            find("h:1:d:u:", &key("h", "1", "d", "u")).as_deref(),
            Some("")
        );
        // Prefixes do not match.
        assert_eq!(find("hh:1:d:u:p", &key("h", "1", "d", "u")), None);
        assert_eq!(find("h:1:d:u:p", &key("hh", "1", "d", "u")), None);
        // CRLF files.
        assert_eq!(
            find("h:1:d:u:p\r\n", &key("h", "1", "d", "u")).as_deref(),
            Some("p")
        );
    }

    #[test]
    fn pgpass_file_readable_by_others_is_ignored() {
        let dir = std::env::temp_dir().join(format!("walden-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let k = key("h", "1", "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &k).as_deref(), Some("secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&path, &k), None);
        assert_eq!(lookup(&dir, &k), None);
        assert_eq!(lookup(&dir.join("missing"), &k), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
