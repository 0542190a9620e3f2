//! Network coordinates (Vivaldi), as Serf keeps them: a point in an 8-dimensional space plus
//! a height, so that the distance between two nodes' coordinates estimates their round-trip
//! time in seconds.

use serde::{Deserialize, Serialize};

/// Dimensions of the Euclidean part (Serf's default).
pub const DIMENSIONS: usize = 8;

/// A node's coordinate, with Consul's JSON field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    /// The Euclidean part, in seconds.
    pub vec: Vec<f64>,
    /// The node's confidence in its coordinate (1.5 at the start, lower is better).
    pub error: f64,
    /// Added to every distance from this node (the mean residual error).
    pub adjustment: f64,
    /// The height: the node's access-link latency, in seconds.
    pub height: f64,
}

impl Default for Coordinate {
    fn default() -> Self {
        Coordinate {
            vec: vec![0.0; DIMENSIONS],
            error: 1.5,
            adjustment: 0.0,
            height: 10e-6,
        }
    }
}

impl Coordinate {
    /// The Euclidean distance plus both heights, without the adjustments.
    pub fn raw_distance(&self, other: &Coordinate) -> f64 {
        let euclidean = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        euclidean + self.height + other.height
    }

    /// The estimated round-trip time to `other` as [`Coordinate::distance`]; `None` when the
    /// two have different dimensions and cannot be compared.
    pub fn distance_to(&self, other: &Coordinate) -> Option<f64> {
        (self.vec.len() == other.vec.len()).then(|| self.distance(other))
    }

    /// Whether every component is a finite number.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|x| x.is_finite())
            && self.error.is_finite()
            && self.adjustment.is_finite()
            && self.height.is_finite()
    }

    /// The estimated round-trip time to `other`, in seconds: the Euclidean distance plus
    /// both heights, plus both adjustments when that stays positive (Serf's rule).
    pub fn distance(&self, other: &Coordinate) -> f64 {
        let rtt = self.raw_distance(other);
        let adjusted = rtt + self.adjustment + other.adjustment;
        if adjusted > 0.0 {
            adjusted
        } else {
            rtt
        }
    }
}

/// Below this, a distance, an error or a round trip counts as zero (Serf's threshold).
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// The longest round trip an update accepts, in seconds (Serf refuses longer ones).
pub const MAX_RTT_SECONDS: f64 = 10.0;

/// The tuning of a [`Vivaldi`] client; [`Default`] is Serf's.
#[derive(Debug, Clone, PartialEq)]
pub struct VivaldiConfig {
    /// Dimensions of the Euclidean part.
    pub dimensions: usize,
    /// The error a node starts with and never exceeds.
    pub error_max: f64,
    /// How fast the error estimate follows the observed error (`ce`).
    pub ce: f64,
    /// How far a sample moves the coordinate (`cc`).
    pub cc: f64,
    /// Samples the adjustment term averages over (0: no adjustment).
    pub adjustment_window: usize,
    /// The smallest height, in seconds.
    pub height_min: f64,
    /// Round trips per peer whose median is used (filters out single slow samples).
    pub latency_filter: usize,
    /// Seconds at which the pull back towards the origin equals one second of error
    /// (`rho`): keeps the whole system from drifting away.
    pub gravity_rho: f64,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        VivaldiConfig {
            dimensions: DIMENSIONS,
            error_max: 1.5,
            ce: 0.25,
            cc: 0.25,
            adjustment_window: 20,
            height_min: 10.0e-6,
            latency_filter: 3,
            gravity_rho: 150.0,
        }
    }
}

/// Why a sample was not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VivaldiError {
    /// The peer's coordinate has another number of dimensions.
    #[error("coordinate has {got} dimensions, expected {expected}")]
    Dimensions {
        /// Dimensions of ours.
        expected: usize,
        /// Dimensions of the peer's.
        got: usize,
    },
    /// The peer's coordinate holds a NaN or an infinity.
    #[error("coordinate is not finite")]
    NotFinite,
    /// The round trip is negative, not finite or longer than [`MAX_RTT_SECONDS`].
    #[error("round trip of {0} s is out of range")]
    Rtt(f64),
}

/// A node's Vivaldi state: its coordinate, the recent round trips to each peer and the
/// samples of its adjustment term. Pure: the caller measures round trips and feeds them in
/// with [`Vivaldi::update`].
#[derive(Debug, Clone)]
pub struct Vivaldi {
    config: VivaldiConfig,
    coordinate: Coordinate,
    origin: Coordinate,
    adjustment_samples: Vec<f64>,
    adjustment_next: usize,
    latencies: std::collections::HashMap<String, Vec<f64>>,
    seed: u64,
    resets: u64,
}

