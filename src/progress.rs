//! How far a long piece of work is (a backup's upload or restore), shown
//! without costing anything on small work: when stderr is a terminal, one
//! line rewritten in place (`\r`) at most four times a second; otherwise an
//! INFO log line every 30 seconds. Nothing is shown for work that ends
//! before the first interval. No thread: the clock is read only every
//! [`CHECK_EVERY`] calls of [`Progress::add`] (or on a large add), and one
//! compare-and-swap decides which caller reports. Cloning shares the
//! counters, so parallel readers and uploaders feed one reporter.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Between two terminal redraws.
const TTY_EVERY: Duration = Duration::from_millis(250);
/// Between two log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Calls of `add` between two looks at the clock.
const CHECK_EVERY: u64 = 64;
/// An `add` this large looks at the clock whatever the call count.
const LARGE_ADD: u64 = 1 << 20;

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: Option<u64>,
    tty: bool,
    start: Instant,
    done: AtomicU64,
    calls: AtomicU64,
    /// Milliseconds after `start` of the last report (0: none yet).
    last_ms: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    /// `label` names the work (the backup's name); `total` is the byte
    /// count when known.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        Progress::with_output(label, total, std::io::stderr().is_terminal())
    }

    fn with_output(label: &str, total: Option<u64>, tty: bool) -> Progress {
        Progress {
            inner: Arc::new(Inner {
                label: label.to_string(),
                total,
                tty,
                start: Instant::now(),
                done: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                last_ms: AtomicU64::new(0),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// Count `bytes` more done; maybe report.
    pub fn add(&self, bytes: u64) {
        let i = &*self.inner;
        i.done.fetch_add(bytes, Ordering::Relaxed);
        let calls = i.calls.fetch_add(1, Ordering::Relaxed);
        if bytes < LARGE_ADD && !calls.is_multiple_of(CHECK_EVERY) {
            return;
        }
        let every = if i.tty { TTY_EVERY } else { LOG_EVERY };
        let now_ms = i.start.elapsed().as_millis() as u64;
        let last = i.last_ms.load(Ordering::Relaxed);
        if now_ms < last + every.as_millis() as u64 {
            return;
        }
        // One caller wins the slot; the others go on with their work.
        if i.last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if i.finished.load(Ordering::Relaxed) {
            return;
        }
        self.report(Duration::from_millis(now_ms), false);
    }

    /// `inner`, with every byte read through it counted here: one line
    /// where a stream is consumed (a tar being extracted).
    pub fn reader<R: Read>(&self, inner: R) -> ProgressReader<R> {
        ProgressReader {
            inner,
            progress: self.clone(),
        }
    }

    /// Bytes counted so far.
    #[cfg(test)]
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// End the display: the terminal line gets its final figures and a
    /// newline; a log line says the total if periodic lines were written.
    /// Only the first call does anything.
    pub fn finish(&self) {
        let i = &*self.inner;
        if i.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        if i.last_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.report(i.start.elapsed(), true);
    }

    fn report(&self, elapsed: Duration, last: bool) {
        let i = &*self.inner;
        let text = line(&i.label, i.done.load(Ordering::Relaxed), i.total, elapsed);
        if i.tty {
            let mut err = std::io::stderr().lock();
            // `\x1b[K` clears what a longer previous line left.
            let _ = write!(err, "\r{text}\x1b[K{}", if last { "\n" } else { "" });
            let _ = err.flush();
        } else {
            log::info!("{text}");
        }
    }
}

pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// `base_…: 1.2 GiB of 4.0 GiB (30%), 85.3 MiB/s, ETA 0:36`; without a
/// total, bytes and rate only.
pub fn line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate_text = format!("{}/s", human_bytes(rate as u64));
    match total {
        Some(total) if total > 0 => {
            let pct = (done.min(total) as f64 * 100.0 / total as f64).floor();
            let eta = if done >= total {
                "0:00".to_string()
            } else if rate >= 1.0 {
                clock(((total - done) as f64 / rate).ceil() as u64)
            } else {
                "?".to_string()
            };
            format!(
                "{label}: {} of {} ({pct:.0}%), {rate_text}, ETA {eta}",
                human_bytes(done),
                human_bytes(total)
            )
        }
        _ => format!("{label}: {}, {rate_text}", human_bytes(done)),
    }
}

/// `1.2 GiB`: binary units, one decimal above bytes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_with_and_without_total() {
        let l = line(
            "base_000000010000000000000002",
            1288490189,
            Some(4 << 30),
            Duration::from_secs(10),
        );
        assert_eq!(
            l,
            "base_000000010000000000000002: 1.2 GiB of 4.0 GiB (30%), 122.9 MiB/s, ETA 0:24"
        );
        assert_eq!(
            line("b", 512, None, Duration::from_secs(2)),
            "b: 512 B, 256 B/s"
        );
        assert_eq!(
            line("b", 10, Some(10), Duration::ZERO),
            "b: 10 B of 10 B (100%), 0 B/s, ETA 0:00"
        );
        assert_eq!(
            line("b", 0, Some(10), Duration::from_secs(1)),
            "b: 0 B of 10 B (0%), 0 B/s, ETA ?"
        );
        assert_eq!(clock(3725), "1:02:05");
        assert_eq!(clock(65), "1:05");
    }

    #[test]
    fn small_work_reports_nothing_and_counts_from_threads() {
        let p = Progress::with_output("x", Some(1 << 20), false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let p = p.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        p.add(16);
                    }
                });
            }
        });
        assert_eq!(p.done(), 64_000);
        assert_eq!(p.inner.last_ms.load(Ordering::Relaxed), 0, "no report");
        p.finish();
        p.finish();
        assert!(p.inner.finished.load(Ordering::Relaxed));
    }

    #[test]
    fn reader_counts_what_passes() {
        let p = Progress::with_output("x", None, false);
        let mut out = Vec::new();
        p.reader(&b"hello world"[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(p.done(), 11);
    }

    #[test]
    fn reports_after_the_interval() {
        let p = Progress::with_output("x", None, false);
        // Pretend the last report was long ago.
        let p2 = Progress {
            inner: Arc::new(Inner {
                start: Instant::now() - Duration::from_secs(31),
                ..Arc::try_unwrap(p.inner).ok().unwrap()
            }),
        };
        p2.add(LARGE_ADD);
        assert!(p2.inner.last_ms.load(Ordering::Relaxed) >= 31_000);
        let before = p2.inner.last_ms.load(Ordering::Relaxed);
        p2.add(LARGE_ADD);
        assert_eq!(
            p2.inner.last_ms.load(Ordering::Relaxed),
            before,
            "not again within the interval"
        );
    }
}
