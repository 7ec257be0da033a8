//! Reading a WAL-G config file: JSON, and the flat subsets of YAML, TOML
//! and dotenv that such files use (`KEY: value`, `KEY = "value"`,
//! `KEY=value`). Keys are upper-cased, as viper makes them case-insensitive.

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;

pub fn read(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parsed = match ext {
        "json" => parse_json(&text),
        "yaml" | "yml" => parse_flat(&text, ':'),
        "toml" | "env" | "dotenv" => parse_flat(&text, '='),
        // WALG_CONFIG_PATH may name a file without an extension; WAL-G's
        // files are nearly always JSON, so try that first.
        _ => parse_json(&text).or_else(|_| parse_flat(&text, ':')),
    };
    parsed.map_err(|problem| ConfigError::File {
        path: path.display().to_string(),
        problem,
    })
}

fn parse_json(text: &str) -> Result<HashMap<String, String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("the top level is not a JSON object")?;
    let mut out = HashMap::new();
    for (key, value) in object {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            // Numbers and booleans are settings too ("WALG_UPLOAD_CONCURRENCY": 4);
            // nested values (WALG_FAILOVER_STORAGES) stay as JSON text.
            other => other.to_string(),
        };
        out.insert(key.to_uppercase(), text);
    }
    Ok(out)
}

fn parse_flat(text: &str, separator: char) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "---" {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once(separator)
            .ok_or_else(|| format!("line {}: expected KEY{separator} value", number + 1))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "line {}: '{key}' is not a setting name",
                number + 1
            ));
        }
        out.insert(key.to_uppercase(), unquote(value.trim()));
    }
    Ok(out)
}

fn unquote(value: &str) -> String {
    let bytes = value.as_bytes();
    if bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'\'')
        && bytes[bytes.len() - 1] == bytes[0]
    {
        return value[1..value.len() - 1].to_string();
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_of_any_scalar_type() {
        let m = parse_json(
            r#"{"walg_file_prefix": "/b", "WALG_UPLOAD_CONCURRENCY": 4, "X": true, "N": null}"#,
        )
        .unwrap();
        assert_eq!(m["WALG_FILE_PREFIX"], "/b");
        assert_eq!(m["WALG_UPLOAD_CONCURRENCY"], "4");
        assert_eq!(m["X"], "true");
        assert!(!m.contains_key("N"));
        assert!(parse_json("[1]").is_err());
        assert!(parse_json("{").is_err());
    }

    #[test]
    fn yaml_and_toml_flat() {
        let y = parse_flat("# c\nWALG_FILE_PREFIX: '/b'\nwalg_log_level: DEVEL\n", ':').unwrap();
        assert_eq!(y["WALG_FILE_PREFIX"], "/b");
        assert_eq!(y["WALG_LOG_LEVEL"], "DEVEL");
        let t = parse_flat("WALG_FILE_PREFIX = \"/b\"\n", '=').unwrap();
        assert_eq!(t["WALG_FILE_PREFIX"], "/b");
        assert!(parse_flat("just words\n", ':').is_err());
    }
}
