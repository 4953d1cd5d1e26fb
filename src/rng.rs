//! The engine's one random number generator: SplitMix64 (Steele, Lea & Flood 2014), one u64 of
//! state, good statistical quality for this use, identical streams on every platform and backend,
//! no dependency.
//!
//! Streams are named: `Rng::stream(Stream::X, seed)` starts at `seed ^ X.key()`, so one seed gives
//! unrelated sequences for unrelated purposes, and `Rng::derive(seed, name)` gives the FMP pipeline
//! an independent stream per purpose (adding draws in one place never shifts another). The keys
//! and every distribution below are the ones of the three generators this module replaced
//! (`model::rng::SplitMix64`, `fmp::rng::Rng`, `bench::reference::Rng`), so every stream is the
//! same bit for bit (the tests below pin values taken from the old code); where two of them drew a
//! distribution differently, both ways are kept, under different names.

/// A named stream family: where a generator's state starts for a given seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The FMP pipeline: X0 signs, poison indices, subsets, augmentation, trigger patterns
    /// (`Rng::new`, and the base of `Rng::derive`).
    Pipeline,
    /// Weight initialisation of a new model (`PreActResNet18::new_random`) and model test data.
    Init,
    /// Kernel-benchmark inputs and sample points.
    Bench,
}

impl Stream {
    pub const fn key(self) -> u64 {
        match self {
            Stream::Pipeline => 0x5851_F42D_4C95_7F2D,
            Stream::Init => 0x5DEE_CE66_D1CE_4E5B,
            Stream::Bench => 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The pipeline stream of `seed` (`Stream::Pipeline`).
    pub fn new(seed: u64) -> Self {
        Rng::stream(Stream::Pipeline, seed)
    }

    pub fn stream(stream: Stream, seed: u64) -> Self {
        Rng {
            state: seed ^ stream.key(),
        }
    }

    /// An independent pipeline stream for a named purpose (FNV-1a of the name mixed into the seed).
    pub fn derive(seed: u64, name: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        Rng::new(seed.wrapping_mul(GOLDEN) ^ h)
    }

    /// The whole state (training checkpoints save it to continue the same stream).
    pub fn state(&self) -> u64 {
        self.state
    }
    /// The generator whose `state()` was `state`.
    pub fn from_state(state: u64) -> Self {
        Rng { state }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi), from `uniform`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in [lo, hi), from `uniform_f64` (weight initialisation).
    pub fn range_f64(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform_f64() as f32
    }

    /// Uniform integer in [0, n) (n > 0), by rejection so it is unbiased.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// Integer in [0, n) (n > 0) as `next_u64() % n`: one draw, bias below 2^-40 for small n
    /// (benchmark sample points).
    pub fn below_mod(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// +1.0 or -1.0 with probability 1/2 each (the sign of U(-1, 1)).
    pub fn sign(&mut self) -> f32 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Fisher-Yates, from the back.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// Standard normal (Box-Muller on two `uniform_f64` draws).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform_f64().max(1e-300);
        let u2 = self.uniform_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Approximately standard normal: the sum of 4 `uniform`s, centred and rescaled to unit
    /// variance (cheap benchmark inputs; never exactly zero in practice).
    pub fn normal_approx(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        s * 1.732_050_8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values printed by the three generators this module replaced (model::rng::SplitMix64,
    // fmp::rng::Rng, bench::reference::Rng), seed 7 unless stated: the streams must not move.
    #[test]
    fn streams_first_words_are_the_old_generators() {
        let cases = [
            // model::rng::SplitMix64
            (
                Rng::stream(Stream::Init, 7),
                [0xd814_e58a_040f_45a8, 0x0c9d_2ae6_cb41_9e52],
            ),
            // fmp::rng::Rng, and its derived x0 stream
            (Rng::new(7), [0xfae3_3298_a839_9d50, 0x61c9_4329_3fff_298c]),
            (
                Rng::derive(7, "x0"),
                [0xf0a8_8c03_9450_e7fd, 0x681b_8b06_59d7_c587],
            ),
            // bench::reference::Rng
            (
                Rng::stream(Stream::Bench, 7),
                [0xec77_9c36_93f8_8501, 0xfed9_eeb4_936d_e39d],
            ),
        ];
        for (mut r, words) in cases {
            assert_eq!([r.next_u64(), r.next_u64()], words);
        }
    }

    #[test]
    fn init_stream_is_the_old_model_splitmix64() {
        let mut r = Rng::stream(Stream::Init, 7);
        assert_eq!(r.uniform_f64().to_bits(), 4605777915928412648);
        assert_eq!(r.range_f64(-0.5, 0.5).to_bits(), 3202794922);
        assert_eq!(r.normal().to_bits(), 1063213712);
    }

    #[test]
    fn pipeline_streams_are_the_old_fmp_rng() {
        let mut r = Rng::new(7);
        assert_eq!(r.uniform().to_bits(), 1065018162);
        assert_eq!(r.range(-1.0, 1.0).to_bits(), 3195123176);
        assert_eq!(r.below(10), 8);
        assert_eq!(r.sign(), 1.0);
        let mut v: Vec<u32> = (0..10).collect();
        Rng::derive(3, "poison").shuffle(&mut v);
        assert_eq!(v, [5, 2, 9, 6, 1, 3, 0, 8, 4, 7]);
    }

    #[test]
    fn bench_stream_is_the_old_bench_rng() {
        let mut r = Rng::stream(Stream::Bench, 7);
        assert_eq!(r.uniform().to_bits(), 1064073116);
        assert_eq!(r.range(-1.0, 1.0).to_bits(), 1065202652);
        assert_eq!(r.below_mod(10), 4);
        assert_eq!(r.normal_approx().to_bits(), 3210547989);
    }

    #[test]
    fn streams_differ_for_one_seed() {
        let first = |s| Rng::stream(s, 1).next_u64();
        assert_ne!(first(Stream::Init), first(Stream::Pipeline));
        assert_ne!(first(Stream::Bench), first(Stream::Pipeline));
        assert_ne!(
            Rng::derive(1, "a").next_u64(),
            Rng::derive(1, "b").next_u64()
        );
    }
}
