//! Partial restore of a full backup: only the data tars that hold a file
//! the request keeps are downloaded. `files_metadata.json`'s `TarFileSets`
//! says which members each tar holds (directories included, which the
//! filter always keeps); a tar it does not list, or a backup without
//! `TarFileSets`, is downloaded as before. (A delta chain applies the same
//! rule per backup in `chain`.)

use super::layout::TarKind;
use super::metadata_read::FilesMetadata;

/// The tars of backup `name` less the data tars holding nothing the
/// filter kept: `meta` is its files metadata read keeping only the names
/// the filter keeps, so a tar's set then lists just those.
pub fn needed(
    name: &str,
    meta: FilesMetadata,
    tars: Vec<(TarKind, String)>,
) -> Vec<(TarKind, String)> {
    let Some(sets) = meta.tar_sets else {
        return tars;
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
    wanted
}
