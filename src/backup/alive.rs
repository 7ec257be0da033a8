//! `WALG_ALIVE_CHECK_INTERVAL`: while the data is copied, the session
//! holding the backup open sits idle; a thread pings it on that interval.
//! If the server is gone the backup cannot be finished (PostgreSQL ended
//! it with the session), so the copy is stopped at the next member
//! instead of running to the end for nothing, and no sentinel is written.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::tars::Shared;
use crate::error::{Error, Result};
use crate::pg::Client;

pub struct AliveCheck {
    stop: Sender<()>,
    thread: JoinHandle<Client>,
}

impl AliveCheck {
    /// Take the session for the duration of the copy.
    pub fn start(mut pg: Client, every: Duration, shared: Arc<Shared>) -> Result<AliveCheck> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("alive-check".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = pg.query("SELECT 1") {
                        shared.abort.set(Error::Other(format!(
                            "the PostgreSQL server stopped answering during the backup ({e}); \
                             the backup is abandoned and no sentinel was written: \
                             start the server and run backup-push again"
                        )));
                        break;
                    }
                    log::debug!("alive check: the server answers");
                }
                pg
            })
            .map_err(|e| Error::io("starting the alive-check thread", e))?;
        Ok(AliveCheck { stop, thread })
    }

    /// Stop checking and give the session back.
    pub fn finish(self) -> Result<Client> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| Error::Other("internal: the alive-check thread panicked".into()))
    }
}
