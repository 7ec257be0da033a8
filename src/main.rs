//! walden: PostgreSQL backups and WAL archiving, a drop-in replacement for
//! WAL-G. This file parses the global options, sets up logging and hands
//! the rest of the command line to the command.

mod backup;
mod catchup;
mod cleanup;
mod codec;
mod commands;
mod config;
mod copy;
mod daemon;
mod encoding;
mod error;
#[cfg(test)]
mod fuzz;
mod localfile;
mod logger;
mod pg;
mod pgbackrest;
mod progress;
mod storage;
mod stream;
mod time;
mod usage;
mod wal;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use error::{Error, Result};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the global part of the command line asks for.
enum Invocation {
    Overview,
    Version,
    Help(String),
    Run {
        config: Option<PathBuf>,
        flags: HashMap<String, String>,
        command: String,
        args: Vec<OsString>,
    },
}

fn parse_global(args: Vec<OsString>) -> Result<Invocation> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = None;
    let mut flags = HashMap::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Invocation::Overview),
            Short('v') | Long("version") => return Ok(Invocation::Version),
            Long("config") => config = Some(PathBuf::from(parser.value()?)),
            // WAL-G's --turbo lifts rate limits walden does not impose.
            Long("turbo") => {}
            Long(name) => {
                let name = name.to_string();
                let setting = config::flag_setting(&name).ok_or_else(|| {
                    Error::Usage(format!("unknown option --{name}; see walden --help"))
                })?;
                let value = parser
                    .value()?
                    .into_string()
                    .map_err(|_| Error::Usage(format!("--{name} needs a UTF-8 value")))?;
                flags.insert(setting, value);
            }
            Value(command) => {
                let command = command
                    .into_string()
                    .map_err(|_| Error::Usage("the command name is not UTF-8".into()))?;
                let args: Vec<OsString> = parser.raw_args()?.collect();
                if command == "help" {
                    return Ok(match args.first() {
                        Some(c) => Invocation::Help(c.to_string_lossy().into_owned()),
                        None => Invocation::Overview,
                    });
                }
                if args.iter().any(|a| a == "--help" || a == "-h") {
                    return Ok(Invocation::Help(command));
                }
                return Ok(Invocation::Run {
                    config,
                    flags,
                    command,
                    args,
                });
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Invocation::Overview)
}

fn print_help(name: &str) -> Result<()> {
    let command = usage::find(name).ok_or_else(|| unknown_command(name))?;
    print!("{}", usage::command_help(command));
    Ok(())
}

fn unknown_command(name: &str) -> Error {
    Error::Usage(format!(
        "unknown command '{name}'; run 'walden --help' for the list of commands"
    ))
}

fn run(args: Vec<OsString>) -> Result<()> {
    match parse_global(args)? {
        Invocation::Overview => {
            print!("{}", usage::overview());
            Ok(())
        }
        Invocation::Version => {
            println!("walden version {VERSION}\tPostgreSQL");
            Ok(())
        }
        Invocation::Help(name) => print_help(&name),
        Invocation::Run {
            config,
            flags,
            command,
            args,
        } => {
            let known = usage::find(&command).ok_or_else(|| unknown_command(&command))?;
            if !known.built {
                return Err(Error::NotBuilt(command));
            }
            let settings = config::Settings::load(config, flags)?;
            setup_logging(&settings, &command)?;
            // Before any storage is opened: a setting walden would ignore
            // must not let data go unencrypted or elsewhere. `flags` only
            // lists names, so it runs whatever is set.
            if command != "flags" {
                config::unsupported::check(&settings)?;
            }
            commands::run(&command, settings, args)
        }
    }
}

fn setup_logging(settings: &config::Settings, command: &str) -> Result<()> {
    let level_text = settings.get("WALG_LOG_LEVEL").unwrap_or_default();
    let level = logger::parse_level(&level_text).ok_or_else(|| {
        Error::Config(config::ConfigError::Invalid {
            name: "WALG_LOG_LEVEL".into(),
            value: level_text.clone(),
            problem: "use NORMAL, DEVEL or ERROR".into(),
        })
    })?;
    let devel = level == log::LevelFilter::Debug;
    // The prefetch child runs detached; as in WAL-G it is silent unless
    // DEVEL, and then marks its lines.
    let (level, prefix) = match (command, devel) {
        ("wal-prefetch", false) => (log::LevelFilter::Off, ""),
        ("wal-prefetch", true) => (level, "PREFETCH "),
        _ => (level, ""),
    };
    logger::init(
        level,
        settings.get("WALG_LOG_DESTINATION").as_deref(),
        prefix,
    )
    .map_err(Error::Other)?;
    if devel {
        log::debug!("--- COMPILED ENVIRONMENT VARS ---");
        for line in settings.describe() {
            log::debug!("{line}");
        }
    }
    for key in settings.unknown_file_keys() {
        log::warn!("{key} is unknown");
    }
    Ok(())
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = run(args);
    // A stop signal came while the command ran: its clean-up pulled temp
    // files and uploads from under the command, whose error (or success)
    // is not the story; the process ends of the signal, as its sender
    // expects.
    cleanup::await_stop();
    if let Err(e) = result {
        // The logger may not be set up yet (bad arguments, bad config):
        // fall back to the same line format on stderr.
        if !log::log_enabled!(log::Level::Error) {
            let _ = logger::init(log::LevelFilter::Error, None, "");
        }
        log::error!("{e}");
        std::process::exit(e.exit_code());
    }
}
