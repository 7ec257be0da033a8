//! One result row of a simple query, values in text format with typed
//! access; NULL is None.

use std::sync::Arc;

use super::error::PgError;

#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<Vec<u8>>>,
}

#[allow(dead_code)] // the backup commands will use the rest
impl Row {
    pub fn new(columns: Arc<[String]>, values: Vec<Option<Vec<u8>>>) -> Row {
        Row { columns, values }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The index of the column named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    pub fn get_bytes(&self, i: usize) -> Result<Option<&[u8]>, PgError> {
        match self.values.get(i) {
            Some(v) => Ok(v.as_deref()),
            None => Err(PgError::Value {
                column: i,
                problem: format!("the row has only {} columns", self.values.len()),
            }),
        }
    }

    pub fn get_str(&self, i: usize) -> Result<Option<&str>, PgError> {
        match self.get_bytes(i)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| PgError::Value {
                    column: i,
                    problem: "not UTF-8 text".into(),
                }),
        }
    }

    pub fn get_i64(&self, i: usize) -> Result<Option<i64>, PgError> {
        match self.get_str(i)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| PgError::Value {
                column: i,
                problem: format!("'{s}' is not an integer"),
            }),
        }
    }

    pub fn get_bool(&self, i: usize) -> Result<Option<bool>, PgError> {
        match self.get_str(i)? {
            None => Ok(None),
            Some("t") => Ok(Some(true)),
            Some("f") => Ok(Some(false)),
            Some(s) => Err(PgError::Value {
                column: i,
                problem: format!("'{s}' is not a boolean"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_row_typed_access() {
        let cols: Arc<[String]> = vec!["a".to_string(), "b".into(), "c".into(), "d".into()].into();
        let row = Row::new(
            cols,
            vec![
                Some(b"42".to_vec()),
                None,
                Some(b"t".to_vec()),
                Some(vec![0xff]),
            ],
        );
        assert_eq!(row.get_i64(0).unwrap(), Some(42));
        assert_eq!(row.get_str(0).unwrap(), Some("42"));
        assert_eq!(row.get_i64(1).unwrap(), None);
        assert_eq!(row.get_bool(2).unwrap(), Some(true));
        assert!(row.get_bool(0).is_err());
        assert!(row.get_i64(2).is_err());
        assert!(row.get_str(3).is_err());
        assert!(row.get_str(4).is_err());
        assert_eq!(row.index("c"), Some(2));
    }
}
