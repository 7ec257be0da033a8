//! JSON config files, read as viper does: Go's decoder turns every number
//! into a float64, which viper then prints without an exponent.

use super::value::{go_float, ParseError, Section, Value, MAX_DEPTH};

pub fn parse(text: &str) -> Result<Section, ParseError> {
    // serde_json refuses nesting deeper than 128 on its own.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        // The message ends in " at line L column C", said separately.
        let full = e.to_string();
        let problem = full
            .split(" at line ")
            .next()
            .unwrap_or("not valid JSON")
            .to_string();
        ParseError::at(e.line(), e.column(), format!("not valid JSON: {problem}"))
    })?;
    match value {
        serde_json::Value::Object(object) => section(&object, 1),
        // An empty file is no settings, as viper reads it.
        serde_json::Value::Null => Ok(Section::default()),
        _ => Err(ParseError::at(1, 1, "the top level is not a JSON object")),
    }
}

fn section(
    object: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) -> Result<Section, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError::nowhere(format!(
            "sections are nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut out = Section::default();
    for (key, value) in object {
        // A null is an unset setting, as in viper.
        let Some(value) = convert(value, depth).map_err(|e| in_key(key, e))? else {
            continue;
        };
        out.insert(key, value).map_err(ParseError::nowhere)?;
    }
    Ok(out)
}

fn convert(value: &serde_json::Value, depth: usize) -> Result<Option<Value>, ParseError> {
    Ok(Some(match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(s) => Value::Scalar(s.clone()),
        serde_json::Value::Bool(b) => Value::Scalar(b.to_string()),
        serde_json::Value::Number(n) => Value::Scalar(number(n)?),
        serde_json::Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(ParseError::nowhere(format!(
                    "lists are nested deeper than {MAX_DEPTH} levels"
                )));
            }
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                list.push(convert(item, depth + 1)?.unwrap_or(Value::Scalar(String::new())));
            }
            Value::List(list)
        }
        serde_json::Value::Object(object) => Value::Map(section(object, depth + 1)?),
    }))
}

/// Go reads a JSON number as a float64: integers up to 2^53 stay exact,
/// larger ones would be rounded, which must not happen silently to a
/// numeric key or password.
fn number(n: &serde_json::Number) -> Result<String, ParseError> {
    const EXACT: u64 = 1 << 53;
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= EXACT {
            return Ok(i.to_string());
        }
    } else if n.as_u64().is_none() {
        if let Some(f) = n.as_f64() {
            return Ok(go_float(f));
        }
    }
    Err(ParseError::nowhere(
        "a number is too large to keep exactly (WAL-G would round it): put it in quotes",
    ))
}

fn in_key(key: &str, e: ParseError) -> ParseError {
    ParseError {
        problem: format!("in '{key}': {}", e.problem),
        ..e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_of_every_type() {
        let m = parse(
            r#"{"walg_file_prefix": "/b", "WALG_UPLOAD_CONCURRENCY": 4, "X": true,
                "N": null, "F": 1.50, "E": 1e3}"#,
        )
        .unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/b"));
        assert_eq!(m.scalar("WALG_UPLOAD_CONCURRENCY"), Some("4"));
        assert_eq!(m.scalar("X"), Some("true"));
        assert_eq!(m.scalar("F"), Some("1.5"));
        assert_eq!(m.scalar("E"), Some("1000"));
        assert!(m.get("N").is_none());
    }

    #[test]
    fn nested_sections_stay_nested() {
        let m = parse(
            r#"{"WALG_FILE_PREFIX": "/top",
                "WALG_FAILOVER_STORAGES": {"s1": {"WALG_FILE_PREFIX": "/fail"}}}"#,
        )
        .unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/top"));
        let Some(Value::Map(storages)) = m.get("WALG_FAILOVER_STORAGES") else {
            panic!("not a section: {m:?}");
        };
        let Some(Value::Map(s1)) = storages.get("S1") else {
            panic!("{storages:?}");
        };
        assert_eq!(s1.scalar("WALG_FILE_PREFIX"), Some("/fail"));
    }

    #[test]
    fn refusals_say_where() {
        let e = parse("{\n  \"A\": \"x\",\n  \"B\" \"y\"\n}").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        assert!(e.problem.starts_with("not valid JSON"), "{e:?}");
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"a": 1, "A": 2}"#).is_err());
        let big = parse(r#"{"WALG_LIBSODIUM_KEY": 12345678901234567890}"#).unwrap_err();
        assert!(big.problem.contains("quotes"), "{big:?}");
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert!(parse(&deep).is_err());
        assert!(parse("").is_err());
    }
}
