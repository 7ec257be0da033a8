//! SHA-1 of restored files (pgBackRest's manifest checksum) with the x86
//! SHA extensions when the CPU has them. ring's SHA-1 is portable Rust:
//! on a 2 GiB restore it measured ~3 s of CPU, more than decompression
//! and writing together, and pgBackRest (OpenSSL) uses these instructions.
//! Without them, ring's implementation is used.

use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};

pub struct Sha1 {
    inner: Inner,
}

enum Inner {
    Ring(Context),
    #[cfg(target_arch = "x86_64")]
    Ni(ni::State),
}

impl Sha1 {
    pub fn new() -> Sha1 {
        #[cfg(target_arch = "x86_64")]
        if ni::available() {
            return Sha1 {
                inner: Inner::Ni(ni::State::new()),
            };
        }
        Sha1::portable()
    }

    /// ring's implementation, whatever the CPU (for tests).
    pub fn portable() -> Sha1 {
        Sha1 {
            inner: Inner::Ring(Context::new(&SHA1_FOR_LEGACY_USE_ONLY)),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Ring(c) => c.update(data),
            #[cfg(target_arch = "x86_64")]
            Inner::Ni(s) => s.update(data),
        }
    }

    /// The digest as lowercase hex, as manifests write it.
    pub fn hex(self) -> String {
        let digest: [u8; 20] = match self.inner {
            Inner::Ring(c) => {
                let d = c.finish();
                let mut out = [0u8; 20];
                out.copy_from_slice(d.as_ref());
                out
            }
            #[cfg(target_arch = "x86_64")]
            Inner::Ni(s) => s.finish(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("sse2")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1")
    }

    /// Only made when [`available`] said yes.
    pub struct State {
        h: [u32; 5],
        block: [u8; 64],
        filled: usize,
        total: u64,
    }

    impl State {
        pub fn new() -> State {
            State {
                h: [
                    0x6745_2301,
                    0xEFCD_AB89,
                    0x98BA_DCFE,
                    0x1032_5476,
                    0xC3D2_E1F0,
                ],
                block: [0; 64],
                filled: 0,
                total: 0,
            }
        }

        pub fn update(&mut self, mut data: &[u8]) {
            self.total += data.len() as u64;
            if self.filled > 0 {
                let take = (64 - self.filled).min(data.len());
                self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                self.filled += take;
                data = &data[take..];
                if self.filled < 64 {
                    return;
                }
                let block = self.block;
                // SAFETY: State exists only where the CPU has the features.
                unsafe { compress(&mut self.h, &block) };
                self.filled = 0;
            }
            let whole = data.len() / 64 * 64;
            if whole > 0 {
                // SAFETY: as above.
                unsafe { compress(&mut self.h, &data[..whole]) };
            }
            let rest = &data[whole..];
            self.block[..rest.len()].copy_from_slice(rest);
            self.filled = rest.len();
        }

        pub fn finish(mut self) -> [u8; 20] {
            let bits = self.total.wrapping_mul(8);
            let mut pad = [0u8; 72];
            pad[0] = 0x80;
            // Pad to 56 mod 64, then the length in bits, big-endian.
            let zeros = (119 - (self.total % 64) as usize) % 64;
            let len = 1 + zeros;
            pad[len..len + 8].copy_from_slice(&bits.to_be_bytes());
            let total = self.total;
            self.update(&pad[..len + 8]);
            debug_assert_eq!(self.filled, 0, "{total}");
            let mut out = [0u8; 20];
            for (i, w) in self.h.iter().enumerate() {
                out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            out
        }
    }

    /// Four rounds: E for them from the state four rounds back (`prev`)
    /// plus the schedule words `w`.
    macro_rules! rounds4 {
        ($abcd:expr, $prev:expr, $w:expr, $f:literal) => {
            _mm_sha1rnds4_epu32($abcd, _mm_sha1nexte_epu32($prev, $w), $f)
        };
    }

    /// The next four schedule words from the sixteen before them.
    macro_rules! next_w {
        ($w0:expr, $w1:expr, $w2:expr, $w3:expr) => {
            _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($w0, $w1), $w2), $w3)
        };
    }

    /// SHA-1 over whole 64-byte blocks.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn compress(h: &mut [u32; 5], blocks: &[u8]) {
        // Big-endian words, the first in the highest lane.
        let swap = _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f);
        let mut abcd = _mm_shuffle_epi32(_mm_loadu_si128(h.as_ptr().cast()), 0x1B);
        let mut e = _mm_set_epi32(h[4] as i32, 0, 0, 0);
        for block in blocks.chunks_exact(64) {
            let p = block.as_ptr().cast::<__m128i>();
            let mut w0 = _mm_shuffle_epi8(_mm_loadu_si128(p), swap);
            let mut w1 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), swap);
            let mut w2 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), swap);
            let mut w3 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), swap);
            let mut w4;
            let (abcd0, e0) = (abcd, e);

            // Rounds 0-15 on the message itself; a and b alternate as the
            // current state and the one four rounds back.
            let mut b = _mm_sha1rnds4_epu32(abcd, _mm_add_epi32(e, w0), 0);
            let mut a = rounds4!(b, abcd, w1, 0);
            b = rounds4!(a, b, w2, 0);
            a = rounds4!(b, a, w3, 0);
            // Rounds 16-79: five words rotate through the schedule.
            w4 = next_w!(w0, w1, w2, w3);
            b = rounds4!(a, b, w4, 0);
            w0 = next_w!(w1, w2, w3, w4);
            a = rounds4!(b, a, w0, 1);
            w1 = next_w!(w2, w3, w4, w0);
            b = rounds4!(a, b, w1, 1);
            w2 = next_w!(w3, w4, w0, w1);
            a = rounds4!(b, a, w2, 1);
            w3 = next_w!(w4, w0, w1, w2);
            b = rounds4!(a, b, w3, 1);
            w4 = next_w!(w0, w1, w2, w3);
            a = rounds4!(b, a, w4, 1);
            w0 = next_w!(w1, w2, w3, w4);
            b = rounds4!(a, b, w0, 2);
            w1 = next_w!(w2, w3, w4, w0);
            a = rounds4!(b, a, w1, 2);
            w2 = next_w!(w3, w4, w0, w1);
            b = rounds4!(a, b, w2, 2);
            w3 = next_w!(w4, w0, w1, w2);
            a = rounds4!(b, a, w3, 2);
            w4 = next_w!(w0, w1, w2, w3);
            b = rounds4!(a, b, w4, 2);
            w0 = next_w!(w1, w2, w3, w4);
            a = rounds4!(b, a, w0, 3);
            w1 = next_w!(w2, w3, w4, w0);
            b = rounds4!(a, b, w1, 3);
            w2 = next_w!(w3, w4, w0, w1);
            a = rounds4!(b, a, w2, 3);
            w3 = next_w!(w4, w0, w1, w2);
            b = rounds4!(a, b, w3, 3);
            w4 = next_w!(w0, w1, w2, w3);
            a = rounds4!(b, a, w4, 3);

            abcd = _mm_add_epi32(abcd0, a);
            e = _mm_sha1nexte_epu32(b, e0);
        }
        _mm_storeu_si128(h.as_mut_ptr().cast(), _mm_shuffle_epi32(abcd, 0x1B));
        h[4] = _mm_extract_epi32(e, 3) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block and padding edges, fed whole and in
    /// uneven pieces, against ring's implementation; and the FIPS vector.
    #[test]
    fn matches_ring_at_every_edge() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..200).chain([1000, 4095, 4096, 4097, 5000]) {
            let mut want = Sha1::portable();
            want.update(&data[..len]);
            let want = want.hex();
            let mut whole = Sha1::new();
            whole.update(&data[..len]);
            assert_eq!(whole.hex(), want, "length {len}");
            let mut pieces = Sha1::new();
            for chunk in data[..len].chunks(7 + len % 61) {
                pieces.update(chunk);
            }
            assert_eq!(pieces.hex(), want, "length {len} in pieces");
        }
        let mut abc = Sha1::new();
        abc.update(b"abc");
        assert_eq!(abc.hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
