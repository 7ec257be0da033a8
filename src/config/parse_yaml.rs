//! YAML config files. The parser only yields events; the tree is built
//! here, on an explicit stack with a depth limit, and plain scalars are
//! resolved the way WAL-G's YAML decoder (go-yaml v3) and viper's string
//! conversion see them: `0x10` is 16, `010` is 8 (YAML 1.1 octal, which
//! go-yaml still reads), `TRUE` is true, `~` is unset.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use super::value::{go_float, integer_text, shorten, ParseError, Section, Value, MAX_DEPTH};

enum Frame {
    Map {
        section: Section,
        /// The key read, waiting for its value (None is an unset value).
        key: Option<(String, Span)>,
    },
    List(Vec<Value>),
}

pub fn parse(text: &str) -> Result<Section, ParseError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Section> = None;
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            ParseError::at(
                e.marker().line(),
                e.marker().col() + 1,
                format!("not valid YAML: {}", e.info()),
            )
        })?;
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(at(span, "more than one YAML document in the file"));
                }
            }
            Event::Alias(_) => return Err(at(span, "YAML aliases (*name) are not supported")),
            Event::Scalar(text, style, _, tag) => {
                let value = resolve(&text, style, tag.as_deref()).map_err(|p| at(span, p))?;
                match stack.last_mut() {
                    Some(Frame::Map {
                        key: key @ None, ..
                    }) => {
                        // A key is taken as written; an unset key is no key.
                        if value.is_none() {
                            return Err(at(span, "an empty key is not a setting name"));
                        }
                        *key = Some((text.into_owned(), span));
                    }
                    Some(_) => add(&mut stack, value, span)?,
                    // A document that is a lone scalar: only an empty one
                    // is accepted (a file of comments).
                    None if value.is_none() => {}
                    None => return Err(at(span, "the top level is not a mapping of settings")),
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if matches!(stack.last(), Some(Frame::Map { key: None, .. })) {
                    return Err(at(span, "a key must be a plain value"));
                }
                if stack.is_empty() && matches!(event, Event::SequenceStart(..)) {
                    return Err(at(span, "the top level is a list, not settings"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(at(
                        span,
                        format!("sections are nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Map {
                        section: Section::default(),
                        key: None,
                    },
                    _ => Frame::List(Vec::new()),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let value = match stack.pop() {
                    Some(Frame::Map { section, .. }) => Value::Map(section),
                    Some(Frame::List(items)) => Value::List(items),
                    None => return Err(at(span, "unbalanced YAML structure")),
                };
                if stack.is_empty() {
                    match value {
                        Value::Map(section) => root = Some(section),
                        _ => return Err(at(span, "the top level is not a mapping of settings")),
                    }
                } else {
                    add(&mut stack, Some(value), span)?;
                }
            }
        }
    }
    Ok(root.unwrap_or_default())
}

/// Puts a finished value into the frame on top of the stack.
fn add(stack: &mut [Frame], value: Option<Value>, span: Span) -> Result<(), ParseError> {
    match stack.last_mut() {
        Some(Frame::Map { section, key }) => {
            let Some((name, key_span)) = key.take() else {
                return Err(at(span, "a key must be a plain value"));
            };
            match value {
                Some(value) => section.insert(&name, value).map_err(|p| at(key_span, p)),
                // `KEY:` with nothing after it leaves the setting unset.
                None => Ok(()),
            }
        }
        Some(Frame::List(items)) => {
            items.push(value.unwrap_or(Value::Scalar(String::new())));
            Ok(())
        }
        None => Err(at(span, "unbalanced YAML structure")),
    }
}

fn at(span: Span, problem: impl Into<String>) -> ParseError {
    ParseError::at(span.start.line(), span.start.col() + 1, problem)
}

/// The text WAL-G would see for a scalar; `None` for null.
fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Option<Value>, String> {
    if let Some(tag) = tag {
        if tag.is_yaml_core_schema() && tag.suffix == "str" {
            return Ok(Some(Value::Scalar(text.to_string())));
        }
        return Err(format!("YAML tag {tag} is not supported"));
    }
    if style != ScalarStyle::Plain {
        return Ok(Some(Value::Scalar(text.to_string())));
    }
    let resolved = match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(None),
        "true" | "True" | "TRUE" => "true".to_string(),
        "false" | "False" | "FALSE" => "false".to_string(),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => "+Inf".to_string(),
        "-.inf" | "-.Inf" | "-.INF" => "-Inf".to_string(),
        ".nan" | ".NaN" | ".NAN" => "NaN".to_string(),
        _ => number(text)?.unwrap_or_else(|| text.to_string()),
    };
    Ok(Some(Value::Scalar(resolved)))
}

/// A plain scalar that go-yaml reads as a number, printed as Go prints
/// it; `None` when it is text. Dates are refused: go-yaml makes them a
/// time that viper turns into an empty string.
fn number(text: &str) -> Result<Option<String>, String> {
    let first = text.as_bytes().first().copied().unwrap_or(b'x');
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Ok(None);
    }
    if is_date(text) {
        return Err(format!(
            "{} reads as a date in YAML: put it in quotes",
            shorten(text)
        ));
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    match go_int(&plain) {
        GoInt::Value(n) => return integer_text(text, Some(n)).map(Some),
        GoInt::Overflow => return integer_text(text, None).map(Some),
        GoInt::NotInt => {}
    }
    if is_yaml_float(&plain) {
        if let Ok(f) = plain.parse::<f64>() {
            // Digits only but no integer syntax (an octal-looking 0129):
            // Go reads a float; keep it exact or refuse.
            let integral = !plain.contains(['.', 'e', 'E']);
            if integral && f.abs() > (1u64 << 53) as f64 {
                return integer_text(text, None).map(Some);
            }
            return Ok(Some(go_float(f)));
        }
    }
    Ok(None)
}

enum GoInt {
    Value(i128),
    Overflow,
    NotInt,
}

/// Go's `strconv.ParseInt(s, 0, 64)` (then ParseUint): sign, then `0x`,
/// `0o`, `0b` or a leading `0` for octal.
fn go_int(s: &str) -> GoInt {
    let (negative, body) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix('0').filter(|d| !d.is_empty()) {
        (8, d)
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return GoInt::NotInt;
    }
    let Ok(magnitude) = u128::from_str_radix(digits, radix) else {
        return GoInt::Overflow;
    };
    let value = if negative {
        -(magnitude.min(i128::MAX as u128) as i128)
    } else {
        magnitude.min(i128::MAX as u128) as i128
    };
    let fits = i64::try_from(value).is_ok() || (!negative && u64::try_from(value).is_ok());
    if fits {
        GoInt::Value(value)
    } else {
        GoInt::Overflow
    }
}

/// go-yaml's float syntax: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// `YYYY-M-D...`, the start of every timestamp form go-yaml accepts.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 8
        && b.iter().take(4).all(u8::is_ascii_digit)
        && b.get(4) == Some(&b'-')
        && b.get(5).is_some_and(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str, key: &str) -> Option<String> {
        parse(text).unwrap().scalar(key).map(str::to_string)
    }

    #[test]
    fn failover_section_does_not_override_top_level() {
        let text = "WALG_FILE_PREFIX: /top\n\
                    WALG_FAILOVER_STORAGES:\n  \
                      store1:\n    \
                        WALG_FILE_PREFIX: /failover\n    \
                        AWS_SECRET_ACCESS_KEY: hush\n";
        let m = parse(text).unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/top"));
        assert_eq!(m.scalar("WALG_FAILOVER_STORAGES"), None);
        let Some(Value::Map(storages)) = m.get("walg_failover_storages") else {
            panic!("{m:?}");
        };
        let Some(Value::Map(s1)) = storages.get("STORE1") else {
            panic!("{storages:?}");
        };
        assert_eq!(s1.scalar("WALG_FILE_PREFIX"), Some("/failover"));
        // The failover section first, then the top-level key: same result.
        let reversed =
            "WALG_FAILOVER_STORAGES:\n  s:\n    WALG_FILE_PREFIX: /f\nWALG_FILE_PREFIX: /top\n";
        assert_eq!(
            scalar(reversed, "WALG_FILE_PREFIX").as_deref(),
            Some("/top")
        );
    }

    #[test]
    fn comments_and_quotes_are_not_part_of_values() {
        let text = "WALG_LIBSODIUM_KEY: \"k0123456789abcdef0123456789abcde\" # the key\n\
                    WALG_FILE_PREFIX: /b # where\n\
                    WALG_S3_PREFIX: 's3://b/p#x'\n";
        assert_eq!(
            scalar(text, "WALG_LIBSODIUM_KEY").as_deref(),
            Some("k0123456789abcdef0123456789abcde")
        );
        assert_eq!(scalar(text, "WALG_FILE_PREFIX").as_deref(), Some("/b"));
        assert_eq!(
            scalar(text, "WALG_S3_PREFIX").as_deref(),
            Some("s3://b/p#x")
        );
    }

    #[test]
    fn scalars_as_wal_g_sees_them() {
        let text = "A: 0x10\nB: 010\nC: TRUE\nD: 1.50\nE: 1e3\nF: ~\nG:\nH: '010'\nI: 0129\nJ: abc\nK: !!str 12\nL: -7\n";
        let m = parse(text).unwrap();
        assert_eq!(m.scalar("A"), Some("16"));
        assert_eq!(m.scalar("B"), Some("8"));
        assert_eq!(m.scalar("C"), Some("true"));
        assert_eq!(m.scalar("D"), Some("1.5"));
        assert_eq!(m.scalar("E"), Some("1000"));
        assert!(m.get("F").is_none() && m.get("G").is_none());
        assert_eq!(m.scalar("H"), Some("010"));
        assert_eq!(m.scalar("I"), Some("129"));
        assert_eq!(m.scalar("J"), Some("abc"));
        assert_eq!(m.scalar("K"), Some("12"));
        assert_eq!(m.scalar("L"), Some("-7"));
    }

    #[test]
    fn refusals_name_line_and_column() {
        let e = parse("A: 1\nB: [1, 2\n").unwrap_err();
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
        let dup = parse("A: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!((dup.line, dup.column), (Some(3), Some(1)), "{dup:?}");
        let big = parse("WALG_LIBSODIUM_KEY: 01234567890123456789012345678901\n").unwrap_err();
        assert!(big.problem.contains("quotes"), "{big:?}");
        assert!(parse("WALG_X: 2024-01-02\n").is_err());
        assert!(parse("- a\n- b\n").is_err());
        assert!(parse("a: &x 1\nb: *x\n").is_err());
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("just words\n").is_err());
        let deep = format!("a: {}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).is_err());
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# only a comment\n").unwrap().is_empty());
    }
}
