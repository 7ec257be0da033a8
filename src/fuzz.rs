//! Bounded random-input loops for the parsers, run by `cargo test`: each
//! target mutates valid seed inputs (bit flips, cuts, splices, repeats)
//! and feeds them to a check that must not panic and must not let memory
//! or output grow without bound. No nightly toolchain, no extra crate, so
//! CI runs them on every change.
//!
//! `WALDEN_FUZZ_SECS` sets the time per target (default 2 s, as in CI);
//! `WALDEN_FUZZ_SEED` replays a run. A panicking input is saved under
//! `target/fuzz-failures/` and its path printed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64*: fast, and reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Values that tend to sit on boundaries of length fields and flags.
const INTERESTING: &[&[u8]] = &[
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0, 0, 0, 0x80],
    &[0x01, 0, 0, 0],
    b"<",
    b">",
    b"&",
    b"\"",
    b"'",
    b"\n",
    b"#",
    b"=",
    b":",
    b"[",
    b"{",
    b"\\",
    b"\xef\xbb\xbf",
];

/// One random edit (or a few) of `input`.
pub fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            2 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                if rng.below(2) == 0 || i + value.len() > len {
                    out.splice(i..i, value.iter().copied());
                } else {
                    out[i..i + value.len()].copy_from_slice(value);
                }
            }
            3 if len > 0 => {
                out.truncate(rng.below(len));
            }
            4 if len > 1 => {
                let a = rng.below(len);
                let b = a + rng.below(len - a);
                out.drain(a..b.min(a + 4096));
            }
            5 if len > 0 => {
                // Repeat a chunk: nesting, long runs, duplicated frames.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = out[a..b].to_vec();
                let most = if rng.below(8) == 0 { 2000 } else { 8 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    out.splice(b..b, chunk.iter().copied());
                }
            }
            6 => {
                let extra = {
                    let n = 1 + rng.below(32);
                    rng.bytes(n)
                };
                let i = rng.below(len + 1);
                out.splice(i..i, extra);
            }
            7 if !seeds.is_empty() => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a + 1);
                    let i = rng.below(len + 1);
                    out.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ => {
                let extra = {
                    let n = rng.below(8);
                    rng.bytes(n)
                };
                out.extend_from_slice(&extra);
            }
        }
    }
    out
}

fn budget() -> Duration {
    let secs = std::env::var("WALDEN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn first_seed() -> u64 {
    match std::env::var("WALDEN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

fn try_one(name: &str, seed: u64, run: u64, check: &mut impl FnMut(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{seed}-{run}.bin"));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {name} failed (WALDEN_FUZZ_SEED={seed}); input saved as {}",
            path.display()
        );
    }
}

/// Feed `check` the seeds, then mutations of them, until the time budget
/// is spent. `check` panics (assert) on a wrong answer; errors are fine.
pub fn run(name: &str, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) {
    let seed = first_seed();
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + budget();
    let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
    let mut runs = 0u64;
    for s in seeds {
        try_one(name, seed, runs, &mut check, s);
    }
    while Instant::now() < deadline && !corpus.is_empty() {
        let base = corpus[rng.below(corpus.len())].clone();
        let input = mutate(&mut rng, &base, seeds);
        try_one(name, seed, runs, &mut check, &input);
        runs += 1;
        // Keep some mutants as bases, so edits stack up over the run.
        if input.len() < 1 << 20 && rng.below(16) == 0 {
            if corpus.len() < 256 {
                corpus.push(input);
            } else {
                let i = rng.below(corpus.len());
                corpus[i] = input;
            }
        }
    }
    eprintln!("fuzz {name}: {runs} inputs (WALDEN_FUZZ_SEED={seed})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible_and_vary() {
        let seeds = vec![b"hello world".to_vec()];
        let a: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..50)
                .map(|_| mutate(&mut rng, &seeds[0], &seeds))
                .collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..50)
                .map(|_| mutate(&mut rng, &seeds[0], &seeds))
                .collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|m| m != &seeds[0]));
    }
}
