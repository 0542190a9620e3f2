//! `?near=NODE` (or `_agent`): answers sorted by the round-trip time estimated from Vivaldi
//! network coordinates, nearest first.
//!
//! The coordinates are those of the node's LAN gossip pool (`consul/listing.rs` takes them
//! when a request has `?near=`); without a pool none are known, and an answer keeps its
//! order, which is what Consul does when the node named by `near` has no coordinate.

pub use atoll_cluster::Coordinate;

/// Where coordinates come from.
pub trait Coordinates {
    /// The coordinate of a node, if it has one.
    fn coordinate(&self, node: &str) -> Option<Coordinate>;
}

/// A lookup that knows no coordinate.
#[cfg(test)]
pub struct NoCoordinates;

#[cfg(test)]
impl Coordinates for NoCoordinates {
    fn coordinate(&self, _node: &str) -> Option<Coordinate> {
        None
    }
}

/// Sorts `rows` by distance from `origin`, nearest first. As Consul: when `origin` has no
/// coordinate nothing moves; rows whose node has none (or an incomparable one) go last; rows
/// at equal distance keep their order.
pub fn sort_by_distance<T>(
    rows: Vec<T>,
    origin: &str,
    coordinates: &dyn Coordinates,
    node_of: impl Fn(&T) -> &str,
) -> Vec<T> {
    let Some(from) = coordinates.coordinate(origin) else {
        return rows;
    };
    let mut keyed: Vec<(f64, T)> = rows
        .into_iter()
        .map(|row| {
            let distance = coordinates
                .coordinate(node_of(&row))
                .and_then(|to| from.distance_to(&to))
                .unwrap_or(f64::MAX);
            (distance, row)
        })
        .collect();
    // A stable sort: equal distances keep the answer's own order.
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{sort_by_distance, Coordinate, Coordinates, NoCoordinates};

    struct Known(HashMap<&'static str, Coordinate>);

    impl Coordinates for Known {
        fn coordinate(&self, node: &str) -> Option<Coordinate> {
            self.0.get(node).cloned()
        }
    }

    fn at(x: f64, y: f64, height: f64) -> Coordinate {
        Coordinate {
            vec: vec![x, y],
            error: 1.5,
            adjustment: 0.0,
            height,
        }
    }

    fn map() -> Known {
        Known(HashMap::from([
            ("origin", at(0.0, 0.0, 0.001)),
            ("far", at(0.3, 0.4, 0.001)),
            ("near", at(0.03, 0.04, 0.001)),
            ("middle", at(0.0, 0.1, 0.001)),
            (
                "flat",
                Coordinate {
                    vec: vec![0.0],
                    error: 0.0,
                    adjustment: 0.0,
                    height: 0.0,
                },
            ),
        ]))
    }

    #[test]
    fn distance_adds_heights_and_adjustments() {
        let a = at(0.0, 0.0, 0.01);
        let b = at(3.0, 4.0, 0.02);
        let distance = a.distance_to(&b).unwrap_or_default();
        assert!((distance - 5.03).abs() < 1e-9, "{distance}");
        let adjusted = Coordinate {
            adjustment: 0.5,
            ..a.clone()
        };
        let distance = adjusted.distance_to(&b).unwrap_or_default();
        assert!((distance - 5.53).abs() < 1e-9, "{distance}");
        // An adjustment that would make the estimate negative is ignored.
        let negative = Coordinate {
            adjustment: -10.0,
            ..a.clone()
        };
        let distance = negative.distance_to(&b).unwrap_or_default();
        assert!((distance - 5.03).abs() < 1e-9, "{distance}");
        assert_eq!(a.distance_to(&map().0["flat"]), None);
    }

    #[test]
    fn nearest_first_and_unknown_nodes_last_in_their_order() {
        let rows = vec![
            "unknown-1",
            "far",
            "flat",
            "near",
            "unknown-2",
            "middle",
            "origin",
        ];
        let sorted = sort_by_distance(rows, "origin", &map(), |row| row);
        assert_eq!(
            sorted,
            [
                "origin",
                "near",
                "middle",
                "far",
                "unknown-1",
                "flat",
                "unknown-2"
            ]
        );
    }

    #[test]
    fn equal_distances_keep_their_order() {
        let rows = vec![("b", 1), ("near", 2), ("a", 3), ("near", 4)];
        let sorted = sort_by_distance(rows, "origin", &map(), |row| row.0);
        assert_eq!(sorted, [("near", 2), ("near", 4), ("b", 1), ("a", 3)]);
    }

    #[test]
    fn an_origin_without_coordinate_changes_nothing() {
        let rows = vec!["far", "near", "middle"];
        assert_eq!(
            sort_by_distance(rows.clone(), "nowhere", &map(), |row| row),
            rows
        );
        assert_eq!(
            sort_by_distance(rows.clone(), "origin", &NoCoordinates, |row| row),
            rows
        );
    }
}
