//! `walden flags`: the `--setting-name` flags that override settings.

use crate::config::known::KNOWN;
use crate::error::Result;

pub fn run() -> Result<()> {
    let mut names: Vec<&str> = KNOWN.to_vec();
    names.sort_unstable();
    names.dedup();
    for name in names {
        println!("--{}", name.to_lowercase().replace('_', "-"));
    }
    Ok(())
}
