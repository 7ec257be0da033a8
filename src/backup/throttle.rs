//! `WALG_DISK_RATE_LIMIT` and `WALG_NETWORK_RATE_LIMIT`: one token bucket
//! per limit, shared by every thread of the backup, so the limit holds for
//! the whole process however many readers or uploads run (WAL-G: bytes
//! per second, burst of one second plus 64 KiB).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::codec::FinishWrite;

/// Extra burst WAL-G allows over one second's worth of bytes.
const BURST_EXTRA: f64 = 64.0 * 1024.0;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(bytes_per_second: u64) -> Arc<RateLimit> {
        let rate = bytes_per_second as f64;
        let burst = rate + BURST_EXTRA;
        Arc::new(RateLimit {
            rate,
            burst,
            // Start empty: a limit of a few bytes a second must not let
            // a first burst of a full second through unasked.
            state: Mutex::new((BURST_EXTRA.min(burst), Instant::now())),
        })
    }

    /// Take `n` tokens, sleeping until they are there. The debt is taken
    /// at once and the caller sleeps it off outside the lock, so several
    /// threads queue fairly and none holds the others up while asleep.
    pub fn take(&self, n: usize) {
        let wait = {
            let Ok(mut s) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Reads through a limit (the disk side).
pub struct LimitedRead<R> {
    pub inner: R,
    pub limit: Option<Arc<RateLimit>>,
}

impl<R: Read> Read for LimitedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(l) = &self.limit {
            l.take(n);
        }
        Ok(n)
    }
}

/// Writes through a limit (the network side, before the object writer).
pub struct LimitedWrite {
    pub inner: Box<dyn FinishWrite>,
    pub limit: Arc<RateLimit>,
}

impl Write for LimitedWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bounded chunks so a large write does not sleep in one piece
        // while holding back smaller writers.
        let chunk = &buf[..buf.len().min(64 * 1024)];
        let n = self.inner.write(chunk)?;
        self.limit.take(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FinishWrite for LimitedWrite {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_holds_across_threads() {
        let limit = RateLimit::new(1_000_000);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let l = limit.clone();
                s.spawn(move || {
                    for _ in 0..10 {
                        l.take(25_000);
                    }
                });
            }
        });
        // 500 kB at 1 MB/s, less the 64 KiB head start: about 0.43 s.
        let t = start.elapsed().as_secs_f64();
        assert!((0.35..1.5).contains(&t), "{t}");
    }
}
