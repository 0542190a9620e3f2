//! Which of an engine's containers belong to this driver: atoll's own (`atoll.managed=true`)
//! carrying the node name and id the driver was configured with. Agents sharing one engine
//! (compute nodes that are themselves containers on a host's engine, even namesakes of two
//! clusters) thus neither adopt, stop nor remove each other's containers. A container of
//! the node's name without any id was started before containers carried one, and is still
//! the node's, so an upgraded node adopts the tasks it left running.

use super::{DockerConfig, LABEL_MANAGED, LABEL_NODE, LABEL_NODE_ID};
use std::collections::HashMap;

/// The identity labels a driver puts on its containers and looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Owner {
    node: Option<String>,
    node_id: Option<String>,
}

impl Owner {
    pub(super) fn of(config: &DockerConfig) -> Owner {
        Owner {
            node: config.node.clone(),
            node_id: config.node_id.clone(),
        }
    }

    /// The labels to put on a container, besides the task's own.
    pub(super) fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [(LABEL_NODE, &self.node), (LABEL_NODE_ID, &self.node_id)]
            .into_iter()
            .filter_map(|(key, value)| value.as_deref().map(|value| (key, value)))
    }

    /// The engine's `label` filters selecting this driver's containers and perhaps others
    /// (the engine cannot select a label's absence): keep only what [`Owner::owns`].
    pub(super) fn filters(&self) -> Vec<String> {
        std::iter::once(format!("{LABEL_MANAGED}=true"))
            .chain(self.node.iter().map(|node| format!("{LABEL_NODE}={node}")))
            .collect()
    }

    /// Whether a container with these labels (or event attributes, which include them) is
    /// this driver's.
    pub(super) fn owns(&self, labels: &HashMap<String, String>) -> bool {
        let label = |key: &str| labels.get(key).map(String::as_str);
        label(LABEL_MANAGED) == Some("true")
            && self
                .node
                .as_deref()
                .is_none_or(|node| label(LABEL_NODE) == Some(node))
            && self
                .node_id
                .as_deref()
                .is_none_or(|id| label(LABEL_NODE_ID).is_none_or(|found| found == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn owner(node: Option<&str>, node_id: Option<&str>) -> Owner {
        Owner::of(&DockerConfig {
            node: node.map(String::from),
            node_id: node_id.map(String::from),
            ..DockerConfig::default()
        })
    }

    #[test]
    fn a_node_of_another_cluster_with_the_same_name_owns_nothing_of_ours() {
        let ours = owner(Some("compute1"), Some("5f0c"));
        let namesake = owner(Some("compute1"), Some("9e21"));
        let container = labels(&[
            (LABEL_MANAGED, "true"),
            (LABEL_NODE, "compute1"),
            (LABEL_NODE_ID, "5f0c"),
        ]);
        assert!(ours.owns(&container));
        assert!(!namesake.owns(&container));
        assert!(!owner(Some("compute2"), Some("5f0c")).owns(&container));
    }

    #[test]
    fn containers_of_the_node_from_before_ids_are_still_its_own() {
        let ours = owner(Some("compute1"), Some("5f0c"));
        let before_ids = labels(&[(LABEL_MANAGED, "true"), (LABEL_NODE, "compute1")]);
        assert!(ours.owns(&before_ids));
        assert!(!owner(Some("compute2"), Some("5f0c")).owns(&before_ids));
    }

    #[test]
    fn containers_of_other_nodes_or_not_managed_are_not_owned() {
        let ours = owner(Some("compute1"), Some("5f0c"));
        assert!(!ours.owns(&labels(&[(LABEL_MANAGED, "true"), (LABEL_NODE_ID, "5f0c")])));
        assert!(!ours.owns(&labels(&[
            (LABEL_MANAGED, "false"),
            (LABEL_NODE, "compute1"),
            (LABEL_NODE_ID, "5f0c"),
        ])));
        // Without identity labels, every managed container is the driver's.
        assert!(owner(None, None).owns(&labels(&[(LABEL_MANAGED, "true")])));
    }

    #[test]
    fn containers_carry_both_labels_and_the_engine_selects_by_name() {
        let ours = owner(Some("compute1"), Some("5f0c"));
        assert_eq!(
            ours.labels().collect::<Vec<_>>(),
            vec![(LABEL_NODE, "compute1"), (LABEL_NODE_ID, "5f0c")]
        );
        assert_eq!(
            ours.filters(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_NODE}=compute1"),
            ]
        );
        assert_eq!(
            owner(None, None).filters(),
            vec![format!("{LABEL_MANAGED}=true")]
        );
    }
}
