//! Which of an engine's containers belong to this driver: atoll's own (`atoll.managed=true`)
//! carrying every identity label the driver was configured with. Agents sharing one engine
//! (compute nodes that are themselves containers on a host's engine) thus neither adopt,
//! stop nor remove each other's containers.

use super::{DockerConfig, LABEL_MANAGED, LABEL_NODE, LABEL_NODE_ID};
use std::collections::HashMap;

/// The identity labels a driver puts on its containers and looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Owner {
    labels: Vec<(&'static str, String)>,
}

impl Owner {
    pub(super) fn of(config: &DockerConfig) -> Owner {
        let labels = [(LABEL_NODE, &config.node), (LABEL_NODE_ID, &config.node_id)]
            .into_iter()
            .filter_map(|(key, value)| value.clone().map(|value| (key, value)))
            .collect();
        Owner { labels }
    }

    /// The labels to put on a container, besides the task's own.
    pub(super) fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.labels
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
    }

    /// The engine's `label` filters selecting this driver's containers.
    pub(super) fn filters(&self) -> Vec<String> {
        std::iter::once(format!("{LABEL_MANAGED}=true"))
            .chain(self.labels().map(|(key, value)| format!("{key}={value}")))
            .collect()
    }

    /// Whether a container with these labels (or event attributes, which include them) is
    /// this driver's.
    pub(super) fn owns(&self, labels: &HashMap<String, String>) -> bool {
        labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
            && self
                .labels()
                .all(|(key, value)| labels.get(key).map(String::as_str) == Some(value))
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
    fn containers_without_the_identity_or_not_managed_are_not_owned() {
        let ours = owner(Some("compute1"), Some("5f0c"));
        assert!(!ours.owns(&labels(&[
            (LABEL_MANAGED, "true"),
            (LABEL_NODE, "compute1")
        ])));
        assert!(!ours.owns(&labels(&[
            (LABEL_MANAGED, "false"),
            (LABEL_NODE, "compute1"),
            (LABEL_NODE_ID, "5f0c"),
        ])));
        // Without identity labels, every managed container is the driver's.
        assert!(owner(None, None).owns(&labels(&[(LABEL_MANAGED, "true")])));
    }

    #[test]
    fn filters_select_managed_containers_with_every_identity_label() {
        assert_eq!(
            owner(Some("compute1"), Some("5f0c")).filters(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_NODE}=compute1"),
                format!("{LABEL_NODE_ID}=5f0c"),
            ]
        );
        assert_eq!(
            owner(None, None).filters(),
            vec![format!("{LABEL_MANAGED}=true")]
        );
    }
}
