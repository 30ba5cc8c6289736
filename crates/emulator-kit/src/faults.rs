//! Seeded faults: the generator, and the table of fault settings (one for every route, overrides
//! per route) in which each entry draws from its own generator, so a route's faults depend only
//! on its seed and its own requests.

use std::collections::BTreeMap;

/// Fault settings that carry the seed of their generator.
pub trait Seeded {
    fn seed(&self) -> u64;
}

/// Settings and the generator they seeded.
#[derive(Debug, Clone)]
struct Entry<F> {
    faults: F,
    rng: Rng,
}

impl<F: Seeded> Entry<F> {
    fn new(faults: F) -> Self {
        let rng = Rng::new(faults.seed());
        Self { faults, rng }
    }
}

/// The faults of one emulator: the settings for every route without its own, and per-route
/// overrides keyed like the emulator's request counters (`"POST /v2/droplets"`).
#[derive(Debug, Clone)]
pub struct FaultTable<F> {
    default: Entry<F>,
    routes: BTreeMap<String, Entry<F>>,
}

impl<F: Seeded + Default> Default for FaultTable<F> {
    fn default() -> Self {
        Self {
            default: Entry::new(F::default()),
            routes: BTreeMap::new(),
        }
    }
}

impl<F: Seeded + Default> FaultTable<F> {
    /// Faults for every route without its own; restarts that generator from `faults`' seed.
    pub fn set_default(&mut self, faults: F) {
        self.default = Entry::new(faults);
    }

    /// Faults for one route, with a generator of its own.
    pub fn set_route(&mut self, route: &str, faults: F) {
        self.routes.insert(route.to_owned(), Entry::new(faults));
    }

    /// No faults anywhere (the default settings, no overrides).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The settings that apply to `route` and the generator to draw its fate from.
    pub fn for_route(&mut self, route: &str) -> (&F, &mut Rng) {
        let entry = self.routes.get_mut(route).unwrap_or(&mut self.default);
        (&entry.faults, &mut entry.rng)
    }
}

/// SplitMix64: tiny, seedable, good enough to spread faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draws: Vec<f64> = (0..100).map(|_| a.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert_eq!(draws, (0..100).map(|_| b.next_f64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Plan(u64);

    impl Seeded for Plan {
        fn seed(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_route_override_has_its_own_generator_and_clearing_restores_the_default() {
        let mut table = FaultTable::<Plan>::default();
        table.set_default(Plan(7));
        table.set_route("GET /a", Plan(8));
        let (plan, rng) = table.for_route("GET /a");
        assert_eq!(
            (plan.clone(), rng.next_u64()),
            (Plan(8), Rng::new(8).next_u64())
        );
        let (plan, rng) = table.for_route("GET /b");
        assert_eq!(
            (plan.clone(), rng.next_u64()),
            (Plan(7), Rng::new(7).next_u64())
        );
        // The default's generator moved on; the override's did not.
        let (_, rng) = table.for_route("GET /other");
        let mut expected = Rng::new(7);
        expected.next_u64();
        assert_eq!(rng.next_u64(), expected.next_u64());
        table.clear();
        assert_eq!(table.for_route("GET /a").0, &Plan(0));
    }
}
