//! `walden pg-info`: a hidden diagnostic that connects with the PG*
//! settings and prints what the backup commands will rely on, one
//! `key: value` per line.

use std::ffi::OsString;

use crate::config::Settings;
use crate::error::Result;
use crate::pg::{Client, ConnParams};

pub fn run(settings: &Settings, args: Vec<OsString>) -> Result<()> {
    super::positionals(args, "walden pg-info", 0)?;
    let params = ConnParams::from_settings(settings)?;
    let mut client = Client::connect(&params)?;
    let rows = client.query(
        "SELECT current_setting('server_version_num'), \
                (SELECT system_identifier FROM pg_control_system()), \
                pg_is_in_recovery(), \
                (SELECT timeline_id FROM pg_control_checkpoint()), \
                current_user, current_database()",
    )?;
    let row = rows
        .first()
        .ok_or_else(|| crate::error::Error::Other("pg-info: the server returned no row".into()))?;
    let text = |i| -> Result<String> { Ok(row.get_str(i)?.unwrap_or("").to_string()) };
    let mut out = vec![
        ("connected_to", client.target().to_string()),
        (
            "tls",
            if client.is_tls() { "on" } else { "off" }.to_string(),
        ),
        (
            "server_version",
            client.parameter("server_version").unwrap_or("").to_string(),
        ),
        ("server_version_num", text(0)?),
        ("system_identifier", text(1)?),
        (
            "in_recovery",
            row.get_bool(2)?.map(|b| b.to_string()).unwrap_or_default(),
        ),
        ("timeline", text(3)?),
        ("user", text(4)?),
        ("database", text(5)?),
    ];
    for name in ["integer_datetimes", "server_encoding"] {
        out.push((name, client.parameter(name).unwrap_or("").to_string()));
    }
    for (k, v) in out {
        println!("{k}: {v}");
    }
    Ok(())
}
