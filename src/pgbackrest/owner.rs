//! Owners of restored files and directories. Run as root, pgBackRest gives
//! each the manifest's user and group (spec §6.9, §7: `chown user/group if
//! running as root`); a name this machine does not know, or `false` (the
//! id had no name where the backup was taken), goes to the owner of the
//! restore directory, with a warning, as pgBackRest maps it. Not root:
//! everything stays the restoring user's, as with pgBackRest.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use super::ini::Ini;
use crate::error::{Error, Result};

/// uid and gid.
pub type Ids = (u32, u32);

pub struct Owners {
    /// The owner of DEST: where unknown names go.
    fallback: (u32, u32),
    default_user: Option<String>,
    default_group: Option<String>,
    /// Names already looked up (a handful per manifest).
    users: Mutex<HashMap<String, u32>>,
    groups: Mutex<HashMap<String, u32>>,
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn name(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// The id of user (`group` false) or group `name` in /etc/passwd or
/// /etc/group, `None` when unknown. The files are read rather than asked
/// through NSS: the release binary is static, and glibc's NSS in a static
/// binary needs the shared libraries of the glibc it was linked with.
fn lookup(name: &str, group: bool) -> Option<u32> {
    let file = if group { "/etc/group" } else { "/etc/passwd" };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1).and_then(|id| id.parse().ok()))
            .flatten()
    })
}

impl Owners {
    /// `None` unless running as root. `section` is the default section of
    /// the kind of entry (`target:file:default`, `target:path:default`).
    pub fn new(man: &Ini, section: &str, dest: &Path) -> Result<Option<Owners>> {
        if !running_as_root() {
            return Ok(None);
        }
        let meta = std::fs::metadata(dest)
            .map_err(|e| Error::io(format!("reading the owner of {}", dest.display()), e))?;
        Ok(Some(Owners {
            fallback: (meta.uid(), meta.gid()),
            default_user: name(man.get(section, "user")),
            default_group: name(man.get(section, "group")),
            users: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        }))
    }

    fn id(&self, wanted: Option<String>, group: bool) -> u32 {
        let (cache, fallback, kind, file) = if group {
            (&self.groups, self.fallback.1, "group", "group")
        } else {
            (&self.users, self.fallback.0, "user", "passwd")
        };
        let Some(wanted) = wanted else {
            return fallback;
        };
        let Ok(mut cache) = cache.lock() else {
            return fallback;
        };
        *cache.entry(wanted.clone()).or_insert_with(|| {
            lookup(&wanted, group).unwrap_or_else(|| {
                log::warn!(
                    "the backup's {kind} '{wanted}' is not in /etc/{file} on this machine: its files are given to the owner of the restore directory ({kind} id {fallback}); create the {kind} and chown them if PostgreSQL runs as '{wanted}'"
                );
                fallback
            })
        })
    }

    /// uid and gid for an entry: its own `user`/`group`, else the
    /// section default; `false` (no name) maps to the fallback.
    pub fn ids(&self, entry: &Value) -> (u32, u32) {
        let pick = |key: &str, default: &Option<String>| match entry.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => None,
            None => default.clone(),
        };
        (
            self.id(pick("user", &self.default_user), false),
            self.id(pick("group", &self.default_group), true),
        )
    }
}

/// Give `path` (not following a link) to `ids`.
pub fn chown(path: &Path, ids: (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(ids.0), Some(ids.1))
        .map_err(|e| Error::io(format!("changing the owner of {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owners(user: &str, group: &str) -> Owners {
        Owners {
            fallback: (4242, 4343),
            default_user: Some(user.into()),
            default_group: Some(group.into()),
            users: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Known names resolve on this machine; an unknown one and `false`
    /// go to the fallback (DEST's owner); an entry's own names win over
    /// the defaults.
    #[test]
    fn names_resolve_or_fall_back() {
        let o = owners("root", "root");
        assert_eq!(o.ids(&json!({})), (0, 0));
        assert_eq!(o.ids(&json!({"user": false, "group": false})), (4242, 4343));
        assert_eq!(
            o.ids(&json!({"user": "no-such-user-walden", "group": "no-such-group-walden"})),
            (4242, 4343)
        );
        let o = owners("no-such-user-walden", "root");
        assert_eq!(o.ids(&json!({})), (4242, 0));
        assert_eq!(o.ids(&json!({"user": "root"})), (0, 0));
    }
}
