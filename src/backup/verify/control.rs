//! What backup-verify reads from a backup's `pg_control`: whether its CRC
//! holds, and whether the cluster has data checksums.
//!
//! `ControlFileData` changes between PostgreSQL versions, but it always
//! ends with `data_checksum_version` (u32), `mock_authentication_nonce`
//! (32 bytes) and the CRC-32C of every byte before the CRC. So the CRC is
//! found by position (the one offset whose 4 bytes are the CRC-32C of all
//! before it) and the checksum version sits 36 bytes before it: no
//! per-version layout table.

use crate::wal::records::Crc32c;

/// Where a control file's struct can end: PostgreSQL 10–18 are all well
/// inside this (PostgreSQL 15: the CRC is at 288).
const CRC_SEARCH: std::ops::Range<usize> = 200..1024;

/// What `pg_control` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// `data_checksum_version` is not 0: every page carries a checksum.
    pub data_checksums: bool,
}

/// `None` when no offset holds a matching CRC: the file is damaged.
pub fn read(bytes: &[u8]) -> Option<Control> {
    let end = bytes.len().min(CRC_SEARCH.end);
    let mut crc = Crc32c::new();
    let mut fed = 0;
    for at in CRC_SEARCH.step_by(4) {
        if at + 4 > end {
            break;
        }
        crc.update(&bytes[fed..at]);
        fed = at;
        let stored = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if crc.value() == stored && at >= 36 {
            let v = &bytes[at - 36..at - 32];
            let version = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            return Some(Control {
                data_checksums: version != 0,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 512 bytes of a PostgreSQL 15 `initdb --data-checksums`
    /// cluster's pg_control (the rest of the 8 KiB file is zeros).
    const CONTROL: &[u8] = include_bytes!("testdata/pg15-pg_control-head.bin");

    #[test]
    fn reads_a_real_control_file() {
        assert_eq!(
            read(CONTROL),
            Some(Control {
                data_checksums: true
            })
        );
    }

    #[test]
    fn a_damaged_control_file_is_refused() {
        let mut bad = CONTROL.to_vec();
        bad[40] ^= 1;
        assert_eq!(read(&bad), None);
        assert_eq!(read(&[0u8; 100]), None);
    }

    #[test]
    fn checksums_off_is_seen() {
        // Clear data_checksum_version and fix the CRC, as initdb without
        // --data-checksums would have written it.
        let mut off = CONTROL.to_vec();
        off[252..256].fill(0);
        let mut crc = Crc32c::new();
        crc.update(&off[..288]);
        off[288..292].copy_from_slice(&crc.value().to_le_bytes());
        assert_eq!(
            read(&off),
            Some(Control {
                data_checksums: false
            })
        );
    }
}
