//! Partial restore of a full backup: only the data tars that hold a file
//! the request keeps are downloaded. `files_metadata.json`'s `TarFileSets`
//! says which members each tar holds (directories included, which the
//! filter always keeps); a tar it does not list, or a backup without
//! `TarFileSets`, is downloaded as before. (A delta chain applies the same
//! rule per backup in `chain`.)

use std::sync::Arc;

use super::layout::{self, TarKind};
use super::metadata_read;
use super::partial::Filter;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The tars of backup `name` less the data tars holding nothing `filter`
/// keeps.
pub fn needed(
    storage: &Arc<dyn Storage>,
    name: &str,
    filter: &Filter,
    tars: Vec<(TarKind, String)>,
) -> Result<Vec<(TarKind, String)>> {
    let key = layout::files_metadata_key(name);
    let input = match storage.get(&key, 0) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return Ok(tars),
        Err(e) => return Err(e.into()),
    };
    // Only kept names are held: a tar's set then lists just those.
    let keep = |n: &[u8]| filter.keeps(&String::from_utf8_lossy(n));
    let meta = metadata_read::read(input, &keep).map_err(|e| {
        Error::Other(format!(
            "the files metadata '{key}' cannot be read: {e}; the backup's objects are damaged"
        ))
    })?;
    let Some(sets) = meta.tar_sets else {
        return Ok(tars);
    };
    let total = tars.iter().filter(|(k, _)| *k == TarKind::Data).count();
    let wanted: Vec<(TarKind, String)> = tars
        .into_iter()
        .filter(|(kind, k)| {
            let base = k.rsplit('/').next().unwrap_or(k);
            match sets.iter().find(|t| t.tar == base) {
                _ if *kind != TarKind::Data => true,
                None => true,
                Some(set) if !set.members.is_empty() => true,
                Some(_) => {
                    log::debug!("'{k}' holds no file to restore: not downloaded");
                    false
                }
            }
        })
        .collect();
    let fetched = wanted.iter().filter(|(k, _)| *k == TarKind::Data).count();
    log::info!(
        "Partial restore: {} of the {total} data tars of {name} hold files to restore; {} not downloaded",
        fetched,
        total - fetched
    );
    Ok(wanted)
}