impl Vivaldi {
    /// A node at the origin with the maximum error. `seed` drives the random direction
    /// chosen when two nodes sit on the same point.
    pub fn new(config: VivaldiConfig, seed: u64) -> Self {
        let origin = Coordinate {
            vec: vec![0.0; config.dimensions],
            error: config.error_max,
            adjustment: 0.0,
            height: config.height_min,
        };
        Vivaldi {
            adjustment_samples: vec![0.0; config.adjustment_window],
            adjustment_next: 0,
            coordinate: origin.clone(),
            origin,
            latencies: std::collections::HashMap::new(),
            seed: seed | 1,
            resets: 0,
            config,
        }
    }

    /// This node's coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// How many times the coordinate became invalid and was reset to the origin.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Forgets the round trips measured to `peer` (it left).
    pub fn forget(&mut self, peer: &str) {
        self.latencies.remove(peer);
    }

    /// Takes one round trip (`rtt`, seconds) to `peer`, whose coordinate is `other`, and
    /// moves this node's coordinate; returns the new coordinate.
    pub fn update(
        &mut self,
        peer: &str,
        other: &Coordinate,
        rtt: f64,
    ) -> Result<&Coordinate, VivaldiError> {
        if other.vec.len() != self.config.dimensions {
            return Err(VivaldiError::Dimensions {
                expected: self.config.dimensions,
                got: other.vec.len(),
            });
        }
        if !other.is_valid() {
            return Err(VivaldiError::NotFinite);
        }
        if !rtt.is_finite() || !(0.0..=MAX_RTT_SECONDS).contains(&rtt) {
            return Err(VivaldiError::Rtt(rtt));
        }
        let rtt = self.filtered(peer, rtt);
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coordinate.is_valid() {
            self.resets += 1;
            self.coordinate = self.origin.clone();
        }
        Ok(&self.coordinate)
    }

