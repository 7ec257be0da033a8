//! TOML config files. Escapes, comments and tables are the parser's job;
//! here values become the text WAL-G sees (go-toml gives int64, float64
//! and bool, which viper prints in decimal).

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::value::{go_float, integer_text, ParseError, Section, Value, MAX_DEPTH};

pub fn parse(text: &str) -> Result<Section, ParseError> {
    let table = DeTable::parse(text).map_err(|e| {
        let (line, column) = e.span().map_or((None, None), |s| {
            let (l, c) = line_col(text, s.start);
            (Some(l), Some(c))
        });
        // message() alone: the error's Display quotes the offending line,
        // which may hold a secret.
        ParseError {
            line,
            column,
            problem: format!("not valid TOML: {}", e.message().trim_end()),
        }
    })?;
    section(text, table.get_ref(), 1)
}

fn section(text: &str, table: &DeTable<'_>, depth: usize) -> Result<Section, ParseError> {
    let mut out = Section::default();
    for (key, value) in table.iter() {
        let where_ = |problem: String| at(text, key.span(), problem);
        let converted = convert(text, value, depth)?;
        out.insert(key.get_ref(), converted).map_err(where_)?;
    }
    Ok(out)
}

fn convert(text: &str, value: &Spanned<DeValue<'_>>, depth: usize) -> Result<Value, ParseError> {
    let fail = |problem: String| at(text, value.span(), problem);
    Ok(match value.get_ref() {
        DeValue::String(s) => Value::Scalar(s.to_string()),
        DeValue::Boolean(b) => Value::Scalar(b.to_string()),
        DeValue::Integer(i) => {
            let parsed = i128::from_str_radix(i.as_str(), i.radix()).ok();
            Value::Scalar(integer_text(i.as_str(), parsed).map_err(fail)?)
        }
        DeValue::Float(f) => {
            let parsed: f64 = f
                .as_str()
                .replace('_', "")
                .parse()
                .map_err(|_| fail("not a number".into()))?;
            Value::Scalar(go_float(parsed))
        }
        DeValue::Datetime(_) => {
            return Err(fail(
                "a TOML date is not a setting value (WAL-G reads it as empty): put it in quotes"
                    .into(),
            ))
        }
        DeValue::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(fail(format!(
                    "lists are nested deeper than {MAX_DEPTH} levels"
                )));
            }
            let mut list = Vec::with_capacity(items.len());
            for item in items.iter() {
                list.push(convert(text, item, depth + 1)?);
            }
            Value::List(list)
        }
        DeValue::Table(table) => {
            if depth >= MAX_DEPTH {
                return Err(fail(format!(
                    "sections are nested deeper than {MAX_DEPTH} levels"
                )));
            }
            Value::Map(section(text, table, depth + 1)?)
        }
    })
}

fn at(text: &str, span: Range<usize>, problem: String) -> ParseError {
    let (line, column) = line_col(text, span.start);
    ParseError::at(line, column, problem)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_comments_and_numbers() {
        let m = parse(
            "walg_file_prefix = \"/b\\tc\" # where\n\
             WALG_LIBSODIUM_KEY = 'lit\\eral'\n\
             WALG_UPLOAD_CONCURRENCY = 0x10\n\
             F = 1.50\n\
             B = true\n\
             U = \"\\u00e9\"\n",
        )
        .unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/b\tc"));
        assert_eq!(m.scalar("WALG_LIBSODIUM_KEY"), Some("lit\\eral"));
        assert_eq!(m.scalar("WALG_UPLOAD_CONCURRENCY"), Some("16"));
        assert_eq!(m.scalar("F"), Some("1.5"));
        assert_eq!(m.scalar("B"), Some("true"));
        assert_eq!(m.scalar("U"), Some("é"));
    }

    #[test]
    fn tables_stay_nested() {
        let m = parse(
            "WALG_FILE_PREFIX = \"/top\"\n\
             [WALG_FAILOVER_STORAGES.s1]\n\
             WALG_FILE_PREFIX = \"/fail\"\n",
        )
        .unwrap();
        assert_eq!(m.scalar("WALG_FILE_PREFIX"), Some("/top"));
        let Some(Value::Map(storages)) = m.get("WALG_FAILOVER_STORAGES") else {
            panic!("{m:?}");
        };
        assert!(matches!(storages.get("s1"), Some(Value::Map(_))));
    }

    #[test]
    fn refusals_name_line_and_column() {
        let e = parse("A = 1\nB = \"open\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(e.column.is_some());
        let dup = parse("A = 1\na = 2\n").unwrap_err();
        assert_eq!((dup.line, dup.column), (Some(2), Some(1)), "{dup:?}");
        assert!(parse("D = 1979-05-27\n").is_err());
        let deep = format!("a = {}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).is_err());
        let secret = parse("K = \"s3cr3t\" junk\n").unwrap_err();
        assert!(!secret.problem.contains("s3cr3t"), "{secret:?}");
    }
}
