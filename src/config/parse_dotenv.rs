//! `.env` / `.dotenv` config files, the subset of viper's dotenv reader
//! (gotenv) whose meaning is certain: `KEY=value`, `export KEY=value`,
//! `KEY: value`, single quotes (literal), double quotes (`\n`, `\"`,
//! `\\`, `\$`), `# comments` after whitespace. What gotenv would rewrite
//! in ways a reader does not expect (`$VAR` expansion, a `#` glued to
//! a value, backslashes outside quotes, multi-line values) is refused
//! rather than guessed.

use super::value::{ParseError, Section, Value};

pub fn parse(text: &str) -> Result<Section, ParseError> {
    let mut out = Section::default();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        let body = match body.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => body,
        };
        let column = |rest: &str| line.len() - rest.len() + 1;
        let key_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(body.len());
        let (key, rest) = body.split_at(key_len);
        if key.is_empty() {
            return Err(ParseError::at(
                number,
                indent + 1,
                "expected KEY=value (a key is letters, digits, _ and .)",
            ));
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        let Some(rest) = rest.strip_prefix(['=', ':']) else {
            return Err(ParseError::at(
                number,
                column(rest),
                format!("expected = after {key}"),
            ));
        };
        let rest = rest.trim_start_matches([' ', '\t']);
        let value = value(rest).map_err(|(offset, problem)| {
            ParseError::at(number, column(rest) + offset, format!("{key}: {problem}"))
        })?;
        // An empty value is an unset setting, as an empty variable is.
        if value.is_empty() {
            continue;
        }
        out.insert(key, Value::Scalar(value))
            .map_err(|p| ParseError::at(number, indent + 1, p))?;
    }
    Ok(out)
}

/// The value at the start of `rest`, or the offset and cause of a refusal.
fn value(rest: &str) -> Result<String, (usize, String)> {
    let (value, after) = if let Some(inner) = rest.strip_prefix('\'') {
        let (value, after) = inner
            .split_once('\'')
            .ok_or((0, "the quote is not closed on this line".to_string()))?;
        (value.to_string(), after)
    } else if let Some(inner) = rest.strip_prefix('"') {
        double_quoted(inner)?
    } else {
        let cut = comment_start(rest).unwrap_or(rest.len());
        let value = rest.get(..cut).unwrap_or(rest).trim_end();
        if let Some(i) = value.find('#') {
            return Err((
                i,
                "a # inside an unquoted value is ambiguous: quote the value".into(),
            ));
        }
        if let Some(i) = value.find(['$', '\\']) {
            return Err((
                i,
                "$ and \\ are rewritten in unquoted values: use single quotes".into(),
            ));
        }
        if value.starts_with(['"', '\'']) {
            return Err((0, "the quote is not closed".into()));
        }
        return Ok(value.to_string());
    };
    let trailing = after.trim_start_matches([' ', '\t']);
    if !(trailing.is_empty() || trailing.starts_with('#')) {
        return Err((
            rest.len() - trailing.len(),
            "unexpected text after the quoted value".into(),
        ));
    }
    Ok(value)
}

/// Where a `# comment` starts: a `#` after a space or tab.
fn comment_start(text: &str) -> Option<usize> {
    [" #", "\t#"]
        .iter()
        .filter_map(|p| text.find(p))
        .min()
        .map(|i| i + 1)
}

fn double_quoted(inner: &str) -> Result<(String, &str), (usize, String)> {
    let mut out = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, inner.get(i + 1..).unwrap_or(""))),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, c @ ('"' | '\\' | '$'))) => out.push(c),
                _ => {
                    return Err((
                        i + 1,
                        "unknown escape in double quotes: use \\n, \\r, \\\", \\\\ or \\$".into(),
                    ))
                }
            },
            '$' => {
                return Err((
                    i + 1,
                    "variable expansion ($NAME) is not supported: write \\$ or use single quotes"
                        .into(),
                ))
            }
            c => out.push(c),
        }
    }
    Err((0, "the quote is not closed on this line".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_quotes() {
        let m = parse(
            "# settings\n\
             export WALG_FILE_PREFIX=/b\n\
             WALG_LIBSODIUM_KEY=\"k\\\"ey\" # comment\n\
             WALG_S3_PREFIX = 's3://b/p#x'\n\
             walg_log_level: DEVEL # c\n\
             EMPTY=\n\
             CRLF=v\r\n",
        )
        .unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/b"));
        assert_eq!(m.scalar("WALG_LIBSODIUM_KEY"), Some("k\"ey"));
        assert_eq!(m.scalar("WALG_S3_PREFIX"), Some("s3://b/p#x"));
        assert_eq!(m.scalar("WALG_LOG_LEVEL"), Some("DEVEL"));
        assert_eq!(m.scalar("CRLF"), Some("v"));
        assert!(m.get("EMPTY").is_none());
    }

    #[test]
    fn ambiguous_lines_are_refused_with_their_place() {
        for bad in [
            "A=$HOME/x\n",
            "A=\"$HOME\"\n",
            "A=x#y\n",
            "A=\"open\n",
            "A='x' junk\n",
            "just words\n",
            "A=c:\\dir\n",
            "a=1\nA=2\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.line.is_some() && e.column.is_some(), "{bad:?}: {e:?}");
        }
        assert_eq!(parse("A=1\n  B x\n").unwrap_err().line, Some(2));
    }
}
