//! What a config file holds once read: scalars as the text WAL-G would see
//! (viper turns every value into a string with Go's formatting), lists,
//! and nested sections kept as sections so that a nested key can never
//! stand in for a top-level one.

use std::collections::BTreeMap;

/// Deeper nesting than any WAL-G setting needs (failover storages are two
/// levels) is refused, so a hostile `[[[[...` cannot exhaust the stack.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(String),
    List(Vec<Value>),
    Map(Section),
}

/// Keys upper-cased, as viper matches them without regard to case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    entries: BTreeMap<String, Value>,
}

/// Where a config file could not be read: 1-based line and column when
/// the parser knows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub problem: String,
}

impl ParseError {
    pub fn at(line: usize, column: usize, problem: impl Into<String>) -> ParseError {
        ParseError {
            line: Some(line),
            column: Some(column),
            problem: problem.into(),
        }
    }

    pub fn nowhere(problem: impl Into<String>) -> ParseError {
        ParseError {
            line: None,
            column: None,
            problem: problem.into(),
        }
    }
}

impl Section {
    /// Adds `key`; a key that differs from an earlier one only in case is
    /// refused, because viper would keep one of the two at random.
    pub fn insert(&mut self, key: &str, value: Value) -> Result<(), String> {
        if key.trim().is_empty() {
            return Err("an empty key is not a setting name".into());
        }
        let upper = key.to_uppercase();
        if self.entries.contains_key(&upper) {
            return Err(format!(
                "key '{key}' appears twice (keys are compared without case)"
            ));
        }
        self.entries.insert(upper, value);
        Ok(())
    }

    /// The entry `name` (any case).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries.get(&name.to_uppercase())
    }

    /// The entry `name` only if it is a scalar: a nested section is never
    /// a setting value.
    pub fn scalar(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.entries.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`, which viper's string
/// conversion uses: shortest round-trip digits, never an exponent.
/// Rust's `Display` for f64 prints the same digits.
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{f}")
    }
}

/// Text for a number a parser read, as WAL-G would see it, or a refusal
/// when Go would silently round it (an integer beyond 64 bits becomes a
/// float there, which would turn a numeric key or password into another).
pub fn integer_text(literal: &str, value: Option<i128>) -> Result<String, String> {
    match value {
        Some(n) if i64::try_from(n).is_ok() || u64::try_from(n).is_ok() => Ok(n.to_string()),
        _ => Err(format!(
            "the number {} is too large to keep exactly: put it in quotes",
            shorten(literal)
        )),
    }
}

/// At most 12 characters of a value for an error message: enough to find
/// it, too little to print a whole key.
pub fn shorten(text: &str) -> String {
    let mut out: String = text.chars().take(12).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_unique() {
        let mut s = Section::default();
        s.insert("walg_file_prefix", Value::Scalar("/b".into()))
            .unwrap();
        assert_eq!(s.scalar("WALG_FILE_PREFIX"), Some("/b"));
        assert_eq!(s.scalar("Walg_File_Prefix"), Some("/b"));
        assert!(s
            .insert("WALG_FILE_PREFIX", Value::Scalar("/c".into()))
            .is_err());
        assert!(s.insert(" ", Value::Scalar("x".into())).is_err());
    }

    #[test]
    fn nested_sections_are_not_scalars() {
        let mut inner = Section::default();
        inner
            .insert("WALG_FILE_PREFIX", Value::Scalar("/f".into()))
            .unwrap();
        let mut s = Section::default();
        s.insert("WALG_FAILOVER_STORAGES", Value::Map(inner))
            .unwrap();
        assert_eq!(s.scalar("WALG_FAILOVER_STORAGES"), None);
        assert_eq!(s.scalar("WALG_FILE_PREFIX"), None);
    }

    #[test]
    fn numbers_as_go_prints_them() {
        assert_eq!(go_float(1000.0), "1000");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e21), "1000000000000000000000");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(integer_text("0x10", Some(16)).unwrap(), "16");
        assert_eq!(
            integer_text("18446744073709551615", Some(u64::MAX as i128)).unwrap(),
            "18446744073709551615"
        );
        let e = integer_text("123456789012345678901234567890", None).unwrap_err();
        assert!(e.contains("quotes") && !e.contains("1234567890123"), "{e}");
    }
}
