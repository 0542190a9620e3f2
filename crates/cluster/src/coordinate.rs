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
    /// The estimated round-trip time to `other`, in seconds: the Euclidean distance plus
    /// both heights, plus both adjustments when that stays positive (Serf's rule).
    pub fn distance(&self, other: &Coordinate) -> f64 {
        let euclidean = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let rtt = euclidean + self.height + other.height;
        let adjusted = rtt + self.adjustment + other.adjustment;
        if adjusted > 0.0 {
            adjusted
        } else {
            rtt
        }
    }
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
}