    /// The median of the last few round trips to `peer`, this one included.
    fn filtered(&mut self, peer: &str, rtt: f64) -> f64 {
        let size = self.config.latency_filter.max(1);
        let samples = self.latencies.entry(peer.to_string()).or_default();
        samples.push(rtt);
        if samples.len() > size {
            samples.remove(0);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let rtt = rtt.max(ZERO_THRESHOLD);
        let distance = self.coordinate.distance(other);
        let wrongness = (distance - rtt).abs() / rtt;
        let total_error = (self.coordinate.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coordinate.error / total_error;
        let ce = self.config.ce * weight;
        self.coordinate.error =
            (ce * wrongness + self.coordinate.error * (1.0 - ce)).min(self.config.error_max);
        let force = self.config.cc * weight * (rtt - distance);
        self.apply_force(force, other.clone());
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        if self.config.adjustment_window == 0 {
            return;
        }
        let raw = self.coordinate.raw_distance(other);
        self.adjustment_samples[self.adjustment_next] = rtt - raw;
        self.adjustment_next = (self.adjustment_next + 1) % self.config.adjustment_window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coordinate.adjustment = sum / (2.0 * self.config.adjustment_window as f64);
    }

    fn update_gravity(&mut self) {
        let distance = self.origin.distance(&self.coordinate);
        let force = -(distance / self.config.gravity_rho).powi(2);
        self.apply_force(force, self.origin.clone());
    }

    /// Moves this coordinate by `force` seconds along the line from `other` to it (away
    /// from `other` when positive), and its height in proportion.
    fn apply_force(&mut self, force: f64, other: Coordinate) {
        let (unit, magnitude) = self.unit_vector_from(&other);
        for (x, u) in self.coordinate.vec.iter_mut().zip(&unit) {
            *x += u * force;
        }
        if magnitude > ZERO_THRESHOLD {
            let height = (self.coordinate.height + other.height) * force / magnitude
                + self.coordinate.height;
            self.coordinate.height = height.max(self.config.height_min);
        }
    }

    /// The unit vector from `other` towards this coordinate and the distance between
    /// them; a random direction (and distance 0) when they coincide.
    fn unit_vector_from(&mut self, other: &Coordinate) -> (Vec<f64>, f64) {
        let diff: Vec<f64> = self
            .coordinate
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| a - b)
            .collect();
        let magnitude = norm(&diff);
        if magnitude > ZERO_THRESHOLD {
            return (diff.iter().map(|x| x / magnitude).collect(), magnitude);
        }
        let random: Vec<f64> = (0..diff.len()).map(|_| self.next_random() - 0.5).collect();
        let random_magnitude = norm(&random);
        if random_magnitude > ZERO_THRESHOLD {
            return (random.iter().map(|x| x / random_magnitude).collect(), 0.0);
        }
        let mut first = vec![0.0; diff.len()];
        if let Some(x) = first.first_mut() {
            *x = 1.0;
        }
        (first, 0.0)
    }

    /// A number in `[0, 1)` (xorshift64*).
    fn next_random(&mut self) -> f64 {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let x = self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_adds_heights_and_positive_adjustments() {
        let a = Coordinate {
            vec: vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            error: 1.0,
            adjustment: 0.0,
            height: 0.001,
        };
        let mut b = Coordinate {
            vec: vec![0.003, 0.004, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            ..a.clone()
        };
        assert!((a.distance(&b) - 0.007).abs() < 1e-12);
        b.adjustment = 0.002;
        assert!((a.distance(&b) - 0.009).abs() < 1e-12);
        // A negative total adjustment is ignored when it would make the distance negative.
        b.adjustment = -1.0;
        assert!((a.distance(&b) - 0.007).abs() < 1e-12);
    }

    /// Runs `rounds` rounds in which every node measures every other through `rtt` (the
    /// true round trip between two indexes), and returns the nodes.
    fn simulate(n: usize, rounds: usize, rtt: impl Fn(usize, usize) -> f64) -> Vec<Vivaldi> {
        let mut nodes: Vec<Vivaldi> = (0..n)
            .map(|i| Vivaldi::new(VivaldiConfig::default(), 7 + i as u64))
            .collect();
        for _ in 0..rounds {
            for i in 0..n {
                for j in 0..n {
                    if i == j {
                        continue;
                    }
                    let other = nodes[j].coordinate().clone();
                    nodes[i]
                        .update(&format!("n{j}"), &other, rtt(i, j))
                        .expect("valid sample");
                }
            }
        }
        nodes
    }

    fn assert_within(nodes: &[Vivaldi], rtt: impl Fn(usize, usize) -> f64, tolerance: f64) {
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                if i == j {
                    continue;
                }
                let estimate = nodes[i].coordinate().distance(nodes[j].coordinate());
                let truth = rtt(i, j);
                assert!(
                    (estimate - truth).abs() <= truth * tolerance,
                    "{i}->{j}: estimated {estimate}, true {truth}"
                );
            }
        }
    }

    #[test]
    fn nodes_on_a_line_converge_to_their_distances() {
        // Five nodes 10 ms apart on a line.
        let rtt = |i: usize, j: usize| 0.010 * (i as f64 - j as f64).abs();
        let nodes = simulate(5, 300, rtt);
        assert_within(&nodes, rtt, 0.05);
        for node in &nodes {
            assert!(node.coordinate().error < 0.5, "{:?}", node.coordinate());
        }
    }

    #[test]
    fn a_triangle_converges() {
        // Round trips of 30, 40 and 50 ms: a right triangle.
        let table = [
            [0.0, 0.030, 0.040],
            [0.030, 0.0, 0.050],
            [0.040, 0.050, 0.0],
        ];
        let rtt = |i: usize, j: usize| table[i][j];
        let nodes = simulate(3, 300, rtt);
        assert_within(&nodes, rtt, 0.05);
    }

    #[test]
    fn zero_round_trips_stay_finite() {
        let nodes = simulate(3, 50, |_, _| 0.0);
        for node in &nodes {
            assert!(node.coordinate().is_valid(), "{:?}", node.coordinate());
            assert_eq!(node.resets(), 0);
        }
    }

    #[test]
    fn bad_samples_are_refused_and_never_move_the_node() {
        let mut node = Vivaldi::new(VivaldiConfig::default(), 1);
        let before = node.coordinate().clone();
        let nan = Coordinate {
            vec: vec![f64::NAN; DIMENSIONS],
            ..Coordinate::default()
        };
        assert!(matches!(
            node.update("a", &nan, 0.01),
            Err(VivaldiError::NotFinite)
        ));
        let short = Coordinate {
            vec: vec![0.0; 2],
            ..Coordinate::default()
        };
        assert!(matches!(
            node.update("a", &short, 0.01),
            Err(VivaldiError::Dimensions {
                expected: 8,
                got: 2
            })
        ));
        for bad in [-0.001, f64::NAN, f64::INFINITY, 11.0] {
            assert!(matches!(
                node.update("a", &Coordinate::default(), bad),
                Err(VivaldiError::Rtt(_))
            ));
        }
        assert_eq!(node.coordinate(), &before);
    }

    #[test]
    fn the_latency_filter_takes_the_median_of_three() {
        let mut node = Vivaldi::new(VivaldiConfig::default(), 1);
        assert_eq!(node.filtered("a", 0.010), 0.010);
        assert_eq!(node.filtered("a", 0.500), 0.500);
        assert_eq!(node.filtered("a", 0.012), 0.012);
        // The outlier is dropped once it is in the middle of neither sample set.
        assert_eq!(node.filtered("a", 0.011), 0.012);
        assert_eq!(node.filtered("a", 0.013), 0.012);
        assert_eq!(node.filtered("b", 0.2), 0.2);
    }
}
