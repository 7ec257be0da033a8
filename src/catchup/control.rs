//! The few fields of a replica's `global/pg_control` catch-up needs
//! (spec §11.3 gives the same offsets): the system identifier, the
//! cluster state, the latest checkpoint and its REDO location. These sit
//! at the same offsets in every layout since PostgreSQL 9.3.

use std::path::Path;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub system_identifier: u64,
    /// `DBState`: 1 shut down, 2 shut down in recovery (a standby).
    pub state: u32,
    /// Latest checkpoint location.
    pub checkpoint: u64,
    /// Its REDO location: every change before it is in the data files.
    pub redo: u64,
}

const SHUT_DOWN: u32 = 1;
const SHUT_DOWN_IN_RECOVERY: u32 = 2;

impl Control {
    pub fn parse(bytes: &[u8]) -> Option<Control> {
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        Some(Control {
            system_identifier: u64_at(0)?,
            state: u32_at(16)?,
            checkpoint: u64_at(32)?,
            redo: u64_at(40)?,
        })
    }

    pub fn read(path: &Path) -> Result<Control> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading '{}'", path.display()), e))?;
        Control::parse(&bytes).ok_or_else(|| {
            Error::Other(format!(
                "'{}' is too short to be a PostgreSQL control file",
                path.display()
            ))
        })
    }

    /// Shut down cleanly: every change up to the checkpoint record itself
    /// is in the data files, not only those before its REDO location.
    pub fn clean(&self) -> bool {
        matches!(self.state, SHUT_DOWN | SHUT_DOWN_IN_RECOVERY)
    }

    /// The newest LSN a catch-up may start from for this data directory.
    pub fn catchup_limit(&self) -> u64 {
        if self.clean() {
            self.checkpoint
        } else {
            self.redo
        }
    }
}

/// The timeline of the latest checkpoint (spec §11.3: after the REDO
/// location since PostgreSQL 11, pg_control_version 1100; 8 bytes later
/// before, behind the removed previous-checkpoint field).
pub fn timeline(bytes: &[u8]) -> Option<u32> {
    let version = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let at = if version < 1100 { 56 } else { 48 };
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_control_file() {
        let bytes = include_bytes!("../backup/verify/testdata/pg15-pg_control-head.bin");
        let c = Control::parse(bytes).unwrap();
        assert_ne!(c.system_identifier, 0);
        assert!(c.redo <= c.checkpoint, "{c:?}");
        assert!(c.checkpoint > 0);
        assert!(Control::parse(&bytes[..40]).is_none());
        assert_eq!(timeline(bytes), Some(1));
    }
}
