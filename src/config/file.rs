//! Reading a WAL-G config file. The format comes from the extension, as
//! in viper: `.json`, `.yaml`/`.yml`, `.toml`, `.env`/`.dotenv`. Viper
//! cannot read a file without one (WAL-G then warns and runs without
//! it); walden refuses it instead of guessing, and refuses viper's
//! other formats (`.properties`, `.hcl`, `.ini`...) that it does not read.

use std::path::Path;

use super::value::{ParseError, Section};
use super::{parse_dotenv, parse_json, parse_toml, parse_yaml, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
    Dotenv,
}

/// The extensions viper tries for `~/.walg`, in its order.
pub const HOME_EXTENSIONS: &[&str] = &[
    "json",
    "toml",
    "yaml",
    "yml",
    "properties",
    "props",
    "prop",
    "hcl",
    "tfvars",
    "dotenv",
    "env",
    "ini",
];

impl Format {
    fn of(path: &Path) -> Result<Format, String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "json" => Format::Json,
            "yaml" | "yml" => Format::Yaml,
            "toml" => Format::Toml,
            "env" | "dotenv" => Format::Dotenv,
            "" => {
                return Err("the file name has no extension, so its format is unknown \
                     (WAL-G would ignore the file): name it .json, .yaml, .toml or .env"
                    .into())
            }
            other => {
                return Err(format!(
                    "walden does not read .{other} files: use .json, .yaml, .toml or .env"
                ))
            }
        })
    }
}

pub fn parse(format: Format, text: &str) -> Result<Section, ParseError> {
    // A byte-order mark is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::Json => parse_json::parse(text),
        Format::Yaml => parse_yaml::parse(text),
        Format::Toml => parse_toml::parse(text),
        Format::Dotenv => parse_dotenv::parse(text),
    }
}

pub fn read(path: &Path) -> Result<Section, ConfigError> {
    let shown = path.display().to_string();
    let file_error = |problem: String| ConfigError::File {
        path: shown.clone(),
        problem,
    };
    let format = Format::of(path).map_err(file_error)?;
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        file_error(format!(
            "not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(format, &text).map_err(|e| ConfigError::Syntax {
        path: shown.clone(),
        line: e.line,
        column: e.column,
        problem: e.problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::Value;
    use std::path::PathBuf;

    #[test]
    fn a_byte_order_mark_does_not_eat_the_first_key() {
        for (format, text) in [
            (Format::Yaml, "\u{feff}WALG_LIBSODIUM_KEY: k\nB: 1\n"),
            (Format::Json, "\u{feff}{\"WALG_LIBSODIUM_KEY\": \"k\"}"),
            (Format::Toml, "\u{feff}WALG_LIBSODIUM_KEY = \"k\"\n"),
            (Format::Dotenv, "\u{feff}WALG_LIBSODIUM_KEY=k\n"),
        ] {
            let m = parse(format, text).unwrap();
            assert_eq!(m.scalar("WALG_LIBSODIUM_KEY"), Some("k"), "{format:?}");
        }
    }

    #[test]
    fn formats_by_extension() {
        let of = |p: &str| Format::of(&PathBuf::from(p));
        assert_eq!(of("/etc/walg.json"), Ok(Format::Json));
        assert_eq!(of("a.YML"), Ok(Format::Yaml));
        assert_eq!(of("a.toml"), Ok(Format::Toml));
        assert_eq!(of(".walg.env"), Ok(Format::Dotenv));
        assert!(of("/etc/walg").unwrap_err().contains("no extension"));
        assert!(of("a.properties").unwrap_err().contains(".properties"));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("walden-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "A: 1\nB: [\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("line "), "{e}");
        std::fs::write(&path, "A: [1]\n").unwrap();
        assert!(matches!(
            read(&path).unwrap().get("A"),
            Some(Value::List(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
